"""
Topologies at run time: Kafka topics feeding stream sources.

``TopologyRunner`` runs many topologies in one process (``run_topologies``).
About once a second it reads the ``Topology`` table and the topics Redis says
are watched, starts a ``TopologyWorker`` (``datasources.topology_worker``) for
each topology that should run, stops the others, and writes every worker's
``TopologyStatus``. An admin's start or stop therefore takes effect within
about a second, without a restart. An on-demand topology consumes only while a
topic of its source is in the states hash (``pubsub.connection.Keys.states``);
otherwise its worker leaves the consumer group and reports "idle".

Delivery is at least once. A record's offset is committed only after every
publication routed from it is in Redis, or after a poison record's dead
letter is in Kafka (see ``datasources.records``). Records that a runner
published but had not committed when it died are published again by the next
owner of their partitions; subscribers may see them twice.

Where a partition starts: a consumer group always resumes from its committed
offset. ``start_from`` only decides for a partition without one: ``earliest``
reads every retained record, ``latest`` only those produced from now on, and
``committed`` reads nothing there and reports an error
(``auto.offset.reset=error``). So an on-demand topology that is watched again
first catches up with what was produced while nobody watched.
"""
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import redis
from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections
from django.utils import timezone

from pubsub.connection import Keys, sync_client
from pubsub.exceptions import SourceDoesNotExist
from pubsub.protocol import SourceState
from pubsub.publishing import set_state

from .models import Topology, TopologyStatus
from .records import RecordMapping
from .registry import registry as default_registry
from .topology_worker import TopologyWorker

logger = logging.getLogger(__name__)

#: Seconds between two looks at the database and at Redis.
TICK = 1.0
#: Seconds the runner takes at most to stop, broker or no broker.
SHUTDOWN_TIMEOUT = 8.0
#: Status rows of runners gone for longer than this are deleted at start.
STATUS_RETENTION = timedelta(hours=1)


@dataclass(frozen=True)
class TopologyConfig:
    """What a worker needs of a ``Topology`` row; a change restarts it."""

    pk: int
    name: str
    topics: tuple
    group_id: str
    source: str
    start_from: str
    mode: str
    dead_letter_topic: str
    max_record_bytes: int
    params_map: tuple = ()
    payload_fields: tuple = ()

    @classmethod
    def of(cls, topology):
        return cls(
            pk=topology.pk,
            name=topology.name,
            topics=tuple(topology.topic_names),
            group_id=topology.group_id or topology.default_group_id(),
            source=topology.source,
            start_from=topology.start_from,
            mode=topology.mode,
            dead_letter_topic=topology.dead_letter_topic,
            max_record_bytes=topology.max_record_bytes,
            params_map=tuple(sorted((topology.params_map or {}).items())),
            payload_fields=tuple(topology.payload_fields or ()),
        )

    @property
    def mapping(self):
        """The topology's RecordMapping, or None to let the source route."""
        if not self.params_map:
            return None
        return RecordMapping(self.params_map, self.payload_fields)

    @property
    def always_on(self):
        return self.mode == Topology.Mode.ALWAYS_ON


