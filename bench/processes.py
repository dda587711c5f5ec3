"""
The processes of a benchmark run: servers, load clients and publishers.

Servers are pinned to the first core, everything else (load clients,
publisher, this driver, and the Redis and Kafka that ``scripts/services``
runs from this checkout) to the others, so that the server has its core to
itself but for other users' processes. A ``Sampler`` reads every tracked
process's CPU time and memory twice a second; measurements are differences
between its samples.
"""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import psutil

ROOT = Path(__file__).absolute().parent.parent
PYTHON = sys.executable
STOP_TIMEOUT = 10.0


def cores():
    """(server cores, load cores): the first core, and the rest."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return available, available
    return available[:1], available[1:]


def pin(pid, cpus):
    try:
        psutil.Process(pid).cpu_affinity(list(cpus))
    except (psutil.Error, OSError):
        pass


class PinnedServices:
    """
    Pins the Redis and Kafka of this checkout's ``scripts/services`` to the
    load cores for the run and gives them back their affinity afterwards.
    A service is only touched when the pid in its ``.services`` pidfile is
    the one listening on the port the run uses, so that a Redis or Kafka
    someone else runs is left alone.
    """

    PIDFILES = {"redis": "redis/redis.pid", "kafka": "kafka/kafka.pid"}

    def __init__(self, ports, cpus):
        self.ports = ports
        self.cpus = list(cpus)
        #: The services pinned, by name, and each thread's former affinity.
        self.processes = {}
        self.saved = {}

    def __enter__(self):
        # Every thread, not only the main one: sched_setaffinity() moves one
        # thread, and a JVM's work runs in the threads it started long ago.
        for name, port in self.ports.items():
            process = self._own(name, port)
            if process is None:
                continue
            self.processes[name] = process
            for thread in process.threads():
                try:
                    self.saved[thread.id] = os.sched_getaffinity(thread.id)
                    os.sched_setaffinity(thread.id, self.cpus)
                except OSError:
                    pass
        return self

    def __exit__(self, *exc_info):
        for thread, affinity in self.saved.items():
            try:
                os.sched_setaffinity(thread, affinity)
            except OSError:
                pass

    def _own(self, name, port):
        try:
            pid = int((ROOT / ".services" / self.PIDFILES[name]).read_text())
            process = psutil.Process(pid)
            listening = any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in process.net_connections(kind="tcp")
            )
        except (OSError, ValueError, psutil.Error):
            return None
        return process if listening else None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_port(port, timeout, popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"exited with {popen.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Server:
    """One server under test (or a helper such as the topology runner)."""

    def __init__(self, name, kind, argv, env, log_dir, port=None):
        self.name = name
        self.kind = kind
        self.argv = argv
        self.env = env
        self.port = port
        self.log_path = Path(log_dir) / f"{name}.log"
        self.popen = None

    async def start(self, cpus, timeout=60):
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pin(self.popen.pid, cpus)
        self.process = psutil.Process(self.popen.pid)
        if self.port is not None:
            await wait_for_port(self.port, timeout, self.popen)
        return self

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def stop(self):
        stop_process_group(self.popen)

    def log_tail(self, size=3000):
        return tail_of(self.log_path, size)


def tail_of(path, size):
    """The last ``size`` characters of a log, for an error message."""
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


def stop_process_group(popen):
    """SIGTERM the child's session, then SIGKILL after STOP_TIMEOUT."""
    if popen is None or popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=STOP_TIMEOUT)
    except ProcessLookupError:
        pass


