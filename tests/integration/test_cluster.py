"""
Subscription counting across two real daphne processes sharing one Redis:
concurrent storms, simultaneous first subscribers, and a process killed with
SIGKILL.
"""
import asyncio
import random
import time
from collections import Counter

import pytest

from pubsub.subscriptions import snapshot
from pubsub.topics import Topic

from ..wsclient import Client

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

AIRPORTS = ("JFK", "LGA", "EWR")


def key(airport):
    return Topic.of("departures", {"airport": airport}).key


async def wait_for(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return False


@pytest.fixture
def two_servers(processes):
    return processes.daphne("daphne-a"), processes.daphne("daphne-b")


async def storm(client, rounds, rng):
    """Random subscribes and unsubscribes; returns what the client holds."""
    held = {}
    for n in range(rounds):
        if held and rng.random() < 0.45:
            id = rng.choice(sorted(held))
            await client.unsubscribe(id)
            del held[id]
        else:
            id = f"s{n}"
            airport = rng.choice(AIRPORTS)
            await client.subscribe(id, "departures", {"airport": airport})
            held[id] = airport
    return held


async def test_counts_are_exact_after_concurrent_storms(two_servers):
    """Many clients on two processes subscribing and leaving at once end with
    exact counts, per topic and per process, and none after they all leave."""
    servers = two_servers
    clients = [await Client.open(servers[n % 2]) for n in range(40)]
    rng = random.Random(7)

    holdings = await asyncio.gather(
        *(storm(client, 12, random.Random(rng.random())) for client in clients)
    )

    expected = Counter(key(airport) for held in holdings for airport in held.values())
    state = snapshot()
    assert state["counts"] == dict(expected)
    held_by_processes = {
        topic: sum(holders.values()) for topic, holders in state["holders"].items()
    }
    assert held_by_processes == dict(expected)
    assert len(state["processes"]) == 2

    await asyncio.gather(*(client.close() for client in clients))
    assert await wait_for(lambda: not snapshot()["counts"], timeout=5)
    assert await wait_for(lambda: not snapshot()["states"], timeout=5)


async def test_simultaneous_first_subscribers_start_once(two_servers):
    """Two processes seeing a first subscriber at the same instant start the
    source exactly once in the cluster."""
    a, b = two_servers
    clients = [await Client.open(server) for server in (a, b) for _ in range(5)]

    await asyncio.gather(
        *(c.subscribe(f"x{n}", "departures", {"airport": "LGA"})
          for n, c in enumerate(clients))
    )

    starts = sum(
        server.log().count(f"started source departures for {key('LGA')}")
        for server in (a, b)
    )
    assert starts == 1
    assert snapshot()["counts"][key("LGA")] == 10
    for client in clients:
        await client.close()


async def test_killed_process_is_reaped_within_lease_and_grace(two_servers, settings):
    """SIGKILL of a process: its subscriptions leave the counts within the
    lease, and a source only it watched stops after the grace period."""
    a, b = two_servers
    on_a = await Client.open(a)
    on_b = await Client.open(b)
    await on_a.subscribe("e", "departures", {"airport": "EWR"})
    await on_a.subscribe("j", "departures", {"airport": "JFK"})
    await on_b.subscribe("j", "departures", {"airport": "JFK"})
    assert snapshot()["counts"] == {key("EWR"): 1, key("JFK"): 2}

    a.kill()
    killed = time.monotonic()
    assert await wait_for(lambda: key("EWR") not in snapshot()["counts"], timeout=15)
    uncounted = time.monotonic() - killed
    assert await wait_for(lambda: key("EWR") not in snapshot()["states"], timeout=15)
    stopped = time.monotonic() - killed

    lease = settings.VANILLA["PROCESS_LEASE"]
    grace = settings.VANILLA["STOP_GRACE"]
    state = snapshot()
    assert state["counts"] == {key("JFK"): 1}
    assert key("JFK") in state["states"]
    assert len(state["processes"]) == 1
    assert uncounted <= lease + 1.5
    assert stopped <= lease + grace + 1.5
    assert f"stopped source departures for {key('EWR')}" in b.log()
    await on_b.close()
    print(f"SIGKILL to counts corrected {uncounted:.2f} s, to source stopped "
          f"{stopped:.2f} s (lease {lease} s, grace {grace} s)")
