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
    The messages daphne has for one application, oldest first. Only
    ``put_nowait`` and ``get``, the two calls daphne and its application
    make, and nothing allocated until a task waits.
    """

    __slots__ = ("messages", "waiters")

    def __init__(self):
        self.messages = []
        self.waiters = None

    def put_nowait(self, message):
        self.messages.append(message)
        self.wake()

    async def get(self):
        while not self.messages:
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # A wake-up this task took with it goes to the next task.
                if self.messages:
                    self.wake()
                raise
            finally:
                self.waiters.remove(waiter)
        return self.messages.pop(0)

    def wake(self):
        for waiter in self.waiters or ():
            if not waiter.done():
                waiter.set_result(None)
                return

    def qsize(self):
        return len(self.messages)


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
