"""
A load client: many websocket connections in one asyncio process.

It speaks just enough RFC 6455 to be cheap per frame: the server's frames are
parsed from raw bytes, and a data frame is never decoded as JSON; one regular
expression pulls out its publisher timestamp and its number ``n``. All frames
that arrive in one read share one clock reading. A publication stamped before
its connection subscribed, such as the latest value Vanilla sends on
subscribe, is not a delivery of the point and is not counted.

The driver (``bench.suite``) starts it with a plan (JSON, first argument),
sends commands as JSON lines on stdin and reads events as JSON lines on
stdout:

- command ``connect`` opens (and subscribes) every planned connection, at
  most ``concurrency`` at a time, then emits ``ready``;
- command ``churn`` starts the subscribe/unsubscribe cycles of churn
  connections, ``calm`` lets each finish its cycle and stop, ``stall``
  makes stall connections stop reading;
- command ``finish`` (with the last ``n`` expected per topic) waits until
  every steady connection has it, or the deadline, then emits ``result``.
"""
import asyncio
import base64
import bisect
import json
import os
import re
import socket
import sys
import time

from .baselines import topic_key
from .stats import Histogram

DATA_PATTERNS = {
    # Vanilla and the baselines: {..."time":T,"data":{"n":N,...}}
    "default": re.compile(rb'"time":([0-9.]+),"data":\{"n":(\d+)'),
    # A departure routed by a topology: the producer's stamp is in "date".
    "kafka": re.compile(
        rb'"time":([0-9.]+),.*?"flight":"BN(\d+)".*?"date":([0-9.]+)', re.S
    ),
}
SUBSCRIBED = b'"op":"subscribed"'
UNSUBSCRIBED = b'"op":"unsubscribed"'
ERROR = b'"op":"error"'
CONNECT_TIMEOUT = 60.0
REPLY_TIMEOUT = 10.0


