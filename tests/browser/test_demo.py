"""
The demo page at / with the whole stack: daphne, the topology runner with the
demo topology from ``setup_demo``, and departures produced to Kafka as
``replay_flights`` sends them: topic "flights", keyed by origin, one JSON
object per flight of demo_data/flights.csv, clock times as "HH:MM".
"""
import concurrent.futures
import csv
import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from pubsub.connection import Keys, sync_client

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DEMO_DATA = Path(settings.BASE_DIR) / "demo_data"
KAFKA_TOPIC = "flights"
AIRPORTS = ("JFK", "LGA", "EWR")
NUMBER_COLUMNS = (
    "flight", "dep_delay", "arr_delay", "air_time", "distance", "year", "month", "day"
)
CLOCK_COLUMNS = ("sched_dep_time", "dep_time", "sched_arr_time", "arr_time")


# --- Helpers -------------------------------------------------------------------


def in_thread(fn):
    """
    Run ``fn`` (ORM work) in another thread: Playwright's loop runs in this
    one, and Django refuses database calls while it does.
    """

    def call():
        try:
            return fn()
        finally:
            connections.close_all()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=30)


def flights(limit):
    """The first ``limit`` flights of the demo data, as replay_flights sends them."""
    with open(DEMO_DATA / "airlines.csv", newline="") as file:
        carriers = {row["carrier"]: row["name"] for row in csv.DictReader(file)}
    with zipfile.ZipFile(DEMO_DATA / "flights.csv.zip") as archive:
        with archive.open("flights.csv") as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, newline=""))
            for count, row in enumerate(reader):
                if count == limit:
                    return
                yield flight_record(row, carriers)


def flight_record(row, carriers):
    """One CSV row as replay_flights sends it."""

    def number(text):
        return None if text == "NA" else int(float(text))

    def clock(text):
        if text == "NA":
            return None
        return f"{int(text) // 100 % 24:02d}:{int(text) % 100:02d}"

    record = {name: None if text == "NA" else text for name, text in row.items()}
    record.update((name, number(row[name])) for name in NUMBER_COLUMNS)
    record.update((name, clock(row[name])) for name in CLOCK_COLUMNS)
    record["date"] = f"{record['year']}-{record['month']:02d}-{record['day']:02d}"
    record["carrier_name"] = carriers.get(record["carrier"])
    record["cancelled"] = record["dep_time"] is None
    return record


class Departures:
    """A Kafka producer of flight records to the demo topic."""

    def __init__(self):
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        servers = settings.KAFKA_BOOTSTRAP_SERVERS
        admin = AdminClient({"bootstrap.servers": servers})
        futures = admin.create_topics([NewTopic(KAFKA_TOPIC, num_partitions=3)])
        try:
            futures[KAFKA_TOPIC].result(timeout=20)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        self.producer = Producer({"bootstrap.servers": servers, "linger.ms": 5})

    def send(self, record):
        self.producer.produce(
            KAFKA_TOPIC, key=record["origin"], value=json.dumps(record).encode()
        )

    def flush(self):
        assert self.producer.flush(20) == 0, "Kafka did not take every record"


@pytest.fixture
def departures():
    feed = Departures()
    yield feed
    feed.producer.flush(5)


def start_stack(processes, extra_env=None):
    """The demo topology (with a group of this test's own), daphne, the runner."""
    setup = processes.manage("setup_demo", "setup_demo")
    assert setup.popen.wait(timeout=60) == 0, setup.log()

    def own_group():
        from datasources.models import Topology

        # A fresh consumer group: offsets committed by earlier runs of the
        # demo must not replay their backlog into this test.
        changed = Topology.objects.filter(name="departures").update(
            group_id=f"vanilla-{processes.env['VANILLA_REDIS_PREFIX']}"
        )
        assert changed == 1, "setup_demo made no 'departures' topology"

    in_thread(own_group)
    server = processes.daphne(extra_env=extra_env)
    processes.manage("topologies", "run_topologies")
    return server


def rows_of(airport):
    return f'[data-airport="{airport}"] .departure-row'


