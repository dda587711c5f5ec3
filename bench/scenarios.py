"""
The six scenarios of the suite, each a coroutine taking the run and its
settings (``FULL`` or ``QUICK``) and returning its points.
"""
import asyncio
import math
import subprocess
import time
from dataclasses import dataclass

from . import kafka
from .processes import PYTHON, ROOT, Server
from .suite import Point, feeds, flights

#: Bytes of filler in a publication's data; its frame is about 310 bytes.
PAD = 200
#: Bytes a frame has besides its filler (op, id, seq, source, params, time).
FRAME_OVERHEAD = 110
#: A point during which other processes took more of the server's core than
#: this is taken again (see ``attempt``).
RETAKE_LOAD = 0.25


@dataclass(frozen=True)
class Settings:
    """How long and how hard each scenario runs (``FULL`` or ``QUICK``)."""

    #: 1. Clients at ``sweep_rate``, then ``target_clients`` at ``target_rate``.
    sweep: tuple
    sweep_rate: float
    target_clients: int
    target_rate: float
    #: Seconds of warm-up and of measurement of every delivery point.
    warmup: float
    measure: float
    #: 2. Clients spread over ``many_topics`` topics, each at ``many_rate``.
    many_clients: int
    many_topics: int
    many_rate: float
    #: 3. Records a second, spread over three topics, and clients.
    kafka_rates: tuple
    kafka_clients: int
    kafka_warmup: float
    kafka_measure: float
    #: 4. Connections opened at once.
    idle: int
    #: 5. Steady clients and their rate; churning connections and their
    #: subscribe/unsubscribe cycles a second each; seconds of each calm and
    #: each churn span, and how many of each, alternating.
    churn_steady: int
    churn_rate: float
    churn_connections: int
    churn_cycles: float
    churn_phase: float
    churn_rounds: int
    #: 6. Steady clients, their rate and filler; seconds before and after
    #: the extra subscriber stops reading.
    stall_steady: int
    stall_rate: float
    stall_pad: int
    stall_calm: float
    stall_phase: float
    #: Points that may be taken again when others disturbed them, and for how
    #: many seconds after the start of the run, so that the run stays bounded.
    retakes: int
    retake_window: float

    @property
    def churn_total(self):
        """Subscribe/unsubscribe cycles a second over all churning connections."""
        return self.churn_connections * self.churn_cycles

    @property
    def stall_bytes(self):
        """What the stopped reader is sent over its phase, in bytes."""
        frame = self.stall_pad + FRAME_OVERHEAD
        return self.stall_rate * self.stall_phase * frame


FULL = Settings(
    sweep=(1, 100, 500, 1000, 2000),
    sweep_rate=10,
    target_clients=1000,
    target_rate=20,
    warmup=2,
    measure=6,
    many_clients=600,
    many_topics=6,
    many_rate=10,
    kafka_rates=(100, 1000),
    kafka_clients=100,
    kafka_warmup=3,
    kafka_measure=8,
    idle=2000,
    churn_steady=200,
    churn_rate=10,
    churn_connections=20,
    churn_cycles=10,
    churn_phase=4,
    churn_rounds=3,
    stall_steady=10,
    stall_rate=200,
    stall_pad=2048,
    stall_calm=4,
    stall_phase=20,
    retakes=6,
    retake_window=8 * 60,
)

# Fewer and shorter points: a check that everything works, whose verdicts
# are indicative only. Its sweep runs at the target rate, so that the
# 1000-client point serves every target of scenario 1.
QUICK = Settings(
    sweep=(100, 1000),
    sweep_rate=20,
    target_clients=1000,
    target_rate=20,
    warmup=1,
    measure=3,
    many_clients=300,
    many_topics=6,
    many_rate=10,
    kafka_rates=(1000,),
    kafka_clients=100,
    kafka_warmup=2,
    kafka_measure=3,
    idle=500,
    churn_steady=100,
    churn_rate=10,
    churn_connections=20,
    churn_cycles=10,
    churn_phase=2,
    churn_rounds=1,
    stall_steady=10,
    stall_rate=200,
    stall_pad=2048,
    stall_calm=1.5,
    stall_phase=5,
    retakes=0,
    retake_window=0,
)


async def attempt(run, server, point, helpers=()):
    """
    One point; a failure becomes a row that says so, not a dead run. A point
    during which other processes took much of the server's core is taken
    again while the run has retakes left, and the less disturbed one is kept.
    """
    result = await measure_once(run, server, point, helpers)
    load = foreign_load(result)
    if load > RETAKE_LOAD and run.may_retake():
        run.progress(f"    others took {load:.0%} of the server core: taking it again")
        again = await measure_once(run, server, point, helpers)
        if foreign_load(again) < load:
            result = again
    return result


async def measure_once(run, server, point, helpers):
    label = f"{point.scenario} {server.kind} {point.steady}@{point.rate:g}/s"
    began = time.monotonic()
    try:
        if not server.alive():
            raise RuntimeError(f"{server.name} is not running")
        result = await run.measure(server, point, helpers)
    except Exception as exc:
        run.progress(f"  {label}: failed: {exc!r}"[:400])
        return {
            "server": server.kind,
            "clients": point.steady,
            "rate": point.rate,
            "error": f"{type(exc).__name__}: {exc}"[:160],
        }
    phase = result["phases"][-1]
    run.progress(
        f"  {label}: delivered {phase['delivered']}/{phase['offered']}, "
        f"p50 {_ms(phase['p50'])} p99 {_ms(phase['p99'])} ms, "
        f"{_num(phase['us_per_delivery'])} µs/delivery, "
        f"server {phase['server_cpu']:.0%} clients {phase['client_cpu']:.0%} "
        f"others {foreign_load(result):.0%} [{time.monotonic() - began:.1f} s]"
    )
    return result