def masked_frame(opcode, payload):
    """A client frame (FIN set, masked), as RFC 6455 requires of clients."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    mask = (key * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
        length, "big"
    )
    return header + key + body


class Stats:
    """What the steady connections of this process saw, per phase."""

    def __init__(self, bounds, pattern):
        self.bounds = bounds
        self.pattern = DATA_PATTERNS[pattern]
        self.stamped = pattern == "kafka"
        self.latency = [Histogram() for _ in bounds]
        self.published = [Histogram() for _ in bounds]
        self.late = 0

    def phase_of(self, n):
        return bisect.bisect_right(self.bounds, n) - 1


class Connection(asyncio.Protocol):
    def __init__(self, client, role, topic):
        self.client = client
        self.role = role
        self.topic = topic
        self.transport = None
        self.handshake = b""
        self.buffer = b""
        self.open = asyncio.get_running_loop().create_future()
        self.reply = None
        self.closed = False
        self.close_code = None
        self.last_n = -1
        self.frames = 0
        # When the connection asked to subscribe: publications stamped earlier
        # are the latest value a server sends on subscribe, not deliveries.
        self.since = float("inf")

    # --- opening -------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        client = self.client
        request = (
            f"GET {client.path} HTTP/1.1\r\n"
            f"Host: {client.host}:{client.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {client.origin}\r\n\r\n"
        )
        transport.write(request.encode())

    def _handshake(self, data):
        self.handshake += data
        end = self.handshake.find(b"\r\n\r\n")
        if end < 0:
            return b""
        status = self.handshake.split(b"\r\n", 1)[0]
        rest = self.handshake[end + 4 :]
        self.handshake = None
        if b" 101 " not in status + b" ":
            self.fail(f"handshake refused: {status.decode(errors='replace')}")
            self.transport.close()
            return b""
        if not self.open.done():
            self.open.set_result(None)
        return rest

    def fail(self, reason):
        if not self.open.done():
            self.open.set_exception(ConnectionError(reason))
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError(reason))

    # --- frames ----------------------------------------------------------------

    def data_received(self, data):
        if self.handshake is not None:
            data = self._handshake(data)
            if not data:
                return
        now = time.time()
        buffer = self.buffer + data if self.buffer else data
        size = len(buffer)
        position = 0
        while size - position >= 2:
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            opcode = buffer[position] & 0x0F
            if opcode == 1:
                self.on_text(buffer[start:end], now)
            elif opcode == 9:
                self.transport.write(masked_frame(10, buffer[start:end]))
            elif opcode == 8:
                payload = buffer[start:end]
                if len(payload) >= 2:
                    self.close_code = int.from_bytes(payload[:2], "big")
            position = end
        self.buffer = buffer[position:] if position < size else b""

    def on_text(self, payload, now):
        self.frames += 1
        if self.role == "steady":
            stats = self.client.stats
            match = stats.pattern.search(payload)
            if match is not None:
                if float(match[1]) < self.since:
                    return
                n = int(match[2])
                phase = stats.phase_of(n)
                if n > self.last_n:
                    self.last_n = n
                if stats.stamped:
                    stats.latency[phase].add(now - float(match[3]))
                    stats.published[phase].add(now - float(match[1]))
                else:
                    stats.latency[phase].add(now - float(match[1]))
                return
        reply = self.reply
        if reply is None or reply.done():
            return
        if ERROR in payload:
            reply.set_exception(RuntimeError(payload[:200].decode(errors="replace")))
        elif SUBSCRIBED in payload or UNSUBSCRIBED in payload:
            reply.set_result(payload)

    def connection_lost(self, exc):
        self.closed = True
        self.fail(f"connection lost: {exc}" if exc else "connection closed")
        self.client.lost += 1

    # --- requests ----------------------------------------------------------------

    async def request(self, frame):
        """Send a subscribe/unsubscribe frame and wait for its reply."""
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(masked_frame(1, json.dumps(frame).encode()))
        return await asyncio.wait_for(self.reply, REPLY_TIMEOUT)

    @property
    def topic_key(self):
        return topic_key(*self.topic)

    def subscribe_frame(self, id):
        source, params = self.topic
        return {"op": "subscribe", "id": id, "source": source, "params": params}


class LoadClient:
    def __init__(self, plan):
        self.plan = plan
        self.host = plan["host"]
        self.port = plan["port"]
        self.path = plan.get("path", "/ws/")
        self.origin = f"http://{self.host}:{self.port}"
        self.stats = Stats(plan.get("bounds", [0]), plan.get("pattern", "default"))
        self.connections = []
        self.errors = {}
        self.lost = 0
        self.churn_tasks = []
        self.cycles = Histogram()
        self.cycle_errors = 0
        self.stopping = False
        self.churning = False

    # --- setup -----------------------------------------------------------------

    async def open_all(self):
        """Open (and subscribe) every planned connection; report ``ready``."""
        limit = self.plan.get("concurrency") or None
        gate = asyncio.Semaphore(limit) if limit else None
        jobs = []
        for role, groups in self.plan["connections"].items():
            for source, params, count in groups:
                for _ in range(count):
                    jobs.append(self.open_one(role, (source, params), gate))
        began = time.monotonic()
        results = await asyncio.gather(*jobs)
        seconds = time.monotonic() - began
        per_topic = {}
        for connection, error in results:
            if error is None:
                self.connections.append(connection)
                if connection.role == "steady":
                    key = connection.topic_key
                    per_topic[key] = per_topic.get(key, 0) + 1
            else:
                self.errors[error] = self.errors.get(error, 0) + 1
        emit(
            "ready",
            connected=len(self.connections),
            steady=per_topic,
            failed=len(jobs) - len(self.connections),
            errors=self.errors,
            seconds=seconds,
        )

    async def open_one(self, role, topic, gate):
        if gate is not None:
            async with gate:
                return await self._open(role, topic)
        return await self._open(role, topic)

    async def _open(self, role, topic):
        loop = asyncio.get_running_loop()
        connection = Connection(self, role, topic)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if role == "stall":
                    sock = socket.socket()
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_RCVBUF, self.plan["rcvbuf"]
                    )
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (self.host, self.port))
                    await loop.create_connection(lambda: connection, sock=sock)
                else:
                    await loop.create_connection(
                        lambda: connection, self.host, self.port
                    )
                await connection.open
                if role in ("steady", "stall"):
                    connection.since = time.time()
                    await connection.request(connection.subscribe_frame("a"))
        except (OSError, ConnectionError, TimeoutError, RuntimeError) as exc:
            if connection.transport is not None:
                connection.transport.abort()
            return None, f"{type(exc).__name__}: {str(exc)[:120]}"
        return connection, None

    # --- commands --------------------------------------------------------------

    async def start_churn(self, rate):
        await self.stop_churn()
        self.churning = True
        for index, connection in enumerate(self.connections):
            if connection.role == "churn":
                task = asyncio.create_task(self.churn(connection, rate, index))
                self.churn_tasks.append(task)

    async def churn(self, connection, rate, index):
        """Subscribe and unsubscribe ``rate`` times a second, until told to stop."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        # Spread the connections' cycles over the interval.
        await asyncio.sleep(interval * (index % 10) / 10)
        due = loop.time()
        while self.churning and not self.stopping and not connection.closed:
            began = time.monotonic()
            try:
                await connection.request(connection.subscribe_frame("c"))
                await connection.request({"op": "unsubscribe", "id": "c"})
            except (ConnectionError, TimeoutError, RuntimeError):
                self.cycle_errors += 1
            else:
                self.cycles.add(time.monotonic() - began)
            due += interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                due = loop.time()

    async def stop_churn(self):
        """Let every churning connection finish its cycle, then stop."""
        self.churning = False
        await asyncio.gather(*self.churn_tasks, return_exceptions=True)
        self.churn_tasks = []

    def stall(self):
        for connection in self.connections:
            if connection.role == "stall" and not connection.closed:
                connection.transport.pause_reading()

    async def finish(self, last, deadline):
        """Wait for every steady connection's last ``n``, then report."""
        self.stopping = True
        steady = [c for c in self.connections if c.role == "steady"]
        while time.time() < deadline:
            if all(
                c.closed or c.last_n >= last.get(c.topic_key, -1) for c in steady
            ):
                break
            await asyncio.sleep(0.05)
        for task in self.churn_tasks:
            task.cancel()
        await asyncio.gather(*self.churn_tasks, return_exceptions=True)
        per_topic = {}
        for connection in steady:
            if not connection.closed:
                key = connection.topic_key
                per_topic[key] = per_topic.get(key, 0) + 1
        stats = self.stats
        emit(
            "result",
            latency=[h.to_json() for h in stats.latency],
            published=[h.to_json() for h in stats.published],
            open_steady=per_topic,
            lost=self.lost,
            close_codes=sorted(
                {c.close_code for c in self.connections if c.close_code}
            ),
            cycles=self.cycles.to_json(),
            cycle_errors=self.cycle_errors,
        )

    async def run(self):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        while True:
            line = await reader.readline()
            if not line:
                break
            command = json.loads(line)
            name = command["cmd"]
            if name == "connect":
                await self.open_all()
            elif name == "churn":
                await self.start_churn(command["rate"])
            elif name == "calm":
                await self.stop_churn()
            elif name == "stall":
                self.stall()
            elif name == "finish":
                await self.finish(command["last"], command["deadline"])
            elif name == "exit":
                break
        for connection in self.connections:
            if not connection.closed:
                connection.transport.abort()


def emit(event, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main():
    plan = json.loads(sys.argv[1])
    asyncio.run(LoadClient(plan).run())


if __name__ == "__main__":
    main()
