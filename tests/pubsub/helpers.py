"""A websocket client for the consumer, in-process, for the Pub-Sub tests."""
import json

from channels.testing import WebsocketCommunicator

from pubsub.consumers import SubscriptionConsumer


async def connect():
    communicator = WebsocketCommunicator(SubscriptionConsumer.as_asgi(), "/ws/")
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def send(communicator, frame):
    text = frame if isinstance(frame, str) else json.dumps(frame)
    await communicator.send_to(text_data=text)


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
        {"op": "subscribe", "id": id, "source": source, "params": params or {}, **extra},
    )
    reply = await receive(communicator)
    assert reply["op"] == "subscribed", reply
    status = await receive(communicator)
    assert status["op"] == "status", status
    return reply, status
