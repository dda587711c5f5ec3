"""
Run the benchmark suite, print its document and write it to
``bench/results/<timestamp>.md``; each process's log goes beside it, in
``bench/results/<timestamp>-logs/``.

    bench/run            # every scenario, under 15 minutes
    bench/run --quick    # fewer, shorter points: a check, about 3 minutes
    bench/run --only 1,4 # some scenarios (numbers as in docs/performance.md)

Redis must answer on VANILLA_REDIS_URL (default redis://127.0.0.1:6390/0) and
Kafka on VANILLA_KAFKA_BOOTSTRAP_SERVERS (127.0.0.1:19092) for scenario 3;
``bench/run`` starts them with ``scripts/services`` when they do not.
"""
import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from . import document, report
from .processes import PYTHON, ROOT, PinnedServices
from .scenarios import FULL, QUICK, SCENARIOS
from .stats import Histogram
from .suite import Run, pin_self

RESULTS = Path(__file__).absolute().parent / "results"
#: Hard limits on a whole run, whatever happens inside it (seconds).
DEADLINE = {"full": 20 * 60, "quick": 8 * 60}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="bench/run", description="Vanilla's benchmark suite."
    )
    parser.add_argument("--quick", action="store_true", help="about three minutes")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario numbers, e.g. 1,4"
    )
    args = parser.parse_args(argv)
    args.only = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = args.only - set(SCENARIOS)
    if unknown:
        parser.error(f"no scenario {', '.join(sorted(unknown))}; there are 1 to 6")
    return args


def raise_file_limit():
    """2000 sockets per side need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def redis_version(url):
    try:
        info = redis.Redis.from_url(url, socket_timeout=5).info("server")
        return info["redis_version"]
    except redis.RedisError as exc:
        sys.exit(f"Redis does not answer on {url} ({exc}); run scripts/services start")


def service_ports(redis_url, bootstrap):
    kafka_port = bootstrap.split(",")[0].rsplit(":", 1)[1]
    return {"redis": urlsplit(redis_url).port or 6379, "kafka": int(kafka_port)}


def migrate(run):
    """Vanilla's tables in the run's own SQLite file (sessions, tokens)."""
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=run.vanilla_env(f"{run.id}-migrate"),
        check=True,
        capture_output=True,
        timeout=300,
    )


def cleanup(run):
    """Delete every Redis key the run made: they all start with its id."""
    client = redis.Redis.from_url(run.redis_url)
    deleted = 0
    for key in client.scan_iter(match=f"{run.id}*", count=1000):
        deleted += client.delete(key)
    return deleted


async def run_suite(run, settings, chosen, results):
    """Each chosen scenario in turn; its points, or its error, into ``results``."""
    for number, (title, scenario) in SCENARIOS.items():
        if chosen and number not in chosen:
            continue
        began = time.monotonic()
        run.progress(f"scenario {number}: {title}")
        try:
            results[number] = await scenario(run, settings)
        except Exception as exc:
            run.progress(f"  scenario {number} failed: {exc!r}"[:500])
            results[number] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        run.progress(f"  ({time.monotonic() - began:.0f} s)")


def as_json(value):
    """What json.dumps cannot encode by itself: histograms, times, paths."""
    if isinstance(value, Histogram):
        return value.to_json()
    return str(value)


def load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main(args):
    mode = "quick" if args.quick else "full"
    settings = QUICK if args.quick else FULL
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    redis_url = os.environ.get("VANILLA_REDIS_URL", "redis://127.0.0.1:6390/0")
    bootstrap = os.environ.get("VANILLA_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")

    # The machine as the run finds it.
    run = Run(args.quick, log_dir, redis_url, bootstrap)
    machine = report.machine(redis_version(redis_url), run.load_cpus, run.server_cpus)
    machine.update(started=started, run=run.id, load_start=load_average())
    limit = raise_file_limit()
    pin_self(run)
    run.progress(f"run {run.id} ({mode}); logs in {log_dir}; open files limit {limit}")

    # The scenarios, with this checkout's Redis and Kafka off the server's core.
    began = time.monotonic()
    run.retakes = settings.retakes
    run.retake_until = began + settings.retake_window
    ports = service_ports(redis_url, bootstrap)
    with PinnedServices(ports, run.load_cpus) as pinned:
        machine["pinned_services"] = sorted(pinned.processes)
        run.services = dict(pinned.processes)
        results = {}
        try:
            migrate(run)
            await asyncio.wait_for(
                run_suite(run, settings, args.only, results), DEADLINE[mode]
            )
        except TimeoutError:
            minutes = DEADLINE[mode] / 60
            run.progress(f"stopped after the deadline of {minutes:.0f} minutes")
        finally:
            run.stop_servers(run.servers)
            deleted = cleanup(run)
            run.progress(f"stopped every server; deleted {deleted} Redis keys")
    machine.update(seconds=time.monotonic() - began, load_end=load_average())

    # The document.
    text = document.render(settings, results, machine, mode)
    path = RESULTS / f"{stamp}.md"
    path.write_text(text)
    raw = {
        "settings": dataclasses.asdict(settings),
        "machine": machine,
        "results": results,
    }
    (RESULTS / f"{stamp}.json").write_text(json.dumps(raw, indent=1, default=as_json))
    print()
    print(text)
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
