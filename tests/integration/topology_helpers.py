"""
What the topology tests share: Kafka topics of their own, a collector of every
publication Redis carries, topologies with unique groups, runner processes
and polling with a deadline. Everything is real: Kafka, Redis, processes.
The fixtures built on these live in the test modules.
"""
import json
import subprocess
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings

from datasources.models import Topology, TopologyStatus
from pubsub.connection import Keys, sync_client

from ..processes import ROOT

#: Quick hand-over of a dead runner's partitions (the broker allows 6 s).
CONSUMER_OPTIONS = ("session.timeout.ms=6000", "heartbeat.interval.ms=1000")
AIRPORTS = ("JFK", "LGA", "EWR")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bootstrap():
    return settings.KAFKA_BOOTSTRAP_SERVERS


def wait_until(predicate, timeout, step=0.1):
    """The first truthy value of ``predicate()`` within ``timeout`` s, or None."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(step)


# --- Kafka --------------------------------------------------------------------


class KafkaTopics:
    """Creates topics with unique names and deletes them at the end."""

    def __init__(self):
        self.admin = AdminClient({"bootstrap.servers": bootstrap()})
        self.created = []

    def create(self, partitions=3, prefix="vt"):
        name = unique(prefix)
        futures = self.admin.create_topics([NewTopic(name, partitions, 1)])
        futures[name].result(timeout=20)
        self.created.append(name)
        return name

    def delete_all(self):
        if self.created:
            futures = self.admin.delete_topics(self.created, operation_timeout=10)
            for future in futures.values():
                try:
                    future.result(timeout=15)
                except Exception:
                    pass


def departure(airport, number):
    return {"origin": airport, "carrier": "VT", "flight": number, "dep_delay": 0}


def produce(topic, records, partition=None):
    """
    Send ``(key, value)`` pairs (value: bytes, None, or anything JSON) and
    return the ``(topic, partition, offset)`` of each, in order.
    """
    producer = Producer({"bootstrap.servers": bootstrap(), "linger.ms": 5})
    delivered = []

    def on_delivery(error, message):
        assert error is None, error
        delivered.append((message.topic(), message.partition(), message.offset()))

    for key, value in records:
        if value is not None and not isinstance(value, bytes):
            value = json.dumps(value).encode()
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
        producer.poll(0)
    assert producer.flush(30) == 0
    return delivered


def departures(topic, count, start=0):
    """Produce ``count`` departures, round-robin over the three airports."""
    records = [
        (AIRPORTS[number % 3], departure(AIRPORTS[number % 3], number))
        for number in range(start, start + count)
    ]
    return produce(topic, records)


def committed_offsets(group, topic, partitions=3):
    """partition -> the group's committed offset (negative: none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap(), "group.id": group})
    try:
        parts = [TopicPartition(topic, number) for number in range(partitions)]
        return {
            part.partition: part.offset
            for part in consumer.committed(parts, timeout=10)
        }
    finally:
        consumer.close()


def group_members(group):
    """How many consumers are in ``group`` now."""
    admin = AdminClient({"bootstrap.servers": bootstrap()})
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return len(description.members)


def read_all(topic, expected, timeout=20):
    """The first ``expected`` records of ``topic``, read from the start."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap(),
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                records.append(message)
    finally:
        consumer.close()
    return records


def services(*args):
    """Run scripts/services (stop or start Kafka) and wait for it."""
    subprocess.run(
        ["bash", "scripts/services", *args],
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
    )


# --- Redis ----------------------------------------------------------------------


class Publications:
    """Every publication of a source that Redis carries, read in a thread."""

    def __init__(self, source):
        self.pubsub = sync_client().pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(f"{Keys().prefix}:pub:{source}.*")
        self.items = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "pmessage":
                body = json.loads(message["data"])
                if "data" in body:
                    self.items.append((message["channel"], body))

    def __len__(self):
        return len(self.items)

    def coordinates(self, topic=None):
        """(topic, partition, offset) of each publication, in arrival order."""
        found = [
            (
                body["kafka"]["topic"],
                body["kafka"]["partition"],
                body["kafka"]["offset"],
            )
            for _, body in list(self.items)
        ]
        return [each for each in found if topic is None or each[0] == topic]

    def on(self, topic_key):
        """The publications of one Pub-Sub topic."""
        channel = Keys().channel(topic_key)
        return [body for name, body in list(self.items) if name == channel]

    def close(self):
        self.stopping.set()
        self.thread.join(5)
        self.pubsub.close()


# --- topologies and runners --------------------------------------------------


def make_topology(topic, **fields):
    """An always-on departures topology reading ``topic`` from the start."""
    values = {
        "name": unique("topo"),
        "topics": topic,
        "group_id": unique("group"),
        "source": "departures",
        "mode": Topology.Mode.ALWAYS_ON,
        "start_from": Topology.StartFrom.EARLIEST,
    }
    values.update(fields)
    return Topology.objects.create(**values)


def start_runner(processes, name, *topologies):
    """``run_topologies`` for these topologies, with ``name`` as its runner id."""
    args = ["run_topologies", "--runner-id", name]
    for topology in topologies:
        args += ["--only", topology.name]
    for option in CONSUMER_OPTIONS:
        args += ["--consumer-option", option]
    return processes.manage(name, *args)


def status(topology, runner_id):
    return TopologyStatus.objects.filter(topology=topology, runner_id=runner_id).first()


def state_of(topology, runner_id):
    row = status(topology, runner_id)
    return row.state if row is not None else None