def foreign_load(result):
    """The most of the server's core other processes took in a measured phase."""
    if "error" in result:
        return math.inf
    return max((phase["foreign_load"] or 0.0) for phase in result["phases"])


def _ms(value):
    return "–" if value is None else f"{value * 1000:.1f}"


def _num(value):
    return "–" if value is None else f"{value:.0f}"


async def on_each_server(run, scenario, points):
    """
    Start the four servers side by side, then take each point on each of
    them in turn, so that drift on a shared machine hits them alike.
    """
    servers = await run.start_servers(scenario)
    try:
        return [
            await attempt(run, server, point) for point in points for server in servers
        ]
    finally:
        run.stop_servers(servers)


def delivery_phases(settings):
    return [("warmup", settings.warmup), ("steady", settings.measure)]


async def one_source(run, settings):
    """1. One topic, N clients, at a fixed rate; then the 1000 x 20/s target."""
    plan = [(n, settings.sweep_rate) for n in settings.sweep]
    target = (settings.target_clients, settings.target_rate)
    if target not in plan:
        plan.append(target)
    points = [
        Point("s1", feeds(f"s1-{index}"), clients, rate, PAD, delivery_phases(settings))
        for index, (clients, rate) in enumerate(plan)
    ]
    return await on_each_server(run, "s1", points)


async def many_sources(run, settings):
    """2. Several topics with the clients spread evenly over them."""
    point = Point(
        "s2", feeds("s2", settings.many_topics), settings.many_clients,
        settings.many_rate, PAD, delivery_phases(settings),
    )
    return await on_each_server(run, "s2", [point])


async def kafka_to_websocket(run, settings):
    """3. A producer stamps departures; a topology publishes them; clients measure."""
    kafka_topic = f"{run.id}-flights"
    name = group = f"{run.id}-departures"
    await asyncio.to_thread(kafka.create_topic, run.kafka_bootstrap, kafka_topic)
    started = []
    points = []
    try:
        server = await run.start_server("s3", "vanilla")
        started.append(server)
        env = run.vanilla_env(server.prefix)
        await asyncio.to_thread(
            subprocess.run,
            [PYTHON, "-m", "bench.kafka", name, kafka_topic, group],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
        )
        runner = Server(
            "s3-runner", "runner",
            [PYTHON, "manage.py", "run_topologies", "--only", name],
            env, run.log_dir,
        )
        run.servers.append(runner)
        started.append(runner)
        await runner.start(run.server_cpus)
        await kafka.wait_for_consumer(run.kafka_bootstrap, group)
        server.publisher_mode = "kafka"
        server.kafka = {"bootstrap": run.kafka_bootstrap, "topic": kafka_topic}
        for index, rate in enumerate(settings.kafka_rates):
            point = Point(
                "s3", flights(f"s3-{index}"), settings.kafka_clients, rate, 0,
                [("warmup", settings.kafka_warmup), ("steady", settings.kafka_measure)],
                spread="rotate", pattern="kafka",
            )
            points.append(await attempt(run, server, point, helpers=[runner]))
    finally:
        run.stop_servers(reversed(started))
        await asyncio.to_thread(kafka.delete_topic, run.kafka_bootstrap, kafka_topic)
    return points


async def idle_connections(run, settings):
    """4. ``idle`` subscribers connect at once; memory per connection."""
    servers = await run.start_servers("s4")
    points = []
    try:
        for server in servers:
            try:
                point = await run.connect_storm(server, settings.idle, feeds("s4")[0])
            except Exception as exc:
                point = {"server": server.kind, "error": f"{type(exc).__name__}: {exc}"}
            run.progress(
                f"  s4 {server.kind}: "
                + (point.get("error") or
                   f"{point['connected']}/{point['attempted']} connected in "
                   f"{point['seconds']:.1f} s, "
                   f"{(point['per_connection'] or 0) / 1024:.1f} KB per connection")
            )
            points.append(point)
    finally:
        run.stop_servers(servers)
    return points


async def churn(run, settings):
    """
    5. Subscribe/unsubscribe cycles on the topic of steady clients, in spans
    that alternate with calm ones; each phase is measured over all its spans.
    """
    point = Point(
        "s5", feeds("s5"), settings.churn_steady, settings.churn_rate, PAD,
        [("warmup", settings.warmup)]
        + [("calm", settings.churn_phase), ("churn", settings.churn_phase)]
        * settings.churn_rounds,
        churn=settings.churn_connections,
        churn_rate=settings.churn_cycles,
        actions={"calm": "calm", "churn": "churn"},
    )
    return await on_each_server(run, "s5", [point])


async def stalled_reader(run, settings):
    """6. One subscriber stops reading (4 KiB receive buffer) beside steady ones."""
    point = Point(
        "s6", feeds("s6"), settings.stall_steady, settings.stall_rate,
        settings.stall_pad,
        [("warmup", settings.warmup), ("calm", settings.stall_calm),
         ("stalled", settings.stall_phase)],
        stall=1,
        actions={"stalled": "stall"},
    )
    return await on_each_server(run, "s6", [point])


SCENARIOS = {
    "1": ("one source, N clients", one_source),
    "2": ("many sources", many_sources),
    "4": ("idle connections", idle_connections),
    "5": ("churn", churn),
    "6": ("stalled reader", stalled_reader),
    # Last: it needs Kafka.
    "3": ("Kafka to websocket", kafka_to_websocket),
}
