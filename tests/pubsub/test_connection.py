"""
pubsub.connection: a burst of commands stays within the pool's size, and a
Redis that stops answering fails commands instead of holding them.
"""
import asyncio
import time

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from pubsub import connection
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
    try:
        burst = (client.incr(f"{redis_prefix}:burst") for _ in range(200))
        replies = await asyncio.gather(*burst)
        during = await asyncio.to_thread(connected_clients)
    finally:
        await client.aclose()

    assert sorted(replies) == list(range(1, 201))
    assert 1 <= during - before <= 3


@pytest.mark.parametrize("size", [0, -1, 2.5, "32"])
async def test_a_pool_size_that_is_no_count_of_connections_is_refused(
    settings, vanilla_settings, size
):
    settings.VANILLA = {**settings.VANILLA, "REDIS_CONNECTIONS": size}
    reset_clients()

    with pytest.raises(ImproperlyConfigured, match="REDIS_CONNECTIONS"):
        async_client()


async def test_a_redis_that_stops_answering_fails_commands_in_time(
    settings, vanilla_settings, redis_prefix, monkeypatch
):
    """
    Redis stops answering everyone for 3 s (CLIENT PAUSE): both clients give
    up on their commands after the timeout instead of waiting it out.
    """
    monkeypatch.setattr(connection, "COMMAND_TIMEOUT", 0.5)
    reset_clients()
    client, blocking = async_client(), sync_client()
    await client.ping()
    await asyncio.to_thread(blocking.ping)
    admin = redis.Redis.from_url(settings.REDIS_URL)
    key = f"{redis_prefix}:paused"

    admin.client_pause(3000, all=True)
    try:
        began = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.get(key)
        with pytest.raises(redis.exceptions.TimeoutError):
            await asyncio.to_thread(blocking.get, key)
        waited = time.monotonic() - began
    finally:
        admin.execute_command("CLIENT UNPAUSE")
        admin.close()
        await client.aclose()

    assert waited < 2
