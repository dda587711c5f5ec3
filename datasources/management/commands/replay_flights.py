"""
Replay the real 2013 New York departures into Kafka as the demo's live data.

Flights go out in order of actual departure (a cancelled one at its scheduled
time, marked cancelled), keyed by origin airport, one JSON value each, at
``--speed`` simulated seconds per real second. The simulated New York time is
kept in Redis (``<prefix>:demo:clock``) so that the weather source can show the
weather of the demo's hour.
"""
import bisect
import csv
import datetime
import json
import logging
import sys
import threading
import time
import zipfile
import zoneinfo
from pathlib import Path

import redis
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from datasources.topology import capture_signals
from pubsub.connection import Keys, sync_client

logger = logging.getLogger("datasources.replay")

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
PARTITIONS = 3
#: Simulated seconds between two writes of the demo clock.
CLOCK_STEP = 60
#: Real seconds the demo clock outlives the replay that wrote it.
CLOCK_TTL = 600
#: Sort keys are (minute of departure << INDEX_BITS) | row index.
INDEX_BITS = 20
COLUMNS = (
    "year month day dep_time sched_dep_time dep_delay arr_time sched_arr_time "
    "arr_delay carrier flight tailnum origin dest air_time distance hour minute "
    "time_hour"
).split()
AT = {name: index for index, name in enumerate(COLUMNS)}


class Flights:
    """
    The year of departures in ``flights.csv.zip``, in order of departure.

    The file is ordered by scheduled date only, and not even that across
    months, so the whole year is sorted once: each row is kept as its CSV line
    (bytes) and sorted by one integer per row, its departure minute and index.
    """

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)
        self.lines = []
        self.order = []
        self.airlines = {}

    def load(self):
        self.airlines = self._read_airlines()
        with zipfile.ZipFile(self.data_dir / "flights.csv.zip") as archive:
            with archive.open("flights.csv") as file:
                header = file.readline().decode().strip().split(",")
                if header != list(COLUMNS):
                    raise ValueError(f"unexpected columns in flights.csv: {header}")
                self.lines = file.read().splitlines()
        keys = (self._key(index, line) for index, line in enumerate(self.lines))
        self.order = sorted(keys)
        return self

    def _read_airlines(self):
        path = self.data_dir / "airlines.csv"
        if not path.exists():
            return {}
        with open(path, newline="") as file:
            return {row["carrier"]: row["name"] for row in csv.DictReader(file)}

    def _key(self, index, line):
        row = line.decode().split(",")
        return (_departure_minute(row) << INDEX_BITS) | index

    def __len__(self):
        return len(self.order)

    def first_at(self, moment):
        """Position in ``order`` of the first departure at or after ``moment``."""
        return bisect.bisect_left(self.order, _minute_of(moment) << INDEX_BITS)

    def departures(self, start=0):
        """``(moment, value)`` of each departure from position ``start`` on."""
        mask = (1 << INDEX_BITS) - 1
        for key in self.order[start:]:
            row = self.lines[key & mask].decode().split(",")
            yield _moment(key >> INDEX_BITS), self.value(row)

    def value(self, row):
        """The JSON value of one flight."""
        cancelled = row[AT["dep_time"]] == "NA"
        minute = _departure_minute(row)
        return {
            "date": f"{row[0]}-{int(row[1]):02d}-{int(row[2]):02d}",
            "carrier": row[AT["carrier"]],
            "carrier_name": self.airlines.get(row[AT["carrier"]]),
            "flight": _number(row[AT["flight"]]),
            "tailnum": _text(row[AT["tailnum"]]),
            "origin": row[AT["origin"]],
            "dest": row[AT["dest"]],
            "sched_dep_time": _clock(row[AT["sched_dep_time"]]),
            "dep_time": _clock(row[AT["dep_time"]]),
            "dep_delay": _number(row[AT["dep_delay"]]),
            "sched_arr_time": _clock(row[AT["sched_arr_time"]]),
            "arr_time": _clock(row[AT["arr_time"]]),
            "arr_delay": _number(row[AT["arr_delay"]]),
            "air_time": _number(row[AT["air_time"]]),
            "distance": _number(row[AT["distance"]]),
            "departure": _moment(minute).isoformat(),
            "cancelled": cancelled,
        }


