"""
How one measurement point is taken, and what a run shares.

A point is: load clients connect and subscribe; the server settles; the
publisher publishes at a fixed rate through phases (a warm-up, then one or two
measured phases); clients wait for the last publication or a deadline and
report latency histograms; the driver turns these and the CPU samples into
figures. Servers of the same scenario run side by side and points are taken
server after server, so that drift on a noisy machine hits them all alike.
"""
import asyncio
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .baselines import topic_key
from .processes import (
    PYTHON,
    ROOT,
    Child,
    Sampler,
    Server,
    cores,
    cpu_seconds,
    free_port,
    pin,
    settle,
)
from .stats import Histogram

SERVERS = ("pure", "asgi", "channels", "vanilla")
PUBLISHER_MODE = {
    "pure": "redis",
    "asgi": "redis",
    "channels": "channels",
    "vanilla": "vanilla",
}
AIRPORTS = ("JFK", "LGA", "EWR")
#: The topic a freshly started server is probed on.
PROBE = ("bench_feed", {"name": "probe"})
#: Load clients that use more than this share of their cores invalidate a point.
CLIENT_SATURATION = 0.9
#: The listen backlog of every server (the README's daphne endpoint has it).
BACKLOG = 2048
#: Other processes that use more than this share of the server's core during
#: a phase are noted beside its figures: latency then suffers from them.
FOREIGN_LOAD = 0.15
#: Most connections one load client process holds.
PER_CLIENT_PROCESS = 500
#: Seconds the clients wait for late publications after the last one is sent.
DRAIN_SECONDS = 3.0


def feeds(label, count=1):
    """``count`` topics of their own for the point ``label`` (see bench.sources)."""
    if count == 1:
        return [("bench_feed", {"name": label})]
    return [("bench_feed", {"name": f"{label}-{index}"}) for index in range(count)]


def flights(label):
    """The three airports' departure topics of the point ``label``."""
    return [
        ("bench_departures", {"airport": airport, "point": label})
        for airport in AIRPORTS
    ]


def merge_counts(dicts):
    total = {}
    for counts in dicts:
        for key, count in counts.items():
            total[key] = total.get(key, 0) + count
    return total


@dataclass
class Point:
    """One measurement: who connects, what is published, and for how long."""

    scenario: str
    topics: list
    steady: int
    rate: float
    pad: int
    #: [(name, seconds)]; the first phase is the warm-up and is not reported.
    phases: list
    churn: int = 0
    churn_rate: float = 10.0
    stall: int = 0
    #: phase name -> command for the clients when it begins ("churn", "stall").
    actions: dict = field(default_factory=dict)
    #: "all": each publication goes to every topic; "rotate": to one in turn.
    spread: str = "all"
    pattern: str = "default"
    concurrency: int | None = 100

    @property
    def bounds(self):
        """The publication number ``n`` at which each phase begins, and the end."""
        bounds = [0]
        for _, seconds in self.phases:
            bounds.append(bounds[-1] + round(seconds * self.rate))
        return bounds

    def published(self, topic_index, phase):
        """How many publications ``topic_index`` gets in ``phase``."""
        low, high = self.bounds[phase], self.bounds[phase + 1]
        if self.spread != "rotate":
            return high - low
        count = len(self.topics)
        return sum(1 for n in range(low, high) if n % count == topic_index)

    def last_n(self):
        """Topic key -> the ``n`` of its last publication."""
        total = self.bounds[-1]
        if self.spread != "rotate":
            return {topic_key(*t): total - 1 for t in self.topics}
        count = len(self.topics)
        return {
            topic_key(*t): max(n for n in range(total) if n % count == i)
            for i, t in enumerate(self.topics)
        }


@dataclass
class Outcome:
    """What the processes of one point reported, before it becomes figures."""

    connected: dict
    failures: int
    errors: dict
    #: Phase index -> wall time of its first publication.
    starts: dict = field(default_factory=dict)
    #: When the last publication was sent, and when the clients had it all.
    ended: float = 0.0
    finished: float = 0.0
    lag: float = 0.0
    results: list = field(default_factory=list)