class TopologyRunner:
    """
    Runs every topology whose desired state is "running" (or only those named)
    in this process, and follows the table and the watched topics each tick.
    """

    def __init__(
        self, runner_id=None, only=(), consumer_options=None, registry=None, tick=TICK
    ):
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}"
        self.only = set(only)
        self.registry = registry or default_registry
        self.tick_interval = tick
        self.kafka_config = {
            "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
            **(consumer_options or {}),
        }
        self.workers = {}
        self.retiring = []
        self.unrunnable = {}
        self.watched = {}
        self.unfed = set()
        self.stopping = threading.Event()

    def run(self):
        """Run until SIGINT or SIGTERM (main thread only)."""
        with capture_signals(self.stop):
            self.serve()

    def serve(self):
        """Run until ``stop()`` is called; usable from any thread."""
        logger.info(
            "runner %s: running topologies from %s",
            self.runner_id,
            self.kafka_config["bootstrap.servers"],
        )
        self._guard(self.forget_old_statuses)
        while True:
            self.tick()
            if self.stopping.wait(self.tick_interval):
                break
        self.shutdown()

    def stop(self, *args):
        self.stopping.set()

    def tick(self):
        # Start, stop and restart workers to match the table.
        close_old_connections()
        self._guard(self.reconcile)
        # On-demand topologies consume while a topic of their source is watched.
        self._guard(self.follow_watchers)
        # Report to the admin and to subscribers.
        self._guard(self.write_statuses)
        self._guard(self.tell_subscribers)

    # --- the table ------------------------------------------------------------

    def reconcile(self):
        running = Topology.DesiredState.RUNNING
        # Sources whose every topology an admin stopped, whatever ``only`` says:
        # their subscribers are told (``tell_subscribers``).
        desired = set(Topology.objects.values_list("source", "desired_state"))
        fed = {source for source, state in desired if state == running}
        self.unfed = {source for source, _ in desired} - fed
        wanted = Topology.objects.filter(desired_state=running)
        if self.only:
            wanted = wanted.filter(name__in=self.only)
        configs = {row.name: TopologyConfig.of(row) for row in wanted}
        for name, worker in list(self.workers.items()):
            if configs.get(name) != worker.config:
                self._retire(name, "changed" if name in configs else "stopped")
        self.unrunnable = {
            name: problem
            for name, problem in self.unrunnable.items()
            if configs.get(name) == problem[0]
        }
        for name, config in configs.items():
            if name not in self.workers and name not in self.unrunnable:
                self._start(config)

    def _start(self, config):
        try:
            source = self.registry.get(config.source)
        except SourceDoesNotExist as exc:
            self._unrunnable(config, str(exc))
            return
        if not hasattr(source, "route"):
            self._unrunnable(config, f"{config.source!r} is not a stream source")
            return
        worker = TopologyWorker(config, source, self.kafka_config, self.runner_id)
        worker.want(config.always_on or config.source in self.watched.values())
        worker.start()
        self.workers[config.name] = worker

    def _unrunnable(self, config, problem):
        logger.error(
            "runner %s: cannot run topology %s: %s",
            self.runner_id,
            config.name,
            problem,
        )
        self.unrunnable[config.name] = (config, problem)

    def _retire(self, name, why):
        logger.info("runner %s: stopping topology %s (%s)", self.runner_id, name, why)
        worker = self.workers.pop(name)
        worker.stop()
        self.retiring.append(worker)

    # --- watchers ---------------------------------------------------------------

    def follow_watchers(self):
        self.watched = self._watched_topics()
        sources = set(self.watched.values())
        for worker in self.workers.values():
            worker.want(worker.config.always_on or worker.config.source in sources)

    def _watched_topics(self):
        """topic key -> source name, for every topic whose source runs."""
        keys = Keys()
        with sync_client().pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.states)
            pipe.hgetall(keys.topics)
            states, topics = pipe.execute()
        watched = {}
        for key in states:
            info = topics.get(key)
            watched[key] = json.loads(info)["source"] if info else key.split(".")[0]
        return watched

    def tell_subscribers(self):
        """Watched topics hear when their topology fails and when it recovers."""
        # set_state() tells subscribers of a change only, once.
        for key, source in self.watched.items():
            if source in self.unfed:
                set_state(
                    key,
                    SourceState.STOPPED,
                    f"every topology that feeds {source} is stopped",
                )
        for worker in self.workers.values():
            status = worker.status
            keys = [
                key
                for key, source in self.watched.items()
                if source == worker.config.source
            ]
            for key in keys:
                if status["state"] == TopologyStatus.State.ERROR:
                    set_state(key, SourceState.ERROR, status["last_error"])
                elif status["state"] == TopologyStatus.State.RUNNING:
                    for was in (SourceState.ERROR, SourceState.STOPPED):
                        set_state(key, SourceState.LIVE, only_if=was)

    # --- status ---------------------------------------------------------------

    def write_statuses(self):
        now = timezone.now()
        for worker in self.workers.values():
            self._write_status(worker.config, dict(worker.status, heartbeat=now))
        # A restarted topology's new worker owns the row already.
        for worker in self.retiring:
            if worker.config.name not in self.workers:
                self._write_status(worker.config, dict(worker.status, heartbeat=now))
        self.retiring = [worker for worker in self.retiring if not worker.finished]
        for config, problem in self.unrunnable.values():
            self._write_status(
                config,
                {
                    "state": TopologyStatus.State.ERROR,
                    "last_error": problem,
                    "heartbeat": now,
                },
            )

    def _write_status(self, config, fields):
        try:
            TopologyStatus.objects.update_or_create(
                topology_id=config.pk, runner_id=self.runner_id, defaults=fields
            )
        except IntegrityError:
            # The topology was deleted meanwhile; its worker is stopping.
            pass

    def forget_old_statuses(self):
        cutoff = timezone.now() - STATUS_RETENTION
        TopologyStatus.objects.filter(heartbeat__lt=cutoff).delete()

    # --- shutdown ---------------------------------------------------------------

    def shutdown(self):
        """Stop every worker, wait SHUTDOWN_TIMEOUT at most, report them stopped."""
        workers = list(self.workers.values()) + self.retiring
        logger.info("runner %s: stopping %d topologies", self.runner_id, len(workers))
        for worker in workers:
            worker.stop()

        # Wait for them together, against one deadline.
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        for worker in workers:
            worker.join(max(deadline - time.monotonic(), 0))
        stragglers = [worker.config.name for worker in workers if not worker.finished]
        if stragglers:
            logger.warning(
                "runner %s: %d topologies did not stop in %s s: %s",
                self.runner_id,
                len(stragglers),
                SHUTDOWN_TIMEOUT,
                ", ".join(stragglers),
            )

        # Whatever did not finish is abandoned: it is stopped all the same.
        self.workers, self.retiring = {}, []
        self._guard(lambda: self._write_final_statuses(workers))
        logger.info(
            "runner %s: stopped; %d records published, %d poison",
            self.runner_id,
            sum(worker.counts["records"] for worker in workers),
            sum(worker.counts["poison"] for worker in workers),
        )

    def _write_final_statuses(self, workers):
        now = timezone.now()
        stopped = TopologyStatus.State.STOPPED
        for worker in workers:
            fields = dict(worker.status, state=stopped, heartbeat=now)
            self._write_status(worker.config, fields)

    def _guard(self, step):
        """Run one step of a tick; a database or Redis hiccup waits for the next."""
        try:
            step()
        except (DatabaseError, redis.RedisError) as exc:
            logger.warning(
                "runner %s: %s failed: %s", self.runner_id, step.__name__, exc
            )
        except Exception:
            logger.error(
                "runner %s: %s failed", self.runner_id, step.__name__, exc_info=True
            )


@contextlib.contextmanager
def capture_signals(handler, signums=(signal.SIGINT, signal.SIGTERM), log=logger):
    """
    Call ``handler()`` on these signals inside the block, saying so in
    ``log``; restore the previous handlers after.
    """

    def on_signal(signum, frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        handler()

    previous = {signum: signal.signal(signum, on_signal) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
