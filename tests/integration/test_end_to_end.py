"""
The whole path on real services: a Kafka producer writes departures, a
``run_topologies`` process publishes them, daphne serves them to a websocket
client that watches one airport.
"""
import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from ..wsclient import Client
from .topology_helpers import departures, make_topology, start_runner, status

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def test_jfk_subscriber_gets_jfk_departures_only(processes, kafka_topics):
    """Within 5 s of a producer writing 30 departures (10 per airport), the JFK
    subscriber has all 10 JFK ones, in their order, and nothing else."""
    topic = kafka_topics.create(partitions=3)
    topology = await sync_to_async(make_topology)(topic)
    server = processes.daphne()
    start_runner(processes, "runner", topology)

    def assigned():
        row = status(topology, "runner")
        return row is not None and row.state == "running" and len(row.partitions) == 3

    deadline = time.monotonic() + 30
    while not await sync_to_async(assigned)():
        assert time.monotonic() < deadline, processes.logs()
        await asyncio.sleep(0.2)

    client = await Client.open(server)
    reply = await client.subscribe("jfk", "departures", {"airport": "JFK"})
    assert reply["params"] == {"airport": "JFK"}

    produced_at = time.monotonic()
    await sync_to_async(departures)(topic, 30)

    received = []
    while len(received) < 10:
        left = produced_at + 5 - time.monotonic()
        assert left > 0, f"only {len(received)} of 10 JFK departures within 5 s"
        frame = await client.receive_op("data", timeout=left)
        received.append(frame)
    took = time.monotonic() - produced_at

    # Anything for another airport would arrive about as fast as JFK's did.
    with pytest.raises(TimeoutError):
        await client.receive_op("data", timeout=1.0)
    await client.close()

    assert {frame["id"] for frame in received} == {"jfk"}
    assert {frame["kafka"]["topic"] for frame in received} == {topic}
    flights = [frame["data"]["flight"] for frame in received]
    assert sorted(flights) == sorted(f"VT{number}" for number in range(0, 30, 3))
    # One key, one partition: the runner keeps their order, and seq follows it.
    assert flights == sorted(flights, key=lambda flight: int(flight[2:]))
    seqs = [frame["seq"] for frame in received]
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    print(f"producer to the 10th JFK frame on the websocket: {took:.2f} s")