class Run:
    """Everything one invocation of the suite shares: ids, files, cores."""

    def __init__(self, quick, log_dir, redis_url, kafka_bootstrap):
        self.quick = quick
        self.id = f"vbench-{uuid.uuid4().hex[:8]}"
        self.log_dir = Path(log_dir)
        self.redis_url = redis_url
        self.kafka_bootstrap = kafka_bootstrap
        self.db = self.log_dir / "bench.sqlite3"
        self.server_cpus, self.load_cpus = cores()
        self.servers = []
        #: Name -> psutil.Process of the Redis (and Kafka) the run may watch.
        self.services = {}
        self.sampler = Sampler()
        self.progress = print
        #: Points that may still be taken again, and until when (monotonic).
        self.retakes = 0
        self.retake_until = 0.0

    def may_retake(self):
        """True (and one retake fewer) while the run has retakes and time left."""
        if self.retakes <= 0 or time.monotonic() > self.retake_until:
            return False
        self.retakes -= 1
        return True

    # --- environments ----------------------------------------------------------

    def base_env(self):
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("VANILLA_", "BENCH_", "DJANGO_SETTINGS_MODULE"))
        }
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(ROOT)
        return env

    def vanilla_env(self, prefix):
        """Vanilla's defaults, on keys and a database of the run's own."""
        return dict(
            self.base_env(),
            DJANGO_SETTINGS_MODULE="bench.vanilla_settings",
            VANILLA_REDIS_URL=self.redis_url,
            VANILLA_REDIS_PREFIX=prefix,
            VANILLA_DB_NAME=str(self.db),
            VANILLA_CELERY_QUEUE=f"{prefix}-tasks",
            VANILLA_KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap,
            VANILLA_DEBUG="0",
            VANILLA_SECRET_KEY=f"bench-{self.id}",
            VANILLA_SSL_REDIRECT="0",
            VANILLA_SECURE_COOKIES="0",
        )

    def baseline_env(self, prefix):
        return dict(
            self.base_env(),
            BENCH_PREFIX=prefix,
            BENCH_REDIS_URL=self.redis_url,
            DJANGO_SETTINGS_MODULE="bench.baselines.channels_settings",
        )

    # --- servers ---------------------------------------------------------------

    async def start_server(self, scenario, kind):
        prefix = f"{self.id}-{scenario}-{kind}"
        port = free_port()
        # Every server listens with the backlog the README's deploy command
        # gives daphne: with Twisted's default of 50, a storm of connects
        # overflows it and clients wait out SYN retries of up to 31 s.
        endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog={BACKLOG}"
        daphne = [PYTHON, "-m", "daphne", "-e", endpoint]
        # Vanilla runs as deployed: daphne with its lighter input queues.
        vanilla = [PYTHON, "-m", "pubsub.server", "-e", endpoint]
        if kind == "pure":
            argv = [
                PYTHON, "-m", "bench.baselines.pure",
                "--port", str(port), "--backlog", str(BACKLOG),
            ]
        elif kind == "asgi":
            argv = daphne + ["bench.baselines.asgi:application"]
        elif kind == "channels":
            argv = daphne + ["bench.baselines.channels_app:application"]
        else:
            argv = vanilla + ["vanilla_site.asgi:application"]
        if kind == "vanilla":
            env = self.vanilla_env(prefix)
        else:
            env = self.baseline_env(prefix)
        server = Server(f"{scenario}-{kind}", kind, argv, env, self.log_dir, port)
        server.prefix = prefix
        self.servers.append(server)
        await server.start(self.server_cpus)
        # One subscriber first: imports, pools and scripts load before we measure.
        await self.probe(server)
        return server

    async def start_servers(self, scenario, kinds=SERVERS):
        return await asyncio.gather(*(self.start_server(scenario, k) for k in kinds))

    def stop_servers(self, servers):
        for server in servers:
            server.stop()

    async def probe(self, server):
        client = self.client(server, "probe", {"steady": [[*PROBE, 1]]}, [0])
        await client.start()
        try:
            client.send(cmd="connect")
            ready = await client.expect("ready", 60)
            if ready["connected"] != 1:
                raise RuntimeError(
                    f"{server.name} refused a subscriber: {ready['errors']}\n"
                    f"{server.log_tail()}"
                )
        finally:
            await client.stop()

    # --- children --------------------------------------------------------------

    def client(self, server, name, connections, bounds, **plan):
        plan = {
            "host": "127.0.0.1",
            "port": server.port,
            "connections": connections,
            "bounds": bounds,
            **plan,
        }
        return Child(
            f"{server.name}-{name}",
            "bench.loadclient",
            plan,
            self.base_env(),
            self.load_cpus,
            self.log_dir,
        )

    def publisher(self, server, point):
        mode = getattr(server, "publisher_mode", None) or PUBLISHER_MODE[server.kind]
        plan = {
            "mode": mode,
            "topics": point.topics,
            "rate": point.rate,
            "pad": point.pad,
            "bounds": point.bounds,
            "spread": point.spread,
            "prefix": server.prefix,
            "redis_url": self.redis_url,
            "kafka": getattr(server, "kafka", None),
        }
        env = self.vanilla_env(server.prefix) if mode == "vanilla" else self.base_env()
        return Child(
            f"{server.name}-publisher",
            "bench.publisher",
            plan,
            env,
            self.load_cpus,
            self.log_dir,
        )

    def clients_for(self, server, point):
        """Load client processes for ``point``: steady ones, then churn, stall."""
        processes = max(1, min(4, math.ceil(point.steady / PER_CLIENT_PROCESS)))
        per_process = [{} for _ in range(processes)]
        for index in range(point.steady):
            counts = per_process[index % processes]
            topic = index % len(point.topics)
            counts[topic] = counts.get(topic, 0) + 1

        children = []
        for number, counts in enumerate(per_process):
            if counts:
                groups = [[*point.topics[t], c] for t, c in sorted(counts.items())]
                children.append(
                    self.client(
                        server,
                        f"clients{number}",
                        {"steady": groups},
                        point.bounds,
                        pattern=point.pattern,
                        concurrency=point.concurrency,
                    )
                )
        if point.churn:
            churn = {"churn": [[*point.topics[0], point.churn]]}
            children.append(
                self.client(
                    server, "churn", churn, point.bounds, concurrency=point.concurrency
                )
            )
        if point.stall:
            stall = {"stall": [[*point.topics[0], point.stall]]}
            children.append(
                self.client(server, "stall", stall, point.bounds, rcvbuf=4096)
            )
        return children

    # --- one point ---------------------------------------------------------------

    async def measure(self, server, point, helpers=()):
        """Take ``point`` on ``server``; returns the figures of each phase."""
        clients = self.clients_for(server, point)
        publisher = self.publisher(server, point)
        try:
            outcome = await self.connect(server, clients, publisher)
            self.track(server, helpers, clients, publisher)
            await self.publish(point, clients, publisher, outcome)
            await self.collect(point, clients, outcome)
        finally:
            await self.sampler.stop()
            groups = ("server", "clients", "publisher", "redis")
            for group in groups + tuple(h.kind for h in helpers):
                self.sampler.forget(group)
            publisher.send(cmd="exit")
            await asyncio.gather(*(c.stop() for c in clients), publisher.stop())
        await settle(server.process)
        return self.figures(point, server, outcome, [h.kind for h in helpers])

    async def connect(self, server, clients, publisher):
        """Start the children, open every connection, let the server settle."""
        await asyncio.gather(*(c.start() for c in clients), publisher.start())
        for client in clients:
            client.send(cmd="connect")
        readies = await asyncio.gather(*(c.expect("ready", 180) for c in clients))
        await publisher.expect("ready", 60)
        await settle(server.process)
        return Outcome(
            connected=merge_counts(r["steady"] for r in readies),
            failures=sum(r["failed"] for r in readies),
            errors=merge_counts(r["errors"] for r in readies),
        )

    def track(self, server, helpers, clients, publisher):
        sampler = self.sampler
        sampler.track("server", server.process)
        for helper in helpers:
            sampler.track(helper.kind, helper.process)
        for client in clients:
            sampler.track("clients", client.process)
        sampler.track("publisher", publisher.process)
        if "redis" in self.services:
            sampler.track("redis", self.services["redis"])
        sampler.start()

    async def publish(self, point, clients, publisher, outcome):
        """Run the publisher through its phases, acting on each phase's start."""
        publisher.send(cmd="start")
        timeout = max(60, point.bounds[-1] / point.rate * 3)
        while True:
            event = await asyncio.wait_for(publisher.events.get(), timeout)
            if event["event"] == "exit":
                raise RuntimeError(f"publisher exited: {publisher.log_tail()}")
            self.sampler.sample()
            if event["event"] == "end":
                outcome.ended, outcome.lag = event["t"], event["lag"]
                return
            outcome.starts[event["index"]] = event["t"]
            action = point.actions.get(point.phases[event["index"]][0])
            if action == "churn":
                for client in clients:
                    client.send(cmd="churn", rate=point.churn_rate)
            elif action == "calm":
                for client in clients:
                    client.send(cmd="calm")
            elif action == "stall":
                for client in clients:
                    client.send(cmd="stall")

    async def collect(self, point, clients, outcome):
        """Wait for the last publications (or the drain deadline); get results."""
        deadline = time.time() + DRAIN_SECONDS
        for client in clients:
            client.send(cmd="finish", last=point.last_n(), deadline=deadline)
        outcome.results = await asyncio.gather(
            *(c.expect("result", DRAIN_SECONDS + 30) for c in clients)
        )
        outcome.finished = self.sampler.sample().time

    def figures(self, point, server, outcome, helpers):
        """The point's summary, with the figures of each measured phase."""
        # A phase named more than once (calm, churn, calm, churn, ...) is
        # measured as one: its spans alternate with the other's, so that
        # drift on the machine hits both alike.
        spans = {}
        for index in range(1, len(point.phases)):
            spans.setdefault(point.phases[index][0], []).append(index)
        phases = [
            self.phase_figures(point, outcome, name, indices, helpers)
            for name, indices in spans.items()
        ]
        cycles = Histogram()
        for result in outcome.results:
            cycles.merge(Histogram.from_json(result["cycles"]))
        results = outcome.results
        return {
            "server": server.kind,
            "clients": point.steady,
            "rate": point.rate,
            "connected": sum(outcome.connected.values()),
            "failures": outcome.failures,
            "errors": outcome.errors,
            "lost": sum(r["lost"] for r in results),
            "close_codes": sorted({c for r in results for c in r["close_codes"]}),
            "cycles": cycles,
            "cycle_errors": sum(r["cycle_errors"] for r in results),
            "phases": phases,
        }

    def phase_figures(self, point, outcome, name, indices, helpers):
        """
        One measured phase, over its spans ``indices``. A span lasts from its
        first publication to the next span's; its deliveries are those of its
        publications, whenever they arrived. CPU is counted over the same
        span, except that the last one runs on until the clients have their
        last publication (or the drain deadline), so that work a server does
        late still counts against the deliveries it makes late.
        """
        sampler = self.sampler
        latency, published = Histogram(), Histogram()
        offered = 0
        for index in indices:
            for result in outcome.results:
                latency.merge(Histogram.from_json(result["latency"][index]))
                published.merge(Histogram.from_json(result["published"][index]))
            offered += sum(
                point.published(i, index) * outcome.connected.get(topic_key(*topic), 0)
                for i, topic in enumerate(point.topics)
            )
        windows = [
            (
                outcome.starts[index],
                outcome.starts.get(index + 1, outcome.ended),
                outcome.starts.get(index + 1, outcome.finished),
            )
            for index in indices
        ]
        duration = sum(end - start for start, end, _ in windows)
        cpu_span = sum(cpu_end - start for start, _, cpu_end in windows)

        def share(group, ends=2):
            return sum(
                sampler.cpu_seconds(group, window[0], window[ends])
                for window in windows
            )

        def core(cpus):
            busy = [
                sampler.core_busy(cpus, start, cpu_end)
                for start, _, cpu_end in windows
            ]
            if None in busy:
                return None
            spans = [cpu_end - start for start, _, cpu_end in windows]
            return sum(b * s for b, s in zip(busy, spans)) / cpu_span

        server_cpu = share("server")
        rss = [
            s.rss.get("server", 0)
            for start, _, cpu_end in windows
            for s in sampler.between(start, cpu_end)
        ]
        figures = {
            "phase": name,
            "spans": len(indices),
            "duration": duration,
            "offered": offered,
            "delivered": latency.count,
            "p50": latency.percentile(0.50),
            "p99": latency.percentile(0.99),
            "max": latency.max if latency.count else None,
            "server_cpu": server_cpu / cpu_span,
            "us_per_delivery": server_cpu / latency.count * 1e6
            if latency.count else None,
            "client_cpu": share("clients") / cpu_span,
            "publisher_cpu": share("publisher", ends=1) / duration,
            "redis_cpu": share("redis") / cpu_span
            if "redis" in self.services else None,
            "server_core": core(self.server_cpus),
            "load_cores": core(self.load_cpus),
            "rss_start": rss[0] if rss else None,
            "rss_end": rss[-1] if rss else None,
            "rss_series": rss,
            "publisher_lag": outcome.lag,
        }
        if published.count:
            figures["publish_p50"] = published.percentile(0.50)
            figures["publish_p99"] = published.percentile(0.99)
        # Helpers (the topology runner) share the server's core: they are part
        # of the system measured, not others taking it.
        figures["helper_cpu"] = 0.0
        for kind in helpers:
            helper_cpu = share(kind)
            figures[f"{kind}_cpu"] = helper_cpu / cpu_span
            figures["helper_cpu"] += helper_cpu / cpu_span
        figures.update(self.validity(figures))
        return figures

    def validity(self, figures):
        """
        Whether the load clients kept up (else the point is invalid), and how
        much of the server's core other processes took (a note).
        """
        saturated = figures["client_cpu"] >= CLIENT_SATURATION * len(self.load_cpus)
        foreign = None
        if figures["server_core"] is not None and len(self.server_cpus) == 1:
            ours = figures["server_cpu"] + figures["helper_cpu"]
            foreign = max(0.0, figures["server_core"] - ours)
        return {"valid": not saturated, "foreign_load": foreign}

    # --- idle connections --------------------------------------------------------

    async def connect_storm(self, server, count, topic):
        """``count`` subscribers at once; then the server's memory per socket."""
        processes = max(1, min(4, math.ceil(count / PER_CLIENT_PROCESS)))
        share, extra = divmod(count, processes)
        shares = [share + (n < extra) for n in range(processes)]
        clients = [
            self.client(
                server, f"idle{n}", {"steady": [[*topic, share]]}, [0], concurrency=None
            )
            for n, share in enumerate(shares)
        ]
        await settle(server.process)
        before = server.process.memory_info().rss
        cpu_before = cpu_seconds(server.process)
        try:
            await asyncio.gather(*(c.start() for c in clients))
            await asyncio.sleep(0.5)
            began = time.monotonic()
            for client in clients:
                client.send(cmd="connect")
            readies = await asyncio.gather(*(c.expect("ready", 180) for c in clients))
            seconds = time.monotonic() - began
            await settle(server.process)
            await asyncio.sleep(1.0)
            after = server.process.memory_info().rss
            cpu = cpu_seconds(server.process) - cpu_before
        finally:
            await asyncio.gather(*(c.stop() for c in clients))
        await settle(server.process)

        connected = sum(r["connected"] for r in readies)
        return {
            "server": server.kind,
            "attempted": count,
            "connected": connected,
            "errors": merge_counts(r["errors"] for r in readies),
            "seconds": seconds,
            "rss_before": before,
            "rss_after": after,
            "per_connection": (after - before) / connected if connected else None,
            "server_cpu_ms_per_connection": cpu / connected * 1000
            if connected else None,
        }


def pin_self(run):
    pin(os.getpid(), run.load_cpus)
