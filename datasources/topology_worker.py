"""
One topology at run time: a thread, a Kafka consumer in the topology's group,
and the commits of what it published.

The runner (``datasources.topology``) decides when a worker consumes, by
setting ``wanted``, and reads its ``status``; the worker never touches the
database. All consumer calls and callbacks happen in the worker's thread,
except the final commit and close, which run in a helper thread that is
abandoned after ``CLOSE_TIMEOUT``: with the broker down, a commit waits for
the group coordinator for several seconds. Each consumer has an ``Offsets``
of its own, so that an abandoned one's late callbacks change nothing.
"""
import json
import logging
import threading
import time
from functools import partial

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from django.utils import timezone

from pubsub.publishing import publish_all

from .models import TopologyStatus
from .offsets import Offsets
from .records import DeadLetters, PoisonRecord, coordinates, publications, where

logger = logging.getLogger("datasources.topology")
kafka_logger = logging.getLogger("datasources.topology.kafka")

#: Seconds an on-demand worker nobody watches waits between two looks.
POLL_TIMEOUT = 0.2
#: Seconds a poll waits for a first record. It returns with that record and
#: whatever came with it, so a busy topic's records do not wait for a batch.
RECORD_WAIT = 0.1
#: Records handled between two polls, and the seconds they may take: the rest
#: of a slower batch is fetched again, so that the consumer keeps polling well
#: within max.poll.interval.ms.
BATCH_SIZE = 100
BATCH_BUDGET = 5.0
#: Seconds between two asynchronous commits of published offsets.
COMMIT_INTERVAL = 0.5
#: Seconds to commit and leave the group before abandoning the consumer.
CLOSE_TIMEOUT = 3.0
#: Back-off (seconds) after consecutive failures to publish or to connect.
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)

#: Consumer settings a deployment may override (``--consumer-option``).
CONSUMER_DEFAULTS = {
    # Hand a dead runner's partitions over within seconds (librdkafka: 45 s).
    "session.timeout.ms": 10000,
    # Broker health for the status, once a second (see ``_on_stats``).
    "statistics.interval.ms": 1000,
}
#: What ``start_from`` means for a partition without a committed offset.
OFFSET_RESET = {"earliest": "earliest", "latest": "latest", "committed": "error"}


class RepeatFilter(logging.Filter):
    """Let one librdkafka line through per ``window`` seconds: it retries fast."""

    def __init__(self, window=30.0):
        super().__init__()
        self.window = window
        self.seen = {}

    def filter(self, record):
        text, now = record.getMessage(), time.monotonic()
        if now - self.seen.get(text, -self.window) < self.window:
            return False
        if len(self.seen) > 1000:
            self.seen.clear()
        self.seen[text] = now
        return True


kafka_logger.addFilter(RepeatFilter())