class Replay:
    """Sends departures to a Kafka topic at ``speed`` and keeps the demo clock."""

    def __init__(self, producer, topic, speed, clock_key):
        self.producer = producer
        self.topic = topic
        self.speed = speed
        self.clock_key = clock_key
        self.stopping = threading.Event()
        self.sent = 0
        self.failed = 0
        self.next_tick = None
        self.clock_broken = False

    def run(self, departures, limit=None, progress=None):
        """Send ``departures`` in order; returns how many were sent."""
        real_origin = time.monotonic()
        sim_origin = None
        for moment, value in departures:
            if self.stopping.is_set() or (limit is not None and self.sent >= limit):
                break
            sim_origin = sim_origin or moment
            # Wait for the departure's simulated time, keeping the clock going.
            self._wait_for(moment, sim_origin, real_origin)
            if self.stopping.is_set():
                break
            self._send(value)
            self._tick(moment)
            if progress is not None:
                progress.update(1)
        return self.sent

    def _wait_for(self, moment, sim_origin, real_origin):
        if not self.speed:
            return
        due = real_origin + (moment - sim_origin).total_seconds() / self.speed
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= due:
                return
            self._tick(
                sim_origin
                + datetime.timedelta(seconds=(now - real_origin) * self.speed)
            )
            self.producer.poll(0)
            self.stopping.wait(min(due - now, 0.1))

    def _send(self, value):
        payload = json.dumps(value, separators=(",", ":")).encode()
        while True:
            try:
                self.producer.produce(
                    self.topic,
                    value=payload,
                    key=value["origin"].encode(),
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                # The local queue is full: let it drain to the broker.
                self.producer.poll(0.5)
        self.producer.poll(0)
        self.sent += 1

    def _delivered(self, error, message):
        if error is not None:
            self.failed += 1
            if self.failed == 1:
                logger.error(
                    "a departure was not delivered to %s: %s", self.topic, error
                )

    def _tick(self, moment):
        """Write the simulated clock once per simulated CLOCK_STEP."""
        if self.next_tick is not None and moment < self.next_tick:
            return
        self.next_tick = moment + datetime.timedelta(seconds=CLOCK_STEP)
        try:
            sync_client().set(self.clock_key, moment.isoformat(), ex=CLOCK_TTL)
        except redis.RedisError as exc:
            if not self.clock_broken:
                logger.warning("cannot write the demo clock: %s", exc)
            self.clock_broken = True

    def stop(self):
        self.stopping.set()


class Command(BaseCommand):
    help = (
        "Replay the 2013 New York departures into a Kafka topic, in order of "
        "departure, at a chosen speed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--topic", default="flights", help="Kafka topic.")
        parser.add_argument(
            "--speed",
            type=float,
            default=360.0,
            help="Simulated seconds per real second (360: an hour per 10 s); "
            "0 sends as fast as Kafka takes them.",
        )
        parser.add_argument(
            "--start",
            type=_parse_start,
            help="Simulated New York date-time to start at, e.g. 2013-06-01T07:00 "
            "(default: the first departure of the year).",
        )
        parser.add_argument("--limit", type=int, help="Stop after this many.")
        parser.add_argument(
            "--loop", action="store_true", help="Start again at the end, forever."
        )

    def handle(self, *args, topic, speed, start, limit, loop, **options):
        if speed < 0:
            raise CommandError("--speed must be 0 or more")
        bootstrap = settings.KAFKA_BOOTSTRAP_SERVERS
        flights = self._load(Path(settings.VANILLA["DEMO_DATA_DIR"]))
        ensure_topic(bootstrap, topic)
        producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 20, "client.id": "replay"}
        )
        replay = Replay(producer, topic, speed, f"{Keys().prefix}:demo:clock")
        first = flights.first_at(start) if start else 0
        logger.info(
            "replaying %d departures into %s on %s at %gx%s",
            len(flights) - first if limit is None else limit,
            topic,
            bootstrap,
            speed,
            ", looping" if loop else "",
        )
        began = time.monotonic()
        with capture_signals(replay.stop, log=logger):
            try:
                self._replay(flights, replay, first, limit, loop)
            finally:
                left = producer.flush(10)
        elapsed = time.monotonic() - began
        self.stdout.write(
            f"replayed {replay.sent} departures in {elapsed:.1f} s "
            f"({replay.sent / max(elapsed, 1e-9):.0f}/s); "
            f"{replay.failed + left} not delivered"
        )

    def _load(self, data_dir):
        try:
            return Flights(data_dir).load()
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise CommandError(f"cannot read the flights in {data_dir}: {exc}")

    def _replay(self, flights, replay, first, limit, loop):
        total = len(flights) - first if limit is None else limit
        with tqdm(
            total=None if loop else min(total, len(flights)),
            unit=" flights",
            disable=not sys.stderr.isatty(),
        ) as progress:
            while True:
                left = None if limit is None else limit - replay.sent
                replay.run(flights.departures(first), left, progress)
                done = limit is not None and replay.sent >= limit
                if not loop or done or replay.stopping.is_set():
                    return


def ensure_topic(bootstrap, topic):
    """Create ``topic`` with PARTITIONS partitions unless it exists."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        if topic in admin.list_topics(timeout=10).topics:
            return
        futures = admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        futures[topic].result(timeout=10)
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise CommandError(f"cannot create Kafka topic {topic}: {exc}")
    logger.info("created Kafka topic %s with %d partitions", topic, PARTITIONS)


def _parse_start(text):
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--start wants an ISO date-time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=NEW_YORK)
    return moment.astimezone(NEW_YORK)


def _departure_minute(row):
    """Minutes since 0001-01-01, New York time, of the actual departure."""
    date = datetime.date(int(row[0]), int(row[1]), int(row[2]))
    scheduled = int(row[AT["sched_dep_time"]])
    delay = row[AT["dep_delay"]]
    minute = date.toordinal() * 1440 + scheduled // 100 * 60 + scheduled % 100
    return minute + (int(delay) if delay != "NA" else 0)


def _minute_of(moment):
    local = moment.astimezone(NEW_YORK) if moment.tzinfo else moment
    return local.toordinal() * 1440 + local.hour * 60 + local.minute


def _moment(minute):
    day, minute = divmod(minute, 1440)
    date = datetime.date.fromordinal(day)
    naive = datetime.datetime.combine(date, datetime.time(minute // 60, minute % 60))
    return naive.replace(tzinfo=NEW_YORK)


def _clock(text):
    """HHMM as in the file ("517", "2400") -> "05:17", "00:00"; NA -> None."""
    if text == "NA":
        return None
    value = int(text)
    return f"{value // 100 % 24:02d}:{value % 100:02d}"


def _number(text):
    return None if text == "NA" else int(float(text))


def _text(text):
    return None if text in ("NA", "") else text
