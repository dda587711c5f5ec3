"""
The run's results as Markdown: the machine, the targets met or missed, and one
table per scenario, with Vanilla's figures as ratios to the baselines of the
same run.
"""
import os
import platform
import subprocess
from importlib import metadata

import psutil

from .processes import ROOT
from .suite import FOREIGN_LOAD

PACKAGES = ("Django", "channels", "channels-redis", "daphne", "Twisted", "autobahn",
            "redis", "websockets", "confluent-kafka")
#: A publisher this many seconds behind its schedule is noted.
PUBLISHER_LATE = 0.05
NAMES = {
    "pure": "pure Python (websockets)",
    "asgi": "plain ASGI in daphne",
    "channels": "stock Channels",
    "vanilla": "**Vanilla**",
}


def machine(redis_version, load_cpus, server_cpus):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": ", ".join(versions),
        "redis": redis_version,
        "server_cpus": server_cpus,
        "load_cpus": load_cpus,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args):
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# --- formatting ---------------------------------------------------------------


def ms(seconds):
    return "–" if seconds is None else f"{seconds * 1000:.1f}"


def us(value):
    return "–" if value is None else f"{value:.0f}"


def times(value):
    return "–" if value is None else f"{value:.2f}×"


def pct(value):
    return "–" if value is None else f"{value * 100:.0f}%"


def ratio(delivered, offered):
    if not offered:
        return "–"
    share = delivered / offered
    text = f"{share:.4f}" if share < 1 else "1"
    return text


def kb(size):
    return "–" if size is None else f"{size / 1024:.1f} KB"


def mb(size):
    return "–" if size is None else f"{size / 2**20:.1f} MB"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def validity(phase):
    """"ok", or why the point is invalid, and what disturbed it."""
    if phase is None:
        return "–"
    notes = []
    if not phase["valid"]:
        notes.append("**invalid: clients saturated**")
    if phase["publisher_lag"] > PUBLISHER_LATE:
        notes.append(f"publisher late {phase['publisher_lag'] * 1000:.0f} ms")
    if (phase.get("foreign_load") or 0) > FOREIGN_LOAD:
        notes.append(f"others took {phase['foreign_load']:.0%} of the server core")
    return "; ".join(notes) or "ok"


# --- scenarios ----------------------------------------------------------------


def delivery_rows(points, reference_cpu, reference_p99):
    """Rows of delivery points; ratios to the pure and plain-ASGI baselines."""
    rows = []
    for point in points:
        if "error" in point:
            rows.append([NAMES.get(point["server"], point["server"]),
                         point.get("clients", "–"), point.get("rate", "–"),
                         f"failed: {point['error']}"] + ["–"] * 10)
            continue
        phase = point["phases"][-1]
        key = (point["clients"], point["rate"])
        pure = reference_cpu.get(key)
        asgi = reference_p99.get(key)
        rows.append([
            NAMES[point["server"]],
            point["clients"],
            point["rate"],
            ratio(phase["delivered"], phase["offered"]),
            ms(phase["p50"]),
            ms(phase["p99"]),
            ms(phase["max"]),
            us(phase["us_per_delivery"]),
            times(phase["us_per_delivery"] / pure) if pure and phase["us_per_delivery"]
            else "–",
            times(phase["p99"] / asgi) if asgi and phase["p99"] else "–",
            pct(phase["server_cpu"]),
            pct(phase["redis_cpu"]),
            pct(phase["client_cpu"]),
            validity(phase),
        ])
    return rows


DELIVERY_HEADER = [
    "server", "clients", "rate/s", "delivered/offered", "p50 ms", "p99 ms", "max ms",
    "server µs/delivery", "CPU ×pure", "p99 ×ASGI", "server CPU", "Redis CPU",
    "client CPU", "validity",
]


