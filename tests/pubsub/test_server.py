"""
pubsub.server: daphne with an InputQueue for each application. What daphne
puts reaches the application in order, and a task cancelled while it waits
loses nothing.
"""
import asyncio
import functools
import time
from types import SimpleNamespace

from pubsub.backpressure import SCOPE_KEY, SocketMiddleware
from pubsub.server import InputQueue, Server


async def test_messages_come_out_in_the_order_they_went_in():
    queue = InputQueue()
    for n in range(5):
        queue.put_nowait(n)

    assert queue.qsize() == 5
    assert [await queue.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert queue.qsize() == 0


async def test_a_long_backlog_drains_in_order_and_in_linear_time():
    """
    Half a million messages, as a large request body or a flood a busy
    consumer has not read would queue. Popped from the front of a list, they
    take some 17 s on our machines; read from a moving head, a fifth of one.
    """
    queue = InputQueue()
    count = 500_000
    for n in range(count):
        queue.put_nowait(n)
    queue.put_nowait("last")

    began = time.monotonic()
    drained = [await queue.get() for _ in range(count)]
    seconds = time.monotonic() - began

    assert drained == list(range(count))
    assert queue.qsize() == 1 and await queue.get() == "last"
    assert queue.qsize() == 0 and queue.messages == []
    assert seconds < 5


async def test_a_waiting_get_gets_the_next_message():
    queue = InputQueue()
    getting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getting.done()

    queue.put_nowait("connect")

    assert await asyncio.wait_for(getting, 1) == "connect"
    assert queue.waiters == []


async def test_waiting_tasks_take_one_message_each():
    queue = InputQueue()
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)

    for n in range(3):
        queue.put_nowait(n)

    assert sorted(await asyncio.wait_for(asyncio.gather(*getters), 1)) == [0, 1, 2]


async def test_a_task_cancelled_after_its_wake_up_hands_it_on():
    """The message it was woken for goes to the task waiting behind it."""
    queue = InputQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)

    queue.put_nowait("only")
    first.cancel()

    assert await asyncio.wait_for(second, 1) == "only"
    assert first.cancelled()
    assert queue.waiters == []


async def test_a_cancelled_get_leaves_its_message_for_the_next():
    queue = InputQueue()
    getting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    getting.cancel()
    await asyncio.gather(getting, return_exceptions=True)

    queue.put_nowait("kept")

    assert await asyncio.wait_for(queue.get(), 1) == "kept"


async def test_the_server_starts_each_application_on_an_input_queue():
    """What daphne puts for a connection is what its application receives."""
    received = []

    async def application(scope, receive, send):
        received.append((scope, await receive(), send))

    # An endpoint is required, but nothing listens until the server runs.
    server = Server(application, endpoints=["tcp:port=0:interface=127.0.0.1"])
    protocol = object()
    server.connections = {protocol: {}}

    queue = server.create_application(protocol, {"type": "websocket"})
    queue.put_nowait({"type": "websocket.connect"})
    await asyncio.wait_for(server.connections[protocol]["application_instance"], 1)

    assert isinstance(queue, InputQueue)
    [(scope, message, send)] = received
    assert scope["asgi"] == {"version": "3.0"}
    assert scope[SCOPE_KEY] is protocol
    assert message == {"type": "websocket.connect"}
    # The send SocketMiddleware recognises daphne's protocol by.
    assert isinstance(send, functools.partial) and send.args == (protocol,)


async def test_http_scopes_are_left_as_daphne_made_them():
    received = []

    async def application(scope, receive, send):
        received.append(scope)

    server = Server(application, endpoints=["tcp:port=0:interface=127.0.0.1"])
    protocol = object()
    server.connections = {protocol: {}}

    server.create_application(protocol, {"type": "http"})
    await asyncio.wait_for(server.connections[protocol]["application_instance"], 1)

    assert SCOPE_KEY not in received[0]


async def test_the_socket_middleware_passes_a_marked_scope_on_as_it_is():
    """Under pubsub.server the middleware copies no scope."""
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope)

    # As daphne's send would be: a partial over a protocol with a transport.
    protocol = SimpleNamespace(transport=object())
    scope = {"type": "websocket", SCOPE_KEY: protocol}
    send = functools.partial(print, protocol)

    await SocketMiddleware(inner)(scope, None, send)

    assert seen == [scope] and seen[0] is scope
