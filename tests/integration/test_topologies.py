"""
Topologies against a real Kafka broker and a real Redis: runners are
``run_topologies`` processes (one runs in a thread where the test needs a
source of its own), killed, stopped and cut off from the broker for real.
Figures worth comparing between runs are printed (``pytest -s``).
"""
import json
import signal
import threading
import time

import pytest
from django.db import connection
from django.urls import reverse

from datasources import topology_worker
from datasources.base import StreamSource
from datasources.models import Topology
from datasources.registry import SourceRegistry
from datasources.sources.departures import DeparturesParams
from datasources.topology import TopologyRunner
from pubsub.connection import Keys, sync_client
from pubsub.protocol import SourceState
from pubsub.topics import Topic

from .topology_helpers import (
    AIRPORTS,
    CONSUMER_OPTIONS,
    Publications,
    committed_offsets,
    departures,
    group_members,
    make_topology,
    produce,
    read_all,
    services,
    start_runner,
    state_of,
    status,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def publications(redis_prefix):
    """Every departures publication from now on."""
    collector = Publications("departures")
    yield collector
    collector.close()


@pytest.fixture
def kafka_restarted_after():
    """Whatever the test does to the broker, it runs again afterwards."""
    yield
    services("start", "kafka")


def airport_topic(airport):
    return Topic.of("departures", {"airport": airport})


def test_records_reach_the_topic_of_their_airport(
    processes, kafka_topics, publications
):
    """Each record of a 3-partition topic is published once, on its airport's
    topic only, and the runner reports its partitions with no lag."""
    topic = kafka_topics.create(partitions=3)
    sent = departures(topic, 30)
    topology = make_topology(topic)

    # One runner publishes all 30.
    began = time.monotonic()
    start_runner(processes, "runner", topology)
    assert wait_until(lambda: len(publications) >= 30, timeout=30), processes.logs()
    took = time.monotonic() - began
    assert sorted(publications.coordinates()) == sorted(sent)

    # JFK records went to the JFK topic, and only there.
    for airport in AIRPORTS:
        bodies = publications.on(airport_topic(airport).key)
        assert len(bodies) == 10
        assert {body["params"]["airport"] for body in bodies} == {airport}
        assert all(body["data"]["flight"].startswith("VT") for body in bodies)
        numbers = {int(body["data"]["flight"][2:]) for body in bodies}
        assert all(AIRPORTS[number % 3] == airport for number in numbers)
    history = Keys().history(airport_topic("JFK").key)
    assert sync_client().xlen(history) == 10

    # The status shows three partitions, all committed up to the end.
    def settled():
        row = status(topology, "runner")
        done = row and row.state == "running" and len(row.partitions) == 3
        return done and row.lag == 0 and row.records == 30 and row

    row = wait_until(settled, timeout=10)
    assert row, status(topology, "runner").__dict__
    assert sum(part["committed"] or 0 for part in row.partitions.values()) == 30
    print(f"runner start to 30 records published: {took:.2f} s")


def test_offsets_are_committed_only_after_publication(
    processes, kafka_topics, publications
):
    """A runner killed mid-stream had committed only what it had published;
    the next runner resumes there, so every record is published at least once."""
    topic = kafka_topics.create(partitions=3)
    sent = departures(topic, 20000)
    topology = make_topology(topic)

    # Kill the first runner while records flow.
    first = start_runner(processes, "first", topology)
    assert wait_until(lambda: len(publications) >= 2000, timeout=30), processes.logs()
    first.kill()
    time.sleep(0.5)  # what was in Redis before the kill reaches the collector
    published = set(publications.coordinates())
    assert len(published) < len(sent), "the runner finished before the kill"

    # Every offset below a committed one had been published before the kill.
    committed = committed_offsets(topology.group_id, topic)
    assert any(offset > 0 for offset in committed.values())
    for partition, offset in committed.items():
        unpublished = [
            number
            for number in range(max(offset, 0))
            if (topic, partition, number) not in published
        ]
        assert not unpublished, (partition, offset, unpublished[:5])

    # A new runner publishes the rest; some records twice, none lost.
    start_runner(processes, "second", topology)
    everything = set(sent)
    assert wait_until(
        lambda: everything <= set(publications.coordinates()), timeout=60
    ), processes.logs()
    duplicates = len(publications.coordinates()) - len(everything)
    uncommitted = len(published) - sum(max(offset, 0) for offset in committed.values())
    assert 0 <= duplicates <= uncommitted + 100
    print(
        f"killed after {len(published)} published, {uncommitted} not committed; "
        f"{duplicates} published twice after the restart"
    )


def test_admin_actions_reach_the_runner_within_seconds(
    processes, kafka_topics, admin_client
):
    """Stop and Start in the admin make a running runner leave and rejoin the
    topology's consumer group within two seconds, without a restart; the
    subscribers of its source hear of the stop, and of the start."""
    topic = kafka_topics.create()
    topology = make_topology(topic)
    runner = start_runner(processes, "runner", topology)
    assert wait_until(lambda: state_of(topology, "runner") == "running", 30)
    assert group_members(topology.group_id) == 1
    # A watched departures topic, as the first subscriber leaves it.
    watched = airport_topic("JFK").key
    states = Keys().states
    sync_client().hset(states, watched, SourceState.LIVE)

    def heard():
        return sync_client().hget(states, watched)
    changelist = reverse("admin:datasources_topology_changelist")

    # Stop: the runner leaves the group.
    asked_at = time.monotonic()
    admin_client.post(changelist, {"action": "stop", "_selected_action": [topology.pk]})
    assert wait_until(lambda: group_members(topology.group_id) == 0, timeout=10)
    left_after = time.monotonic() - asked_at
    assert wait_until(lambda: state_of(topology, "runner") == "stopped", timeout=5)
    assert wait_until(lambda: heard() == SourceState.STOPPED, timeout=5), heard()

    # Start: it joins again.
    asked_at = time.monotonic()
    admin_client.post(
        changelist, {"action": "start", "_selected_action": [topology.pk]}
    )
    assert wait_until(lambda: group_members(topology.group_id) == 1, timeout=10)
    joined_after = time.monotonic() - asked_at
    assert wait_until(lambda: state_of(topology, "runner") == "running", timeout=5)
    assert wait_until(lambda: heard() == SourceState.LIVE, timeout=5), heard()
    assert runner.poll() is None
    assert left_after < 2.5 and joined_after < 2.5
    print(
        f"admin stop to group left: {left_after:.2f} s; "
        f"admin start to group joined: {joined_after:.2f} s"
    )


class EchoSource(StreamSource):
    """Publishes each record as it is, on the topic its "airport" names."""

    name = "vt_echo"
    Params = DeparturesParams
    history_size = 100

    def route(self, value, key):
        if value.get("refuse"):
            raise ValueError("refused by route()")
        return [({"airport": value["airport"]}, value)]


def good(number):
    return ("k", {"airport": "JFK", "number": number})


POISON = [
    ("not_json", ("k", b"{not json")),
    ("not_utf8", ("k", b'{"airport": "\xff\xfe"}')),
    ("too_large", ("k", {"airport": "JFK", "padding": "x" * 3000})),
    ("unroutable", ("k", {"airport": "JFK", "refuse": True})),
    ("invalid_params", ("k", {"airport": "BOS"})),
    ("not_json", ("k", None)),
    ("unroutable", ("k", {"no_airport": 1})),
]


def test_poison_records_are_counted_dead_lettered_and_skipped(
    redis_prefix, kafka_topics, caplog
):
    """Each kind of poison is logged once, dead-lettered with its reason,
    counted and committed past, while the good records around it flow."""
    topic = kafka_topics.create(partitions=1)
    dead = kafka_topics.create(partitions=1, prefix="vt-dead")
    records = [good(0)]
    for number, (_, record) in enumerate(POISON, start=1):
        records += [record, good(number)]
    produce(topic, records, partition=0)
    topology = make_topology(
        topic, source="vt_echo", dead_letter_topic=dead, max_record_bytes=2000
    )

    # A runner in a thread, with a registry holding the echo source.
    registry = SourceRegistry()
    registry.register(EchoSource())
    collector = Publications("vt_echo")
    runner, thread = serve_in_thread(topology, registry)
    try:
        assert wait_until(lambda: len(collector) >= 8, timeout=30)

        # Good records in order; poison counted and committed past.
        def settled():
            row = status(topology, "inproc")
            return row and row.poison_count == 7 and row.lag == 0 and row

        row = wait_until(settled, timeout=10)
        assert row, status(topology, "inproc").__dict__
        assert row.partitions[f"{topic}/0"]["committed"] == len(records)
        assert [body["data"]["number"] for _, body in collector.items] == list(range(8))
    finally:
        runner.stop()
        thread.join(15)
        collector.close()
    assert not thread.is_alive()

    # Each poison record was logged once and dead-lettered with its reason.
    logged = [r for r in caplog.records if "poison record" in r.getMessage()]
    assert len(logged) == 7
    letters = read_all(dead, expected=7)
    assert len(letters) == 7
    headers = [dict(letter.headers()) for letter in letters]
    assert [h["vanilla.reason"].decode() for h in headers] == [r for r, _ in POISON]
    assert [int(h["vanilla.offset"]) for h in headers] == list(range(1, 15, 2))
    assert {h["vanilla.topic"].decode() for h in headers} == {topic}
    assert letters[0].value() == b"{not json"


def _serve(runner):
    try:
        runner.serve()
    finally:
        connection.close()


def test_a_killed_runner_s_partitions_go_to_the_other(
    processes, kafka_topics, publications
):
    """Two runners share a 3-partition topic; after one is SIGKILLed the other
    owns all three partitions and publishes everything, some records twice."""
    topic = kafka_topics.create(partitions=3)
    topology = make_topology(topic)
    feeder = Feeder(topic)

    # Two runners split the partitions.
    first = start_runner(processes, "runner-a", topology)
    start_runner(processes, "runner-b", topology)

    def split():
        rows = [status(topology, name) for name in ("runner-a", "runner-b")]
        parts = [set(row.partitions) if row else set() for row in rows]
        apart = all(parts) and parts[0].isdisjoint(parts[1])
        return apart and len(parts[0] | parts[1]) == 3 and parts

    parts = wait_until(split, timeout=30)
    assert parts, processes.logs()
    feeder.start()
    assert wait_until(lambda: len(publications) >= 200, timeout=20)

    # Kill one; the other takes its partitions over.
    killed_at = time.monotonic()
    first.kill()
    whole = wait_until(
        lambda: len(status(topology, "runner-b").partitions) == 3, timeout=30
    )
    took = time.monotonic() - killed_at
    assert whole, processes.logs()
    feeder.stop()

    # Everything produced is published; count the duplicates.
    assert wait_until(
        lambda: set(feeder.sent) <= set(publications.coordinates()), timeout=30
    )
    duplicates = len(publications.coordinates()) - len(set(feeder.sent))
    assert duplicates >= 0
    assert took < 20
    print(
        f"partitions of runner-a {sorted(parts[0])}; SIGKILL to runner-b owning "
        f"all 3: {took:.1f} s; {duplicates} records published twice "
        f"of {len(feeder.sent)}"
    )


class Feeder:
    """Produces departures steadily (about 200 a second) in a thread."""

    def __init__(self, topic):
        self.topic = topic
        self.sent = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()

    def _run(self):
        number = 0
        while not self.stopping.is_set():
            self.sent += departures(self.topic, 20, start=number)
            number += 20
            time.sleep(0.1)

    def stop(self):
        self.stopping.set()
        self.thread.join(30)


def test_broker_outage_errors_stops_and_recovers(
    processes,
    kafka_topics,
    publications,
    admin_client,
    kafka_restarted_after,
    monkeypatch,
    caplog,
):
    """With the broker down, runners show an error; a stop from the admin, a
    SIGTERM and a stop with uncommitted offsets all finish within 10 s; when
    the broker is back, the runner that kept running recovers."""
    topics = [kafka_topics.create(partitions=3) for _ in range(4)]
    stopped, surviving, terminated, guarded = [make_topology(t) for t in topics]
    for topic in topics[:3]:
        departures(topic, 3)
    runner = start_runner(processes, "r1", stopped, surviving)
    other = start_runner(processes, "r2", terminated)
    assert wait_until(lambda: len(publications) >= 9, timeout=30), processes.logs()

    # A runner in a thread commits its first batch, then never again.
    monkeypatch.setattr(topology_worker, "COMMIT_INTERVAL", 3600)
    inproc, thread = serve_in_thread(guarded)
    first = departures(guarded.topics, 3)
    assert wait_until(lambda: set(first) <= set(publications.coordinates()), 20)
    second = departures(guarded.topics, 3, start=10)
    assert wait_until(lambda: set(second) <= set(publications.coordinates()), 20)

    # A subscriber watches JFK departures.
    jfk = airport_topic("JFK").key
    sync_client().hset(Keys().states, jfk, "live")

    # Broker down: the runner reports an error, and so do watched topics.
    services("stop", "kafka")
    down_at = time.monotonic()
    assert wait_until(lambda: state_of(surviving, "r1") == "error", timeout=20)
    error_after = time.monotonic() - down_at
    assert status(surviving, "r1").last_error
    assert wait_until(lambda: sync_client().hget(Keys().states, jfk) == "error", 5)

    # Stop with offsets to commit: the commit cannot finish, the stop does.
    # First, while the group still counts the worker as a member (for a
    # session timeout): after that, its partitions are lost, not committed.
    stopping_at = time.monotonic()
    inproc.stop()
    thread.join(10)
    guarded_took = time.monotonic() - stopping_at
    assert not thread.is_alive()
    assert any("did not close within" in r.getMessage() for r in caplog.records)

    # Stop one topology from the admin during the outage.
    asked_at = time.monotonic()
    response = admin_client.post(
        reverse("admin:datasources_topology_changelist"),
        {"action": "stop", "_selected_action": [stopped.pk]},
        follow=True,
    )
    assert "1 topology was stopped" in response.content.decode()
    assert wait_until(lambda: state_of(stopped, "r1") == "stopped", timeout=10)
    stop_took = time.monotonic() - asked_at

    # SIGTERM the other runner during the outage.
    signalled_at = time.monotonic()
    other.signal(signal.SIGTERM)
    exit_code = other.popen.wait(timeout=10)
    exit_took = time.monotonic() - signalled_at
    assert exit_code == 0
    assert state_of(terminated, "r2") == "stopped"

    # Broker back: the surviving topology recovers and publishes new records.
    services("start", "kafka")
    up_at = time.monotonic()
    assert wait_until(lambda: state_of(surviving, "r1") == "running", timeout=60)
    recovered_after = time.monotonic() - up_at
    new = departures(surviving.topics, 3, start=100)
    assert wait_until(
        lambda: set(new) <= set(publications.coordinates()), timeout=30
    ), processes.logs()
    published_after = time.monotonic() - up_at
    assert runner.poll() is None
    assert sync_client().hget(Keys().states, jfk) == "live"

    # The guarded topology committed nothing past its first batch.
    committed = committed_offsets(guarded.group_id, guarded.topics)
    ends = {partition: offset + 1 for _, partition, offset in first}
    assert all(offset <= ends.get(part, 0) for part, offset in committed.items())
    print(
        f"broker down to error: {error_after:.1f} s; during the outage, admin "
        f"stop: {stop_took:.1f} s, SIGTERM to exit: {exit_took:.1f} s, stop "
        f"with uncommitted offsets: {guarded_took:.1f} s; broker up to "
        f"running: {recovered_after:.1f} s, to new records published: "
        f"{published_after:.1f} s"
    )


def serve_in_thread(topology, registry=None, runner_id="inproc", **options):
    """A TopologyRunner for ``topology`` in a thread of this process."""
    runner = TopologyRunner(
        runner_id=runner_id,
        only=[topology.name],
        registry=registry,
        consumer_options={
            **dict(option.split("=") for option in CONSUMER_OPTIONS),
            **options,
        },
    )
    thread = threading.Thread(target=_serve, args=(runner,), daemon=True)
    thread.start()
    return runner, thread


def test_start_positions_without_committed_offsets(
    processes, kafka_topics, publications
):
    """A new group reads old records with "earliest", only new ones with
    "latest", and nothing with "committed", which reports an error."""
    topics = {
        start: kafka_topics.create() for start in ("earliest", "latest", "committed")
    }
    old = {start: departures(topic, 6) for start, topic in topics.items()}
    topologies = {
        start: make_topology(topic, start_from=start) for start, topic in topics.items()
    }
    start_runner(processes, "runner", *topologies.values())

    # Earliest reads the backlog; latest starts fetching at the end.
    earliest = topics["earliest"]
    assert wait_until(
        lambda: len(publications.coordinates(earliest)) == 6, timeout=30
    ), processes.logs()

    def fetching(topology):
        row = status(topology, "runner")
        parts = row.partitions.values() if row else []
        return len(parts) == 3 and all(part["high"] is not None for part in parts)

    assert wait_until(lambda: fetching(topologies["latest"]), timeout=30)
    assert wait_until(
        lambda: state_of(topologies["committed"], "runner") == "error", timeout=30
    )

    # New records: earliest and latest publish them; committed still nothing.
    new = {start: departures(topic, 6, start=50) for start, topic in topics.items()}
    assert wait_until(
        lambda: len(publications.coordinates(earliest)) == 12
        and len(publications.coordinates(topics["latest"])) == 6,
        timeout=30,
    )
    assert set(publications.coordinates(topics["latest"])) == set(new["latest"])
    assert set(publications.coordinates(earliest)) == set(
        old["earliest"] + new["earliest"]
    )
    time.sleep(1)
    assert publications.coordinates(topics["committed"]) == []
    error = status(topologies["committed"], "runner").last_error
    assert "offset" in error.lower(), error


def test_on_demand_topology_consumes_only_while_watched(
    processes, kafka_topics, publications
):
    """An on-demand topology stays out of its group while no topic of its
    source is in the states hash, consumes while one is, and leaves again."""
    topic = kafka_topics.create()
    backlog = departures(topic, 6)
    topology = make_topology(topic, mode=Topology.Mode.ON_DEMAND)
    start_runner(processes, "runner", topology)

    # Unwatched: idle, not in the group, nothing published.
    assert wait_until(lambda: state_of(topology, "runner") == "idle", timeout=30)
    time.sleep(2)
    assert len(publications) == 0
    assert group_members(topology.group_id) == 0

    # Watched: what Pub-Sub writes when a first subscriber arrives.
    jfk = airport_topic("JFK")
    keys, client = Keys(), sync_client()
    client.hset(
        keys.topics, jfk.key, json.dumps({"source": "departures", "params": jfk.params})
    )
    client.hset(keys.states, jfk.key, "starting")
    watched_at = time.monotonic()
    assert wait_until(lambda: len(publications) >= 6, timeout=20), processes.logs()
    consumed_after = time.monotonic() - watched_at
    assert sorted(publications.coordinates()) == sorted(backlog)
    assert wait_until(lambda: state_of(topology, "runner") == "running", timeout=5)
    assert client.hget(keys.states, jfk.key) == "live"

    # Unwatched again: the runner leaves the group and goes idle.
    client.hdel(keys.states, jfk.key)
    unwatched_at = time.monotonic()
    assert wait_until(lambda: group_members(topology.group_id) == 0, timeout=15)
    left_after = time.monotonic() - unwatched_at
    assert wait_until(lambda: state_of(topology, "runner") == "idle", timeout=5)
    departures(topic, 3, start=10)
    time.sleep(2)
    assert len(publications) == 6
    print(
        f"watched to backlog published: {consumed_after:.1f} s; "
        f"unwatched to out of the group: {left_after:.1f} s"
    )


class SlowSource(EchoSource):
    """An echo source whose every record takes a quarter of a second to prepare."""

    name = "vt_slow"

    def prepare(self, topic, data, **extra):
        time.sleep(0.25)
        return super().prepare(topic, data, **extra)


def test_a_slow_runner_keeps_its_place_in_the_group(kafka_topics):
    """A batch that takes longer to handle than max.poll.interval.ms allows is
    split between polls: the runner stays in its group the whole time, and
    publishes each record once, in order."""
    topic = kafka_topics.create(partitions=1)
    produce(topic, [good(number) for number in range(40)], partition=0)
    topology = make_topology(topic, source="vt_slow")
    registry = SourceRegistry()
    registry.register(SlowSource())
    collector = Publications("vt_slow")
    # 40 records take 10 s to handle; the group drops a member that does not
    # poll for 6 s (the least Kafka allows beside a 6 s session timeout).
    runner, thread = serve_in_thread(
        topology, registry, **{"max.poll.interval.ms": "6000"}
    )
    members = []
    try:
        deadline = time.monotonic() + 40
        while len(collector) < 40 and time.monotonic() < deadline:
            members.append(group_members(topology.group_id))
            time.sleep(0.5)
        assert len(collector) == 40, len(collector)

        def settled():
            row = status(topology, "inproc")
            return row and row.lag == 0 and row

        row = wait_until(settled, timeout=10) or status(topology, "inproc")
    finally:
        runner.stop()
        thread.join(15)
        collector.close()
    numbers = [body["data"]["number"] for _, body in collector.items]
    assert numbers == list(range(40))
    # Once in, never out (a dropped member would rejoin: 0, then 1 again).
    joined = members[members.index(1):]
    assert set(joined) == {1}, members
    assert row.state == "running" and row.lag == 0, row.__dict__