class Child:
    """A load client or publisher: a plan in, JSON events out, commands in."""

    def __init__(self, name, module, plan, env, cpus, log_dir):
        self.name = name
        self.module = module
        self.plan = plan
        self.env = env
        self.cpus = cpus
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc = None
        self.events = asyncio.Queue()

    async def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", self.module, json.dumps(self.plan),
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
            limit=64 * 1024 * 1024,
        )
        pin(self.proc.pid, self.cpus)
        self.process = psutil.Process(self.proc.pid)
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self):
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.events.put({"event": "exit"})
                return
            await self.events.put(json.loads(line))

    async def expect(self, event, timeout):
        """The next event named ``event``; an exit or timeout raises."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.events.get()
                if message["event"] == event:
                    return message
                if message["event"] == "exit":
                    raise RuntimeError(
                        f"{self.name} exited before {event!r}: {self.log_tail()}"
                    )

    def send(self, **command):
        if self.proc.returncode is None:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())

    async def stop(self):
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                self.send(cmd="exit")
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), 5)
            except (TimeoutError, ConnectionError, OSError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await self.proc.wait()
        self.reader.cancel()
        self.log.close()

    def log_tail(self, size=2000):
        return tail_of(self.log_path, size)


def cpu_seconds(process):
    """
    CPU time of every thread of ``process``, in nanoseconds from the
    scheduler's statistics where Linux has them: the user and system times
    of ``/proc/<pid>/stat`` count 10 ms ticks, a tenth of a light point's
    CPU. A thread that ends takes its time with it; the servers' threads
    live as long as they do.
    """
    if not SCHEDSTAT:
        times = process.cpu_times()
        return times.user + times.system
    total = 0
    try:
        tasks = os.listdir(f"/proc/{process.pid}/task")
    except OSError:
        raise psutil.NoSuchProcess(process.pid) from None
    for task in tasks:
        try:
            with open(f"/proc/{process.pid}/task/{task}/schedstat") as stats:
                total += int(stats.read().split()[0])
        except OSError:
            pass  # the thread ended meanwhile
    return total / 1e9


SCHEDSTAT = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat")


class Sample(NamedTuple):
    """One reading: the wall clock, and per group CPU seconds and RSS bytes."""

    time: float
    cpu: dict
    rss: dict
    #: Busy seconds of each core since boot, whoever was running on it.
    cores: list


class Sampler:
    """
    CPU seconds and RSS of named groups of processes, and how busy each core
    is, read every ``interval`` seconds and whenever ``sample()`` is called.
    """

    def __init__(self, interval=0.5):
        self.interval = interval
        self.processes = {}
        self.samples = []
        self.task = None

    def track(self, group, process):
        self.processes.setdefault(group, []).append(process)

    def forget(self, group):
        self.processes.pop(group, None)

    def sample(self):
        cpu, rss = {}, {}
        for group, processes in self.processes.items():
            cpu[group] = 0.0
            rss[group] = 0
            for process in processes:
                try:
                    cpu[group] += cpu_seconds(process)
                    rss[group] += process.memory_info().rss
                except psutil.Error:
                    pass
        cores = [
            core.user + core.nice + core.system + core.irq + core.softirq + core.steal
            for core in psutil.cpu_times(percpu=True)
        ]
        record = Sample(time.time(), cpu, rss, cores)
        self.samples.append(record)
        return record

    async def _run(self):
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self):
        self.samples = []
        self.task = asyncio.create_task(self._run())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    def between(self, start, end):
        return [s for s in self.samples if start <= s.time <= end]

    def nearest(self, moment):
        return min(self.samples, key=lambda s: abs(s.time - moment))

    def cpu_seconds(self, group, start, end):
        """CPU seconds of ``group`` from the sample at ``start`` to ``end``."""
        first, last = self.nearest(start), self.nearest(end)
        return last.cpu.get(group, 0.0) - first.cpu.get(group, 0.0)

    def core_busy(self, cpus, start, end):
        """The share of ``cpus`` that something used from ``start`` to ``end``."""
        first, last = self.nearest(start), self.nearest(end)
        elapsed = last.time - first.time
        if elapsed <= 0:
            return None
        busy = sum(last.cores[cpu] - first.cores[cpu] for cpu in cpus)
        return busy / elapsed / len(cpus)


async def settle(process, idle=0.05, timeout=20.0):
    """Wait until ``process`` uses less than ``idle`` of a core for 0.5 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            before = cpu_seconds(process)
            await asyncio.sleep(0.5)
            if (cpu_seconds(process) - before) / 0.5 < idle:
                return True
        except psutil.Error:
            return False
    return False
