"""
The hub's Redis connection (pubsub.listener): against the real Redis, and
against peers on loopback that misbehave as a dead or confused server would.
"""
import asyncio

import pytest
from django.conf import settings

from pubsub import listener as listener_module
from pubsub.connection import sync_client
from pubsub.listener import Listener

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self):
        self.messages = []
        self.subscribed = []
        self.lost = asyncio.get_running_loop().create_future()

    async def open(self, url):
        return await Listener.open(
            url, self.on_message, self.subscribed.append, self.on_lost
        )

    def on_message(self, channel, data):
        self.messages.append((channel, data))

    def on_lost(self, listener, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def until(condition, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_receives_what_is_published_split_and_batched():
    """Messages of any size arrive whole and in order, one per publication."""
    recorder = Recorder()
    listener = await recorder.open(settings.REDIS_URL)
    listener.subscribe("vanilla-test:listener:a", "vanilla-test:listener:b")
    await until(lambda: len(recorder.subscribed) == 2)

    big = "é" * 100_000  # several reads' worth, and not ASCII
    client = sync_client()
    with client.pipeline(transaction=False) as pipe:
        for n in range(200):
            pipe.publish("vanilla-test:listener:a", str(n))
        pipe.publish("vanilla-test:listener:b", big)
        pipe.execute()
    await until(lambda: len(recorder.messages) == 201)
    assert recorder.messages[:200] == [
        ("vanilla-test:listener:a", str(n)) for n in range(200)
    ]
    assert recorder.messages[200] == ("vanilla-test:listener:b", big)

    listener.unsubscribe("vanilla-test:listener:a")
    await asyncio.sleep(0.1)
    client.publish("vanilla-test:listener:a", "after")
    client.publish("vanilla-test:listener:b", "still")
    await until(lambda: len(recorder.messages) == 202)
    assert recorder.messages[-1] == ("vanilla-test:listener:b", "still")
    listener.close()
    assert await asyncio.wait_for(recorder.lost, 5) is None


async def test_wrong_credentials_fail_the_open_with_redis_reason():
    """A password the server does not take is an error at once, not a hang."""
    url = settings.REDIS_URL.replace("redis://", "redis://:not-the-password@", 1)
    with pytest.raises(ConnectionError, match="Redis refused"):
        await Recorder().open(url)


@pytest.fixture
async def peer():
    """A TCP server on loopback that answers the greeting PING, then nothing."""
    connections = []

    async def serve(reader, writer):
        connections.append(writer)
        await reader.readuntil(b"PING\r\n")
        writer.write(b"+PONG\r\n")
        await writer.drain()
        await reader.read()  # and never answer again

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_silent_peer_is_dropped(peer, monkeypatch):
    """A connection that stops answering (even its PING) is given up."""
    monkeypatch.setattr(listener_module, "HEALTH_INTERVAL", 0.2)
    recorder = Recorder()
    await recorder.open(peer)
    began = asyncio.get_running_loop().time()
    await asyncio.wait_for(recorder.lost, 5)
    assert 0.3 <= asyncio.get_running_loop().time() - began < 2


async def test_a_peer_that_never_answers_fails_the_open(monkeypatch):
    """No PONG to the greeting within CONNECT_TIMEOUT: the open fails."""
    monkeypatch.setattr(listener_module, "CONNECT_TIMEOUT", 0.3)

    async def mute(reader, writer):
        await reader.read()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await Recorder().open(f"redis://127.0.0.1:{port}/0")
    finally:
        server.close()


async def test_garbage_from_the_peer_drops_the_connection(caplog):
    """Bytes that are not RESP end the connection with a clear log line."""

    async def confused(reader, writer):
        await reader.readuntil(b"PING\r\n")
        writer.write(b"+PONG\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"!!! this is not redis\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(confused, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        recorder = Recorder()
        await recorder.open(f"redis://127.0.0.1:{port}/0")
        await asyncio.wait_for(recorder.lost, 5)
    finally:
        server.close()
    assert "unreadable reply from Redis; reconnecting" in caplog.text
