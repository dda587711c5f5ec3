"""
replay_flights against the real Kafka broker and Redis: the 2013 departures
come out in order of departure, keyed by airport, at the speed asked for.
"""
import datetime
import io
import json
import time

import pytest
from confluent_kafka.admin import AdminClient
from django.core.management import call_command

from pubsub.connection import Keys, sync_client

from .topology_helpers import KafkaTopics, bootstrap, read_all, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def topic():
    """A topic name of this test; replay_flights creates it, the test deletes it."""
    topics = KafkaTopics()
    name = unique("vt-flights")
    topics.created.append(name)
    yield name
    topics.delete_all()


def replay(*args):
    out = io.StringIO()
    began = time.monotonic()
    call_command("replay_flights", *args, stdout=out)
    return out.getvalue(), time.monotonic() - began


def values(records):
    return [json.loads(record.value()) for record in records]


def test_departures_come_in_order_keyed_by_airport(redis_prefix, topic):
    """Each partition holds its airports' departures in departure order; a
    cancelled flight comes at its scheduled time; the demo clock follows."""
    output, took = replay("--topic", topic, "--speed", "0", "--limit", "20000")
    assert "replayed 20000 departures" in output
    metadata = AdminClient({"bootstrap.servers": bootstrap()}).list_topics(topic)
    assert len(metadata.topics[topic].partitions) == 3

    # Read them back: keys, order per partition, cancelled flights.
    records = read_all(topic, expected=20000, timeout=60)
    assert len(records) == 20000
    assert all(r.key().decode() == json.loads(r.value())["origin"] for r in records)
    for partition in range(3):
        moments = [
            value["departure"]
            for value in values(r for r in records if r.partition() == partition)
        ]
        assert moments == sorted(moments)
    everything = values(records)
    assert min(value["departure"] for value in everything) == (
        "2013-01-01T05:17:00-05:00"
    )
    cancelled = [value for value in everything if value["cancelled"]]
    assert cancelled
    for value in cancelled:
        assert value["dep_time"] is None
        assert value["departure"][11:16] == value["sched_dep_time"]
    assert {value["carrier_name"] for value in everything} >= {"JetBlue Airways"}

    # The clock shows the simulated New York time of the last minute sent.
    clock = datetime.datetime.fromisoformat(
        sync_client().get(f"{Keys().prefix}:demo:clock")
    )
    last = max(datetime.datetime.fromisoformat(v["departure"]) for v in everything)
    assert datetime.timedelta(0) <= last - clock <= datetime.timedelta(minutes=1)
    print(f"replayed 20000 departures in {took:.1f} s ({output.strip()})")


def test_replay_keeps_to_its_speed(redis_prefix, topic):
    """At 600x, ten simulated minutes of departures take one real second."""
    replay(
        "--topic",
        topic,
        "--speed",
        "600",
        "--start",
        "2013-03-01T07:00",
        "--limit",
        "40",
    )
    records = read_all(topic, expected=40)
    assert len(records) == 40

    # Simulated span against the records' real timestamps (ms, when produced).
    moments = [datetime.datetime.fromisoformat(v["departure"]) for v in values(records)]
    stamps = [record.timestamp()[1] / 1000 for record in records]
    assert min(moments) >= datetime.datetime.fromisoformat("2013-03-01T07:00-05:00")
    simulated = (max(moments) - min(moments)).total_seconds()
    real = max(stamps) - min(stamps)
    assert simulated > 600
    assert real == pytest.approx(simulated / 600, abs=0.3)
    print(f"{simulated:.0f} simulated s of departures sent in {real:.2f} s at 600x")
