"""A small protocol client for tests that talk to a real daphne."""
import asyncio
import json
import time

import websockets


class Client:
    def __init__(self, connection):
        self.connection = connection
        self.frames = []

    @classmethod
    async def open(cls, server, **options):
        connection = await websockets.connect(
            server.ws_url, origin=server.url, open_timeout=10, **options
        )
        return cls(connection)

    async def send(self, frame):
        await self.connection.send(json.dumps(frame))

    async def receive(self, timeout=5):
        frame = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def receive_op(self, op, timeout=5, id=None):
        """The next frame with ``op`` (and ``id``), skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {op!r} frame within {timeout} s")
            frame = await self.receive(left)
            if frame["op"] == op and (id is None or frame.get("id") == id):
                return frame

    async def subscribe(self, id, source, params, **extra):
        await self.send(
            {"op": "subscribe", "id": id, "source": source, "params": params, **extra}
        )
        return await self.receive_op("subscribed", id=id)

    async def unsubscribe(self, id):
        await self.send({"op": "unsubscribe", "id": id})
        return await self.receive_op("unsubscribed", id=id)

    async def close(self):
        await self.connection.close()
