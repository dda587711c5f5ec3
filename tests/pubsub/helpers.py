"""A websocket client for the consumer, in-process, for the Pub-Sub tests."""
import json

from channels.testing import WebsocketCommunicator

from pubsub.backpressure import SCOPE_KEY
from pubsub.consumers import SubscriptionConsumer


async def connect(application=None, path="/ws/", **options):
    """
    A connected communicator to ``application`` (the bare consumer by
    default); ``options`` are WebsocketCommunicator's headers and subprotocols.
    """
    application = application or SubscriptionConsumer.as_asgi()
    communicator = WebsocketCommunicator(application, path, **options)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def send(communicator, frame):
    """Send a text frame: ``frame`` as it is if a string, else as JSON."""
    text = frame if isinstance(frame, str) else json.dumps(frame)
    await communicator.send_input({"type": "websocket.receive", "text": text})


async def closed_with(communicator, timeout=3):
    """The close code the server sends next, skipping frames before it."""
    while True:
        message = await communicator.receive_output(timeout)
        if message["type"] == "websocket.close":
            code = message.get("code", 1000)
            # daphne's websocket library takes nothing but a plain int.
            assert type(code) is int, f"close code {code!r} is not a plain int"
            return code


async def receive(communicator, timeout=3):
    return json.loads(await communicator.receive_from(timeout=timeout))


async def receive_until(communicator, op, timeout=3):
    """Frames up to and including the first with ``op``."""
    frames = []
    while True:
        frames.append(await receive(communicator, timeout))
        if frames[-1]["op"] == op:
            return frames


async def subscribe(communicator, id, params=None, source="chat", **extra):
    await send(
        communicator,
        {
            "op": "subscribe",
            "id": id,
            "source": source,
            "params": params or {},
            **extra,
        },
    )
    reply = await receive(communicator)
    assert reply["op"] == "subscribed", reply
    status = await receive(communicator)
    assert status["op"] == "status", status
    return reply, status


class FakeTransport:
    """Where daphne's transport would hold the producer a consumer registers."""

    def __init__(self):
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


class FakeSocket:
    """
    Stands in for daphne's websocket protocol in the scope, so that a test can
    tell the consumer its socket is full (``pause()``) and drained again
    (``resume()``), as Twisted does for a client that stops reading.
    """

    def __init__(self):
        self.transport = FakeTransport()

    def application(self):
        """The consumer, with this socket in its scope."""
        consumer = SubscriptionConsumer.as_asgi()

        async def application(scope, receive, send):
            scope = dict(scope, **{SCOPE_KEY: self})
            return await consumer(scope, receive, send)

        return application

    def pause(self):
        self.transport.producer.pauseProducing()

    def resume(self):
        self.transport.producer.resumeProducing()
