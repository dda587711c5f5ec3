"""The hub's Redis subscription: lost and restored without losing data."""
import asyncio

import pytest

from pubsub import hub as hub_module
from pubsub.connection import sync_client
from pubsub.hub import Hub
from pubsub.publishing import apublish
from pubsub.topics import Topic

from .helpers import connect, receive, subscribe

pytestmark = pytest.mark.integration


async def test_publications_lost_in_a_redis_reconnect_are_recovered(node, caplog):
    """Killing the hub's Redis connection loses no publication: the gap is
    filled from the history when the next publication reveals it."""
    client = await connect()
    await subscribe(client, "a", {"room": "blip"})
    topic = Topic.of("chat", {"room": "blip", "size": 1})
    await apublish(topic, 1)

    # Drop every pub/sub connection, as a Redis restart or a network cut would,
    # and publish while the hub is reconnecting.
    killed = sync_client().client_kill_filter(_type="pubsub")
    assert killed >= 1
    for n in range(2, 6):
        await apublish(topic, n)
    await asyncio.sleep(1.5)
    await apublish(topic, 6)

    seen = []
    while len(seen) < 6:
        frame = await receive(client, timeout=5)
        if frame["op"] == "data":
            seen.append((frame["seq"], frame["data"]))
    assert seen == [(n, n) for n in range(1, 7)]
    assert "filling a gap after seq 1" in caplog.text
    assert await client.receive_nothing(timeout=0.3) or (
        (await receive(client))["op"] == "status"
    )
    await client.disconnect()


async def test_a_join_that_cannot_reach_redis_fails_every_member(
    settings, monkeypatch
):
    """Two connections join a topic while Redis does not answer: both get an
    error after the join timeout, neither waits for ever."""
    monkeypatch.setattr(hub_module, "JOIN_TIMEOUT", 0.3)

    async def mute(reader, writer):
        await reader.read()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    settings.REDIS_URL = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    hub = Hub()
    try:
        first = asyncio.create_task(hub.join("chat:room=x", object()))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(hub.join("chat:room=x", object()))
        results = await asyncio.wait_for(
            asyncio.gather(first, second, return_exceptions=True), 5
        )
        assert all(isinstance(result, Exception) for result in results), results
        assert hub.members == {}
    finally:
        await hub.close()
        server.close()
