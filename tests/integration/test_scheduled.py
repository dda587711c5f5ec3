"""
Scheduled sources, driven by a real Celery worker and beat, watched through a
real daphne: they run only while somebody watches them.
"""
import asyncio
import re
import time

import pytest
from django_celery_beat.models import PeriodicTask

from ..wsclient import Client

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WEATHER = {"airport": "JFK"}


def refreshes(worker):
    """How many refresh tasks the worker has run so far."""
    return len(re.findall(r"Task datasources\.tasks\.refresh_source\[.*\] received",
                          worker.log()))


async def wait_until(predicate, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(step)
    return False


@pytest.fixture
def stack(processes):
    server = processes.daphne(extra_env={"VANILLA_INTERVALS": "weather=1"})
    worker = processes.worker()
    beat = processes.beat()
    return server, worker, beat


async def test_weather_runs_only_while_watched(stack):
    """No task runs unwatched; the first subscriber gets data on schedule; the
    beat entry goes after the last subscriber leaves plus the grace period."""
    server, worker, beat = stack

    # Unwatched: over a measured window, not one refresh runs.
    await asyncio.sleep(3)
    assert refreshes(worker) == 0
    assert not await asyncio.to_thread(
        PeriodicTask.objects.filter(name__startswith="vanilla:").exists
    )

    # Watched: the first value comes at once, then one a second.
    client = await Client.open(server)
    began = time.monotonic()
    reply = await client.subscribe("w", "weather", WEATHER)
    assert reply["params"] == WEATHER
    first = await client.receive_op("data", timeout=15)
    first_data = time.monotonic() - began
    updates = [first]
    while len(updates) < 3:
        updates.append(await client.receive_op("data", timeout=5))
    assert [frame["seq"] for frame in updates] == [1, 2, 3]
    assert updates[0]["data"]["airport"] == "JFK"
    assert "temp_c" in updates[0]["data"]
    assert updates[2]["time"] - updates[1]["time"] == pytest.approx(1, abs=0.6)

    # Last subscriber gone: after the grace period the beat entry is gone.
    await client.unsubscribe("w")
    left = time.monotonic()
    gone = await wait_until(
        lambda: not PeriodicTask.objects.filter(name__startswith="vanilla:").exists(),
        timeout=10,
    )
    stopped_after = time.monotonic() - left
    assert gone
    await asyncio.sleep(2.5)  # a task already sent may still arrive
    settled = refreshes(worker)
    await asyncio.sleep(3)
    assert refreshes(worker) == settled
    await client.close()
    print(
        f"first subscribe to first data {first_data:.2f} s; "
        f"last unsubscribe to unscheduled {stopped_after:.2f} s"
    )


async def test_admin_edit_of_schedule_applies_without_restart(stack):
    """Changing a running entry's interval in the database changes the rate."""
    server, worker, beat = stack
    client = await Client.open(server)
    await client.subscribe("w", "weather", {"airport": "LGA"})
    await client.receive_op("data", timeout=15)

    # What the admin's change form does: point the entry at a 3 s interval.
    from django_celery_beat.models import IntervalSchedule

    def slow_down():
        every3, _ = IntervalSchedule.objects.get_or_create(
            every=3, period=IntervalSchedule.SECONDS
        )
        entry = PeriodicTask.objects.get(name__startswith="vanilla:")
        entry.interval = every3
        entry.save()

    await asyncio.to_thread(slow_down)
    await asyncio.sleep(2)  # let beat notice the change
    stamps = []
    while len(stamps) < 4:
        stamps.append((await client.receive_op("data", timeout=10))["time"])
    # The first gap may still straddle the old schedule.
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    assert all(gap == pytest.approx(3, abs=0.8) for gap in gaps), gaps
    await client.close()
