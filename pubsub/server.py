"""
daphne, with a lighter queue between each connection and its application.

daphne gives every connection an ``asyncio.Queue`` for what its application
receives: three deques and an event with a fourth, allocated up front, about
4 KB held by every idle websocket (bench scenario 4). daphne only ever puts
into it without waiting, and an application awaits ``receive`` from one task
at a time, so a list and the futures of the tasks waiting will do. The
server also notes a websocket's protocol in its scope as it makes it, where
``backpressure.SocketMiddleware`` would copy the scope to add it.

Run it where you would run daphne, with daphne's arguments::

    python -m pubsub.server -b 127.0.0.1 -p 8000 vanilla_site.asgi:application

Plain ``daphne`` serves Vanilla as well, with that memory per connection.
``Server.create_application`` follows daphne 4.2's, which it replaces.
"""
import asyncio
import functools

from daphne import cli, server

from . import backpressure


class InputQueue:
    """
    The messages daphne has for one application, oldest first: ``put_nowait``
    and ``get``, the two calls daphne and its application make, and
    ``qsize``. The list of waiting tasks is made when one first waits. A
    backlog (a request body, frames a busy consumer has not read yet) is
    read from ``head`` on, and the list compacted once half of it is read,
    so draining it takes time in proportion to its length, not its square.

    daphne tests the queue for truth (``if self.application_queue``), so it
    must not get a ``__len__``.
    """

    __slots__ = ("messages", "head", "waiters")

    def __init__(self):
        self.messages = []
        self.head = 0
        self.waiters = None

    def put_nowait(self, message):
        self.messages.append(message)
        self.wake()

    async def get(self):
        while self.head == len(self.messages):
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # A wake-up this task took with it goes to the next task.
                if self.head < len(self.messages):
                    self.wake()
                raise
            finally:
                self.waiters.remove(waiter)
        return self.take()

    def take(self):
        messages, head = self.messages, self.head
        message = messages[head]
        head += 1
        if head == len(messages):
            messages.clear()
            head = 0
        elif head > 32 and 2 * head > len(messages):
            del messages[:head]
            head = 0
        else:
            messages[head - 1] = None
        self.head = head
        return message

    def wake(self):
        for waiter in self.waiters or ():
            if not waiter.done():
                waiter.set_result(None)
                return

    def qsize(self):
        return len(self.messages) - self.head


class Server(server.Server):
    def create_application(self, protocol, scope):
        """Start the application of ``protocol``; return its InputQueue."""
        assert "application_instance" not in self.connections[protocol]
        queue = InputQueue()
        scope.setdefault("asgi", {"version": "3.0"})
        if scope["type"] == "websocket":
            # What backpressure.SocketMiddleware would copy the scope to add.
            scope[backpressure.SCOPE_KEY] = protocol
        instance = self.application(
            scope=scope,
            receive=queue.get,
            send=functools.partial(self.handle_reply, protocol),
        )
        if protocol not in self.connections:
            # The connection was lost while the application was made.
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            instance, loop=asyncio.get_event_loop()
        )
        return queue


class CommandLineInterface(cli.CommandLineInterface):
    server_class = Server


if __name__ == "__main__":
    CommandLineInterface.entrypoint()
