"""
The janitor of a server process: stops on time, without a round trip to
Redis every interval while nothing is due.
"""
import asyncio
import time

import pytest

from pubsub.connection import sync_client
from pubsub.subscriptions import SubscriptionRegistry, snapshot
from pubsub.topics import Topic

from .helpers import connect, subscribe

pytestmark = pytest.mark.integration


@pytest.fixture
def long_lease(settings, registry):
    """A lease of ten minutes: the janitor's full round comes every 100 s."""
    settings.VANILLA = {**settings.VANILLA, "PROCESS_LEASE": 600.0}


def scripts_run():
    """EVAL calls Redis has served: the janitor queues its scripts by text."""
    stats = sync_client().info("commandstats")
    return stats.get("cmdstat_eval", {}).get("calls", 0)


async def stopped_within(source, topic, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if topic.key in source.stopped:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_quiet_process_leaves_redis_alone_between_rounds(long_lease, node):
    client = await connect()
    await subscribe(client, "a", {"room": "quiet"})
    await asyncio.sleep(0.5)  # the first round, made when the client came

    before = scripts_run()
    await asyncio.sleep(2.0)  # ten intervals of 0.2 s

    assert scripts_run() - before == 0
    await client.disconnect()


async def test_a_stop_begun_here_comes_within_an_interval_of_the_grace(
    long_lease, node, registry
):
    """The last unsubscribe tells the janitor when to claim (grace 1 s)."""
    source = registry.get("chat")
    client = await connect()
    await subscribe(client, "a", {"room": "leaving"})
    topic = Topic.of("chat", {"room": "leaving", "size": 1})

    await client.disconnect()
    left = time.monotonic()

    assert await stopped_within(source, topic, 3.0)
    assert time.monotonic() - left < 1.0 + 0.2 + 0.5
    assert topic.key not in snapshot()["states"]


async def test_a_stop_begun_elsewhere_is_claimed_when_due(long_lease, node, registry):
    """
    A stop that another process began (and may not live to claim) is on the
    idle list; the janitor learns its due time from a round and claims it.
    """
    source = registry.get("chat")
    client = await connect()  # starts this node's janitor
    other = SubscriptionRegistry()
    topic = Topic.of("chat", {"room": "elsewhere", "size": 1})
    assert await other.add(topic)
    assert await other.remove(topic)

    await node.janitor.tick()
    assert node.janitor.next_stop is not None

    assert await stopped_within(source, topic, 3.0)
    await client.disconnect()
    await other.close()
