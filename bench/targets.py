"""
The issue's targets, checked against one run's points. Each check returns
(target, what was measured, verdict); the verdict is "met", "missed", or
"not measured" when a point it needs failed or was invalid.
"""
MET, MISSED, UNMEASURED = "met", "**missed**", "not measured"


def _phase(points, server, clients=None, rate=None, name=None):
    for point in points:
        if point.get("server") != server or "error" in point:
            continue
        if clients is not None and point["clients"] != clients:
            continue
        if rate is not None and point["rate"] != rate:
            continue
        phases = point["phases"]
        if name is None:
            return phases[-1]
        for phase in phases:
            if phase["phase"] == name:
                return phase
    return None


def _verdict(ok):
    return MET if ok else MISSED


def cpu_versus_pure(points, clients, rate):
    target = (
        f"server CPU per delivery at {clients} clients ({rate:g}/s) ≤ 2× pure Python"
    )
    vanilla = _phase(points, "vanilla", clients, rate)
    pure = _phase(points, "pure", clients, rate)
    if not (vanilla and pure and vanilla["us_per_delivery"]
            and pure["us_per_delivery"]):
        return target, "–", UNMEASURED
    if not (vanilla["valid"] and pure["valid"]):
        return target, "clients saturated", UNMEASURED
    factor = vanilla["us_per_delivery"] / pure["us_per_delivery"]
    return (
        target,
        f"{vanilla['us_per_delivery']:.0f} µs vs {pure['us_per_delivery']:.0f} µs "
        f"= {factor:.2f}×",
        _verdict(factor <= 2.0),
    )


def flat_cpu(points, sweep, rate):
    counts = [n for n in sweep if n >= 100]
    target = (
        f"CPU per delivery flat from {counts[0]} to {counts[-1]} clients (≤ 1.3×)"
    )
    figures = {}
    for n in counts:
        phase = _phase(points, "vanilla", n, rate)
        if phase and phase["valid"] and phase["us_per_delivery"]:
            figures[n] = phase["us_per_delivery"]
    if len(figures) < 2:
        return target, "–", UNMEASURED
    spread = max(figures.values()) / min(figures.values())
    text = ", ".join(f"{n}: {v:.0f} µs" for n, v in figures.items())
    if max(figures, key=figures.get) == min(figures):
        # A saturated server sends several frames per wakeup: cheaper, later.
        text += " (highest at the fewest clients)"
    missing = [n for n in counts if n not in figures]
    if missing:
        text += f" (no valid point at {', '.join(map(str, missing))})"
    return target, f"{text}; max/min {spread:.2f}×", _verdict(spread <= 1.3)


def full_delivery(points, clients, rate):
    target = (
        f"{clients} clients × {rate:g}/s: everything delivered, "
        "p99 ≤ 1.5× plain ASGI"
    )
    vanilla = _phase(points, "vanilla", clients, rate)
    asgi = _phase(points, "asgi", clients, rate)
    if not (vanilla and asgi and vanilla["p99"] and asgi["p99"]):
        return target, "–", UNMEASURED
    if not (vanilla["valid"] and asgi["valid"]):
        return target, "clients saturated", UNMEASURED
    share = vanilla["delivered"] / vanilla["offered"]
    factor = vanilla["p99"] / asgi["p99"]
    return (
        target,
        f"delivered {share:.4f}; p99 {vanilla['p99'] * 1000:.1f} ms vs "
        f"{asgi['p99'] * 1000:.1f} ms = {factor:.2f}×",
        _verdict(share >= 1.0 and factor <= 1.5),
    )


def kafka_latency(points, rate, clients):
    target = (
        f"Kafka to websocket p99 ≤ 50 ms at {rate:g} records/s to {clients} clients"
    )
    phase = _phase(points, "vanilla", clients, rate)
    if phase is None or phase["p99"] is None:
        return target, "–", UNMEASURED
    share = phase["delivered"] / phase["offered"] if phase["offered"] else 0
    verdict = _verdict(phase["p99"] <= 0.050 and share >= 1.0)
    if not phase["valid"]:
        verdict = UNMEASURED
    return (
        target,
        f"p99 {phase['p99'] * 1000:.1f} ms, delivered {share:.4f}",
        verdict,
    )


def connect_storm(points, count):
    target = f"{count} clients connecting at once: all connected, no error"
    for point in points:
        if point.get("server") == "vanilla" and "error" not in point:
            errors = sum(point["errors"].values())
            return (
                target,
                f"{point['connected']}/{point['attempted']} in "
                f"{point['seconds']:.1f} s, {errors} errors",
                _verdict(point["connected"] == count and not errors),
            )
    return target, "–", UNMEASURED


def idle_memory(points):
    target = "idle memory per connection reported; aim ≤ 30 KB"
    for point in points:
        if point.get("server") == "vanilla" and point.get("per_connection"):
            size = point["per_connection"] / 1024
            return target, f"{size:.1f} KB", _verdict(size <= 30)
    return target, "–", UNMEASURED


def churn_isolation(points, cycles):
    target = f"churn at {cycles:g} cycles/s: steady clients' p99 within 1.2×"
    calm = _phase(points, "vanilla", name="calm")
    churn = _phase(points, "vanilla", name="churn")
    point = next(
        (p for p in points if p.get("server") == "vanilla" and "error" not in p), None
    )
    if not (calm and churn and calm["p99"] and churn["p99"] and point):
        return target, "–", UNMEASURED
    achieved = point["cycles"].count / churn["duration"]
    factor = churn["p99"] / calm["p99"]
    return (
        target,
        f"{achieved:.0f} cycles/s achieved; p99 {calm['p99'] * 1000:.1f} → "
        f"{churn['p99'] * 1000:.1f} ms = {factor:.2f}×",
        _verdict(factor <= 1.2 and achieved >= 0.95 * cycles),
    )


#: The issue puts no number on "does not slow the others": a p99 of the steady
#: clients no worse than 1.2× the calm phase's, as for churn, or no more than
#: this many seconds above it, since at a few milliseconds one scheduling
#: hiccup of a shared core is already 20 %.
STALL_SLACK = 0.005


def stall_isolation(points, offered_bytes):
    target = (
        "a reader that stops: server memory bounded, the others not slowed "
        f"(p99 ≤ 1.2× calm or +{STALL_SLACK * 1000:.0f} ms)"
    )
    calm = _phase(points, "vanilla", name="calm")
    stalled = _phase(points, "vanilla", name="stalled")
    if not (calm and stalled and calm["p99"] and stalled["p99"]):
        return target, "–", UNMEASURED
    series = stalled["rss_series"]
    half = series[len(series) // 2 :]
    growth = (half[-1] - half[0]) if len(half) > 1 else 0
    factor = stalled["p99"] / calm["p99"]
    share = stalled["delivered"] / stalled["offered"] if stalled["offered"] else 0
    bounded = growth < 0.25 * offered_bytes / 2
    unslowed = stalled["p99"] <= max(1.2 * calm["p99"], calm["p99"] + STALL_SLACK)
    return (
        target,
        f"RSS +{growth / 2**20:.1f} MB over the second half (unbounded would be "
        f"≈{offered_bytes / 2 / 2**20:.1f} MB); others: delivered {share:.4f}, "
        f"p99 {calm['p99'] * 1000:.1f} → {stalled['p99'] * 1000:.1f} ms = "
        f"{factor:.2f}×",
        _verdict(bounded and share >= 1.0 and unslowed),
    )
