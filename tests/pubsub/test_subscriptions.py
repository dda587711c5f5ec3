"""The subscription registry's counts in Redis, for one server process."""
import asyncio

import pytest

from pubsub.connection import Keys, sync_client
from pubsub.subscriptions import SubscriptionRegistry, snapshot
from pubsub.topics import Topic

pytestmark = pytest.mark.integration


async def test_the_first_subscription_of_a_new_process_starts_its_source(registry):
    """
    Before its lease is first written, a process's first subscription is
    counted once and reported as the first, so that its source starts.
    """
    subscriptions = SubscriptionRegistry()
    topic = Topic.of("chat", {"room": "first"})

    first = await subscriptions.add(topic)

    assert first is True
    assert snapshot()["counts"] == {topic.key: 1}
    await subscriptions.close()


async def test_concurrent_first_subscriptions_count_once_each(registry):
    """Subscriptions racing the process's registration are each counted once."""
    subscriptions = SubscriptionRegistry()
    topics = [Topic.of("chat", {"room": f"r{n % 3}"}) for n in range(9)]

    firsts = await asyncio.gather(*(subscriptions.add(topic) for topic in topics))

    assert sum(firsts) == 3
    assert snapshot()["counts"] == {topic.key: 3 for topic in topics[:3]}
    await subscriptions.close()


async def test_a_subscription_whose_restore_failed_is_not_written_later(registry):
    """
    A subscription that finds the process's lease lost restores the whole
    process. If that restore fails, the subscription fails and must not be
    counted by the restore that succeeds next.
    """
    subscriptions = SubscriptionRegistry()
    kept = Topic.of("chat", {"room": "kept"})
    failed = Topic.of("chat", {"room": "failed"})
    await subscriptions.add(kept)
    sync_client().zrem(Keys().processes, subscriptions.process_id)
    restore = subscriptions.restore

    async def unreachable(reason="lease lost"):
        subscriptions.restore = restore
        raise ConnectionError("Redis went away")

    subscriptions.restore = unreachable
    with pytest.raises(ConnectionError):
        await subscriptions.add(failed)
    await subscriptions.renew()

    assert snapshot()["counts"] == {kept.key: 1}
    await subscriptions.close()