def board_flights(page, airport):
    return page.eval_on_selector_all(
        rows_of(airport), "rows => rows.map(row => row.dataset.flight)"
    )


def feed_until_shown(page, departures, records, timeout=60):
    """
    Send ``records`` again and again until the board shows one of each
    airport: the topology starts at the latest offset once it is assigned,
    so records sent before that are not for it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in records:
            departures.send(record)
        departures.flush()
        shown = {airport: board_flights(page, airport) for airport in AIRPORTS}
        wanted = {r["origin"]: f"{r['carrier']}{r['flight']}" for r in records}
        if all(flight in shown[airport] for airport, flight in wanted.items()):
            return time.monotonic()
        page.wait_for_timeout(500)
    raise AssertionError(f"no departure row within {timeout} s; board: {shown}")


# --- Tests ---------------------------------------------------------------------


def test_a_live_departure_row_appears(processes, page, departures):
    """A flight produced to Kafka shows up on / as a departure row of its airport."""
    server = start_stack(processes)
    first = {}
    for record in flights(200):
        first.setdefault(record["origin"], record)
    records = [
        {**first[airport], "flight": 9900 + n, "tailnum": "NTEST"}
        for n, airport in enumerate(AIRPORTS)
    ]

    # Phase: the board opens and connects.
    page.goto(server.url + "/")
    page.wait_for_selector('#connection-state[data-state="open"]')
    assert page.locator(".airport").count() == 3

    # Phase: departures flow from Kafka to every airport's column.
    started = time.monotonic()
    shown_at = feed_until_shown(page, departures, records)
    print(f"\nfirst departure rows shown {shown_at - started:.1f} s after producing")

    # Phase: the row says what the record said.
    jfk = records[0]
    flight = f"{jfk['carrier']}9900"
    row = page.locator(f'{rows_of("JFK")}[data-flight="{flight}"]')
    cells = row.first.locator("td").all_inner_texts()
    assert cells[0] == jfk["dep_time"]
    assert cells[1] == flight
    assert cells[2] and jfk["carrier_name"].startswith(cells[2])
    assert cells[3] == jfk["dest"]
    assert cells[4].startswith(("Departed", "Delayed"))
    badge = '[data-airport="JFK"] [data-source="departures"] .source-state'
    page.wait_for_selector(f'{badge}[data-state="live"]')


def test_board_fills_with_flights_and_weather(processes, page, departures, tmp_path):
    """Real flights and weather fill the board; each column keeps its newest 25."""
    sync_client().set(f"{Keys().prefix}:demo:clock", "2013-01-01T06:00:00-05:00")
    server = start_stack(processes)
    processes.worker()
    records = list(flights(150))

    # Phase: the board opens; the weather comes from Celery.
    page.goto(server.url + "/")
    page.wait_for_selector('#connection-state[data-state="open"]')
    for airport in AIRPORTS:
        page.wait_for_function(
            "airport => document.querySelector("
            "`[data-airport=${airport}] [data-field=temp_c]`).textContent !== '–'",
            arg=airport,
            timeout=45_000,
        )

    # Phase: once the topology is assigned, replay the morning's flights.
    probe = [next(r for r in records if r["origin"] == a) for a in AIRPORTS]
    feed_until_shown(page, departures, probe)
    for record in records:
        departures.send(record)
    departures.flush()
    last = {record["origin"]: record for record in records}
    for airport, record in last.items():
        flight = f"{record['carrier']}{record['flight']}"
        newest = f'{rows_of(airport)}:first-child[data-flight="{flight}"]'
        page.wait_for_selector(newest)

    # Phase: newest first, at most 25 rows per airport.
    for airport in AIRPORTS:
        seqs = page.eval_on_selector_all(
            rows_of(airport), "rows => rows.map(row => Number(row.dataset.seq))"
        )
        assert len(seqs) == 25
        assert seqs == sorted(seqs, reverse=True)
    assert page.text_content('[data-field="clock"]').startswith("2013-01-01 ")

    path = os.environ.get("VANILLA_SCREENSHOT") or str(tmp_path / "demo.png")
    page.wait_for_timeout(1500)
    page.screenshot(path=path, full_page=True)
    print(f"\nscreenshot: {path}")
