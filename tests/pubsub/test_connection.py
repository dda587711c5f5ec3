"""pubsub.connection: a burst of commands stays within the pool's size."""
import asyncio

import pytest

from pubsub.connection import async_client, reset_clients, sync_client

pytestmark = pytest.mark.integration


def connected_clients():
    return sync_client().info("clients")["connected_clients"]


async def test_a_burst_of_commands_opens_no_more_connections_than_allowed(
    settings, vanilla_settings, redis_prefix
):
    settings.VANILLA = {**settings.VANILLA, "REDIS_CONNECTIONS": 3}
    reset_clients()
    client = async_client()
    before = await asyncio.to_thread(connected_clients)

    replies = await asyncio.gather(*(client.incr(f"{redis_prefix}:burst") for _ in range(200)))
    during = await asyncio.to_thread(connected_clients)

    assert sorted(replies) == list(range(1, 201))
    assert 1 <= during - before <= 3
    await client.aclose()