class TopologyWorker:
    """
    One topology in a thread of its own: its consumer, its records and their
    commits. The runner sets ``wanted`` while the topology should consume and
    reads ``status``; everything else happens in the worker's thread.
    """

    def __init__(self, config, source, kafka_config, runner_id):
        self.config = config
        self.source = source
        self.kafka_config = kafka_config
        self.runner_id = runner_id
        self.mapping = config.mapping
        self.wanted = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self.run, name=f"topology-{config.name}", daemon=True
        )
        self.consumer = None
        self.offsets = Offsets()
        self.dead_letters = None
        self.rebalanced = False
        self.next_commit = 0.0
        self.next_committed_query = 0.0
        # What is wrong now, by kind: "kafka", "record", "redis", "internal".
        self.errors = {}
        self.failures = 0
        self.counts = {"records": 0, "poison": 0, "errors": 0}
        self.last_error = ""
        self.last_record_at = None
        self.started = timezone.now()
        self._rate_mark = (time.monotonic(), 0)
        self.status = self._snapshot(rate=0.0)

    # --- control, from the runner's thread -------------------------------------

    def start(self):
        self.thread.start()

    def want(self, wanted):
        self.wanted.set() if wanted else self.wanted.clear()

    def stop(self):
        self.stopping.set()

    def join(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def finished(self):
        return self.thread.ident is not None and not self.thread.is_alive()

    # --- the loop --------------------------------------------------------------

    def run(self):
        logger.info(
            "topology %s: worker started for source %s on %s",
            self.config.name,
            self.config.source,
            ",".join(self.config.topics),
        )
        while not self.stopping.is_set():
            self._step()
        self._close()
        if self.dead_letters is not None:
            self.dead_letters.close()
        self.status = self._snapshot(rate=0.0, state=TopologyStatus.State.STOPPED)
        logger.info(
            "topology %s: worker stopped after %d records, %d poison",
            self.config.name,
            self.counts["records"],
            self.counts["poison"],
        )

    def _step(self):
        try:
            if self.wanted.is_set():
                self._consume()
            else:
                # On demand and unwatched: leave the group, then wait.
                self._close()
                self.wanted.wait(POLL_TIMEOUT)
        except Exception as exc:
            # A bug or a fatal consumer error: start again from the committed
            # offsets rather than die quietly.
            logger.error("topology %s: worker failed", self.config.name, exc_info=True)
            self._fail("internal", f"{type(exc).__name__}: {exc}")
            self._close()
            self._back_off()
        self._refresh_status()

    def _consume(self):
        consumer = self._open()
        if consumer is None:
            return
        messages = consumer.consume(1, RECORD_WAIT)
        if messages:
            messages += consumer.consume(BATCH_SIZE - 1, 0)
        deadline = time.monotonic() + BATCH_BUDGET
        # Records read but not yet published, with their publications: they
        # go to Redis together, in one round trip.
        batch = []
        left = []
        published = True
        for index, message in enumerate(messages):
            # Finish the records in hand only: the rest stays uncommitted.
            if self.stopping.is_set():
                break
            if time.monotonic() > deadline:
                left = messages[index:]
                break
            prepared = self._prepare(message)
            if isinstance(prepared, list):
                batch.append((message, prepared))
                continue
            # An error or a poison record: the records before it go first.
            published = self._publish(batch)
            if not published:
                left = messages[index:]
                break
            batch = []
            self._skip(message, prepared)
        if published:
            published = self._publish(batch)
        if not published:
            self._rewind(consumer, [message for message, _ in batch] + left)
            self._back_off()
        elif left:
            self._rewind(consumer, left)
        self._commit()

    # --- records -----------------------------------------------------------------

    def _prepare(self, message):
        """
        A record's publications, encoded and checked; or, for a record that
        cannot be published, its error (a KafkaError or a PoisonRecord).
        """
        error = message.error()
        if error is not None:
            return error
        try:
            return [
                self.source.prepare(topic, payload, kafka=coordinates(message))
                for topic, payload in publications(
                    self.source, message, self.config.max_record_bytes, self.mapping
                )
            ]
        except PoisonRecord as poison:
            return poison
        except (TypeError, ValueError) as exc:
            # json.dumps refused the payload: it always will.
            return PoisonRecord("unpublishable", str(exc))

    def _publish(self, batch):
        """
        Publish the records of ``batch`` in one pipeline; False when they
        must be tried again later (some may be in Redis already: at least
        once).
        """
        if not batch:
            return True
        try:
            publish_all([p for _, prepared in batch for p in prepared])
        except redis.RedisError as exc:
            self._fail("redis", f"could not publish to Redis: {exc}")
            return False
        for message, _ in batch:
            self._published()
            self.offsets.published(message)
        return True

    def _skip(self, message, reason):
        """A record that is not published: a consumer error, or poison."""
        if not isinstance(reason, PoisonRecord):
            self._record_error(message, reason)
            return
        self._poison(message, reason)
        self.offsets.published(message)

    def _published(self):
        self.counts["records"] += 1
        self.last_record_at = timezone.now()
        self.failures = 0
        self._recover("redis", "record")

    def _poison(self, message, poison):
        self.counts["poison"] += 1
        target = self.config.dead_letter_topic
        logger.warning(
            "topology %s: poison record %s (%s: %s); %s",
            self.config.name,
            where(message),
            poison.reason,
            poison.detail,
            f"sent to {target}" if target else "dropped",
        )
        if not target:
            return
        if self.dead_letters is None:
            self.dead_letters = DeadLetters(
                target,
                self.config.name,
                self.kafka_config["bootstrap.servers"],
                kafka_logger,
            )
        self.dead_letters.send(message, poison)

    def _record_error(self, message, error):
        if error.code() == KafkaError._PARTITION_EOF:
            return
        where = f"{message.topic()} [{message.partition()}]"
        self._fail("record", f"{where}: {error.name()}: {error.str()}")
        if error.fatal():
            raise KafkaException(error)

    def _rewind(self, consumer, messages):
        """Fetch ``messages`` again: seek each partition back to its first."""
        firsts = {}
        for message in messages:
            if message.error() is None:
                key = (message.topic(), message.partition())
                firsts.setdefault(key, message.offset())
        try:
            for (topic, partition), offset in firsts.items():
                consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            # Reopening resumes from the committed offsets: nothing is skipped.
            logger.warning(
                "topology %s: could not seek back (%s); reopening the consumer",
                self.config.name,
                exc,
            )
            self._close()

    # --- the consumer ----------------------------------------------------------

    def _open(self):
        if self.consumer is not None:
            return self.consumer
        offsets = Offsets()
        try:
            consumer = Consumer(self._consumer_config(offsets))
            consumer.subscribe(
                list(self.config.topics),
                on_assign=partial(self._on_assign, offsets),
                on_revoke=partial(self._on_revoke, offsets),
                on_lost=partial(self._on_lost, offsets),
            )
        except KafkaException as exc:
            self._fail("kafka", f"could not create the consumer: {exc}")
            self._back_off()
            return None
        self.consumer, self.offsets = consumer, offsets
        self.rebalanced = False
        logger.info(
            "topology %s: consuming %s in group %s",
            self.config.name,
            ",".join(self.config.topics),
            self.config.group_id,
        )
        return consumer

    def _consumer_config(self, offsets):
        config = {**CONSUMER_DEFAULTS, **self.kafka_config}
        config.update(
            {
                "group.id": self.config.group_id,
                "client.id": f"vanilla-{self.config.name}-{self.runner_id}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": OFFSET_RESET[self.config.start_from],
                "error_cb": partial(self._on_error, offsets),
                "stats_cb": partial(self._on_stats, offsets),
                "on_commit": partial(self._on_commit, offsets),
                "logger": kafka_logger,
            }
        )
        return config

    def _close(self):
        """Commit what was published and leave the group, or give up trying."""
        consumer, offsets = self.consumer, self.offsets
        if consumer is None:
            return
        self.consumer, self.offsets = None, Offsets()

        def close():
            self._commit(consumer, offsets, wait=True)
            consumer.close()

        started = time.monotonic()
        if _bounded(close, CLOSE_TIMEOUT, f"close-{self.config.name}"):
            logger.info(
                "topology %s: left group %s in %.2f s",
                self.config.name,
                self.config.group_id,
                time.monotonic() - started,
            )
        else:
            logger.warning(
                "topology %s: the consumer did not close within %s s; abandoned "
                "it, its uncommitted records will be read again",
                self.config.name,
                CLOSE_TIMEOUT,
            )

    # --- commits ---------------------------------------------------------------

    def _commit(self, consumer=None, offsets=None, wait=False, only=None):
        """Commit published offsets: asynchronously, every COMMIT_INTERVAL."""
        if consumer is None:
            consumer, offsets = self.consumer, self.offsets
        if consumer is None or not offsets.pending:
            return
        if not wait and time.monotonic() < self.next_commit:
            return
        self.next_commit = time.monotonic() + COMMIT_INTERVAL
        if self.dead_letters and not self.dead_letters.delivered(1.0 if wait else 0):
            return
        due = offsets.due(only)
        if not due:
            return
        try:
            if wait:
                done = consumer.commit(offsets=due, asynchronous=False)
                self._on_commit(offsets, None, done)
            else:
                consumer.commit(offsets=due, asynchronous=True)
        except KafkaException as exc:
            self._on_commit(offsets, exc.args[0], due)

    # --- consumer callbacks, from within consume() and close() ----------------------
    #
    # Each gets the Offsets of its consumer first. A callback of a consumer that
    # was closed or abandoned (``offsets is not self.offsets``) touches only
    # that consumer's own Offsets, never the worker's state.

    def _on_assign(self, offsets, consumer, partitions):
        offsets.assign(partitions)
        if offsets is self.offsets:
            self.rebalanced = True
            self.next_committed_query = 0.0
            self._recover("kafka", "record")
        logger.info("topology %s: assigned %s", self.config.name, _names(partitions))

    def _on_revoke(self, offsets, consumer, partitions):
        self._commit(consumer, offsets, wait=True, only=partitions)
        offsets.forget(partitions)
        logger.info("topology %s: revoked %s", self.config.name, _names(partitions))

    def _on_lost(self, offsets, consumer, partitions):
        offsets.forget(partitions)
        logger.warning(
            "topology %s: lost %s without committing",
            self.config.name,
            _names(partitions),
        )

    def _on_commit(self, offsets, error, partitions):
        offsets.settled(error, partitions)
        if error is not None:
            logger.warning("topology %s: commit failed: %s", self.config.name, error)

    def _on_error(self, offsets, error):
        if offsets is not self.offsets:
            return
        self._fail("kafka", f"{error.name()}: {error.str()}")
        if error.fatal():
            raise KafkaException(error)

    def _on_stats(self, offsets, stats_json):
        if offsets is not self.offsets:
            return
        # Kafka works when the group coordinator is up and a broker connected.
        stats = json.loads(stats_json)
        connected = any(
            broker.get("state") == "UP" and broker.get("nodeid", -1) >= 0
            for broker in stats.get("brokers", {}).values()
        )
        if connected and stats.get("cgrp", {}).get("state") == "up":
            self._recover("kafka")

    # --- errors and status -----------------------------------------------------

    def _fail(self, kind, message):
        if self.errors.get(kind) != message:
            logger.warning("topology %s: %s", self.config.name, message)
        self.errors[kind] = message
        self.last_error = message
        self.counts["errors"] += 1
        self.failures += 1

    def _recover(self, *kinds):
        for kind in kinds:
            if self.errors.pop(kind, None) is not None:
                logger.info("topology %s: %s recovered", self.config.name, kind)

    def _back_off(self):
        delay = RETRY_DELAYS[min(max(self.failures, 1), len(RETRY_DELAYS)) - 1]
        self.stopping.wait(delay)

    def _refresh_status(self):
        started, count = self._rate_mark
        now = time.monotonic()
        if now - started < 0.9:
            return
        self._rate_mark = (now, self.counts["records"])
        rate = (self.counts["records"] - count) / (now - started)
        self.status = self._snapshot(rate=round(rate, 1))

    def _snapshot(self, rate, state=None):
        return {
            "state": state or self._state(),
            "partitions": self._partitions(),
            "records_per_second": rate,
            "records": self.counts["records"],
            "last_record_at": self.last_record_at,
            "last_error": self.last_error,
            "error_count": self.counts["errors"],
            "poison_count": self.counts["poison"],
            "started": self.started,
        }

    def _state(self):
        State = TopologyStatus.State
        if self.errors:
            return State.ERROR
        if self.consumer is None:
            return State.STARTING if self.wanted.is_set() else State.IDLE
        return State.RUNNING if self.rebalanced else State.STARTING

    def _partitions(self):
        consumer = self.consumer
        if consumer is None:
            return {}
        self._query_committed(consumer)
        return self.offsets.table(partial(_high_watermark, consumer))

    def _query_committed(self, consumer):
        """Ask for the committed offsets of new partitions, every 5 s at most."""
        unknown = self.offsets.unknown()
        if not unknown or time.monotonic() < self.next_committed_query:
            return
        self.next_committed_query = time.monotonic() + 5.0
        try:
            self.offsets.learn(consumer.committed(unknown, 1.0))
        except KafkaException:
            pass


def _high_watermark(consumer, topic, partition):
    # The cached value comes with every fetch response: no request is sent.
    try:
        part = TopicPartition(topic, partition)
        return consumer.get_watermark_offsets(part, cached=True)[1]
    except KafkaException:
        return None


def _bounded(function, timeout, name):
    """Run ``function`` in a daemon thread; True if it returned in time."""

    def call():
        try:
            function()
        except Exception:
            logger.warning("%s failed", name, exc_info=True)

    thread = threading.Thread(target=call, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def _names(partitions):
    return ", ".join(f"{part.topic}/{part.partition}" for part in partitions) or "none"