def references(points):
    cpu, p99 = {}, {}
    for point in points:
        if "error" in point:
            continue
        phase = point["phases"][-1]
        key = (point["clients"], point["rate"])
        if point["server"] == "pure" and phase["valid"]:
            cpu[key] = phase["us_per_delivery"]
        if point["server"] == "asgi" and phase["valid"]:
            p99[key] = phase["p99"]
    return cpu, p99


def delivery_section(title, intro, points):
    cpu, p99 = references(points)
    ordered = sorted(
        points,
        key=lambda p: (p.get("rate", 0), p.get("clients", 0),
                       list(NAMES).index(p["server"])),
    )
    return f"## {title}\n\n{intro}\n\n" + table(
        DELIVERY_HEADER, delivery_rows(ordered, cpu, p99)
    )


def kafka_section(points, intro):
    header = ["records/s", "clients", "delivered/offered", "p50 ms", "p99 ms",
              "max ms", "publish→client p99 ms", "daphne CPU", "runner CPU",
              "Redis CPU", "daphne µs/delivery", "client CPU", "validity"]
    rows = []
    for point in points:
        if "error" in point:
            rows.append([point.get("rate", "–"), point.get("clients", "–"),
                         f"failed: {point['error']}"] + ["–"] * 10)
            continue
        phase = point["phases"][-1]
        rows.append([
            point["rate"], point["clients"],
            ratio(phase["delivered"], phase["offered"]),
            ms(phase["p50"]), ms(phase["p99"]), ms(phase["max"]),
            ms(phase.get("publish_p99")),
            pct(phase["server_cpu"]), pct(phase.get("runner_cpu")),
            pct(phase["redis_cpu"]), us(phase["us_per_delivery"]),
            pct(phase["client_cpu"]),
            validity(phase),
        ])
    return "## 3. Kafka to websocket\n\n" + intro + "\n\n" + table(header, rows)


def idle_section(points, intro):
    header = ["server", "connections", "connected", "errors", "time to all subscribed",
              "RSS before", "RSS after", "memory per connection",
              "server CPU ms/connect"]
    rows = []
    for point in points:
        if "error" in point:
            rows.append([NAMES[point["server"]], "–", f"failed: {point['error']}"]
                        + ["–"] * 6)
            continue
        errors = sum(point["errors"].values())
        rows.append([
            NAMES[point["server"]], point["attempted"], point["connected"],
            errors if not errors else f"{errors}: {_first(point['errors'])}",
            f"{point['seconds']:.1f} s", mb(point["rss_before"]),
            mb(point["rss_after"]), kb(point["per_connection"]),
            f"{point['server_cpu_ms_per_connection']:.2f}"
            if point["server_cpu_ms_per_connection"] is not None else "–",
        ])
    return "## 4. Idle connections\n\n" + intro + "\n\n" + table(header, rows)


def _first(errors):
    return max(errors, key=errors.get)[:80]


def two_phase_section(title, intro, points, extra):
    header = ["server", "phase", "delivered/offered", "p50 ms", "p99 ms", "max ms",
              "p99 ×calm", "server µs/delivery", "server CPU", "server RSS end",
              "client CPU", "validity"] + [name for name, _ in extra]
    rows = []
    for point in points:
        if "error" in point:
            rows.append([NAMES[point["server"]], f"failed: {point['error']}"]
                        + ["–"] * (len(header) - 2))
            continue
        calm = point["phases"][0]
        for phase in point["phases"]:
            rows.append([
                NAMES[point["server"]], phase["phase"],
                ratio(phase["delivered"], phase["offered"]),
                ms(phase["p50"]), ms(phase["p99"]), ms(phase["max"]),
                times(phase["p99"] / calm["p99"]) if calm["p99"] and phase["p99"]
                else "–",
                us(phase["us_per_delivery"]), pct(phase["server_cpu"]),
                mb(phase["rss_end"]), pct(phase["client_cpu"]), validity(phase),
            ] + [fn(point, phase) for _, fn in extra])
    return f"## {title}\n\n{intro}\n\n" + table(header, rows)
