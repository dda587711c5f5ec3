"""
Real processes for the tests: daphne, Celery worker and beat, the topology
runner. Each runs from manage.py's project with its own environment, logs to
a file, and is stopped (SIGTERM, then SIGKILL) when the test ends.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Process:
    """One child process of the test, with its output in a log file."""

    def __init__(self, name, argv, env, log_dir):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = Path(log_dir) / f"{name}.log"
        self.popen = None

    def start(self):
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self):
        return self.popen.pid

    @property
    def returncode(self):
        return self.popen.returncode

    def poll(self):
        return self.popen.poll()

    def signal(self, signum):
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def kill(self):
        """SIGKILL, as a crash would: no cleanup runs."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout=10):
        if self.popen is None or self.popen.poll() is not None:
            return self.popen and self.popen.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(timeout=10)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Processes:
    """Starts the project's processes with one shared environment."""

    def __init__(self, env, log_dir):
        self.env = env
        self.log_dir = log_dir
        self.started = []

    def _start(self, name, argv, extra_env=None):
        env = dict(self.env, **(extra_env or {}))
        process = Process(name, argv, env, self.log_dir).start()
        self.started.append(process)
        return process

    def daphne(
        self, name="daphne", extra_env=None, timeout=30, port=None,
        server="pubsub.server",
    ):
        """
        daphne on ``port``, or on a free one; restart one by passing its port.
        Vanilla's daphne (``pubsub.server``) unless ``server`` names another.
        """
        port = port or free_port()
        process = self._start(
            name,
            [
                sys.executable, "-m", server, "-b", "127.0.0.1", "-p", str(port),
                "vanilla_site.asgi:application",
            ],
            extra_env,
        )
        wait_for_port(port, timeout, process)
        process.port = port
        process.url = f"http://127.0.0.1:{port}"
        process.ws_url = f"ws://127.0.0.1:{port}/ws/"
        return process

    def manage(self, name, *args, extra_env=None):
        return self._start(name, [sys.executable, "manage.py", *args], extra_env)

    def celery(self, name, *args, extra_env=None):
        return self._start(
            name,
            [sys.executable, "-m", "celery", "-A", "vanilla_site", *args],
            extra_env,
        )

    def worker(self, name="worker"):
        return self.celery(
            name, "worker", "--pool", "solo", "--without-heartbeat",
            "--without-gossip", "--without-mingle", "-l", "info",
        )

    def beat(self, name="beat"):
        return self.celery(
            name, "beat", "-l", "info", "-s", str(Path(self.log_dir) / "beat-schedule"),
        )

    def stop_all(self):
        for process in reversed(self.started):
            process.stop()

    def logs(self):
        return "\n".join(
            f"----- {process.name} (exit {process.returncode}) -----\n"
            f"{process.log()[-6000:]}"
            for process in self.started
        )
