"""
The Markdown document of one run: the machine, the issue's targets met or
missed, then one section per scenario saying what was done and its table.
"""
from . import report, targets
from .scenarios import FRAME_OVERHEAD, PAD, SCENARIOS


def render(settings, results, machine, mode):
    """The whole document for ``results`` (scenario number -> points)."""
    started = machine["started"]
    lines = [f"# Vanilla benchmark, {started:%Y-%m-%d %H:%M} UTC ({mode})", ""]
    lines += ["## Machine", "", *machine_lines(machine), ""]
    rows = target_rows(settings, results)
    header = ["target", "measured", "verdict"]
    lines += ["## Targets", "", report.table(header, rows), ""]
    for number in ("1", "2", "3", "4", "5", "6"):
        if number in results:
            lines += [section(number, settings, results[number]), ""]
    return "\n".join(lines)


def machine_lines(machine):
    pinned = ", ".join(machine["pinned_services"]) or "nothing else"
    return [
        f"- {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gb']:.0f} GB RAM; {machine['kernel']}; "
        f"Python {machine['python']}; Redis {machine['redis']}",
        f"- {machine['packages']}",
        f"- servers (and scenario 3's topology runner) pinned to core "
        f"{machine['server_cpus']}; load clients, publisher, driver and "
        f"{pinned} (every thread) to core {machine['load_cpus']}",
        f"- load average at start {machine['load_start']}, "
        f"at end {machine['load_end']}",
        f"- commit {machine['commit']}"
        f"{' with local changes' if machine['dirty'] else ''}; "
        f"run {machine['run']}, {machine['seconds'] / 60:.1f} minutes",
    ]


def target_rows(settings, results):
    def points(number):
        value = results.get(number)
        return value if isinstance(value, list) else []

    rows = []
    if "1" in results:
        one = points("1")
        for rate in sorted({settings.sweep_rate, settings.target_rate}):
            rows.append(targets.cpu_versus_pure(one, settings.target_clients, rate))
        rows.append(targets.flat_cpu(one, settings.sweep, settings.sweep_rate))
        rows.append(
            targets.full_delivery(one, settings.target_clients, settings.target_rate)
        )
    if "3" in results:
        rows.append(
            targets.kafka_latency(
                points("3"), max(settings.kafka_rates), settings.kafka_clients
            )
        )
    if "4" in results:
        rows.append(targets.connect_storm(points("4"), settings.idle))
        rows.append(targets.idle_memory(points("4")))
    if "5" in results:
        rows.append(targets.churn_isolation(points("5"), settings.churn_total))
    if "6" in results:
        rows.append(targets.stall_isolation(points("6"), settings.stall_bytes))
    return [list(row) for row in rows]


def section(number, settings, value):
    if isinstance(value, dict):
        title = SCENARIOS[number][0]
        return f"## {number}. {title}\n\nfailed: {value['error']}"
    return SECTIONS[number](settings, value)


# --- one function per scenario ------------------------------------------------


def one_source(settings, points):
    return report.delivery_section(
        "1. One source, N clients",
        f"One topic; publications of about {PAD + FRAME_OVERHEAD} bytes at "
        f"{settings.sweep_rate:g}/s to {', '.join(map(str, settings.sweep))} "
        f"clients, then {settings.target_clients} clients at "
        f"{settings.target_rate:g}/s; {settings.measure:g} s measured after "
        f"{settings.warmup:g} s of warm-up. Latency runs from the publisher's "
        "timestamp to the client's read. CPU per delivery is the server "
        "process's CPU time over the phase (until the clients had the last "
        "publication) divided by the deliveries. Ratios are to the same row of "
        "the pure-Python (CPU) and plain-ASGI (p99) baselines.",
        points,
    )


def many_sources(settings, points):
    return report.delivery_section(
        "2. Many sources",
        f"{settings.many_topics} topics, {settings.many_clients} clients spread "
        f"evenly over them, each topic at {settings.many_rate:g}/s; publications "
        f"as in 1.",
        points,
    )


def kafka_to_websocket(settings, points):
    return report.kafka_section(
        points,
        "A producer stamps departure records "
        f"({', '.join(map(str, settings.kafka_rates))} records/s, one airport in "
        "turn among JFK, LGA, EWR) into a Kafka topic of the run; an always-on "
        "topology, run by `manage.py run_topologies`, publishes each to the "
        "`bench_departures` topic of its airport; "
        f"{settings.kafka_clients} clients are spread over the three airports, so "
        "each record reaches a third of them. Latency runs from the producer's "
        "stamp; publish→client is the part after the runner published. Only "
        "Vanilla runs this scenario. The runner runs on the server core, beside "
        "daphne.",
    )


def idle_connections(settings, points):
    return report.idle_section(
        points,
        f"{settings.idle} clients connect and subscribe at once (no limit on "
        "concurrent connects), then sit idle. Memory per connection is the growth "
        "of the server's RSS, once it is idle again, divided by the connections.",
    )


def churn(settings, points):
    def cycles(point, phase):
        if phase["phase"] != "churn":
            return "–"
        achieved = point["cycles"].count / phase["duration"]
        errors = point["cycle_errors"]
        return (
            f"{achieved:.0f}/s, p99 {report.ms(point['cycles'].percentile(0.99))} ms"
            + (f", {errors} errors" if errors else "")
        )

    rounds = settings.churn_rounds
    text = (
        f"{settings.churn_steady} steady clients at {settings.churn_rate:g}/s, "
        f"{settings.churn_phase:g} s calm, then {settings.churn_phase:g} s of churn"
        + (f", {rounds} times over" if rounds > 1 else "")
        + f": {settings.churn_connections} other connections each subscribe to the "
        f"same topic and unsubscribe {settings.churn_cycles:g} times a second "
        f"({settings.churn_total:g} cycles/s in all), waiting for each reply."
    )
    if rounds > 1:
        text += " Each phase's figures are over all its spans."
    return report.two_phase_section(
        "5. Subscribe/unsubscribe churn",
        text,
        points,
        [("churn cycles", cycles)],
    )


def stalled_reader(settings, points):
    def growth(point, phase):
        series = phase["rss_series"]
        if phase["phase"] != "stalled" or len(series) < 2:
            return "–"
        half = series[len(series) // 2 :]
        return (
            f"+{report.mb(series[-1] - series[0])} "
            f"(second half +{report.mb(half[-1] - half[0])})"
        )

    frame = settings.stall_pad + FRAME_OVERHEAD
    return report.two_phase_section(
        "6. A reader that stops",
        f"{settings.stall_steady} steady clients at {settings.stall_rate:g}/s with "
        f"{frame / 1024:.1f} KB publications, {settings.stall_calm:g} s calm; then "
        f"for {settings.stall_phase:g} s one more subscriber (4 KiB receive "
        "buffer) stops reading, so the server has "
        f"{report.mb(settings.stall_bytes)} it cannot send. A server that buffers "
        "without bound grows by as much; a bounded one stops growing.",
        points,
        [("server RSS growth", growth)],
    )


SECTIONS = {
    "1": one_source,
    "2": many_sources,
    "3": kafka_to_websocket,
    "4": idle_connections,
    "5": churn,
    "6": stalled_reader,
}
