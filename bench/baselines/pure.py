"""
Baseline 1: a pure-Python broadcast server.

asyncio and the ``websockets`` library, no framework: one Redis pattern
subscription, and ``websockets.broadcast()`` writes each publication to every
subscriber's socket from the same encoded frame.

    python -m bench.baselines.pure --port 8001 [--backlog 2048]
"""
import argparse
import asyncio

from websockets.asyncio.server import broadcast, serve

from . import parse, publications, reply

topics = {}


async def handle(connection):
    held = {}
    try:
        async for text in connection:
            op, id, key = parse(text)
            if op == "subscribe":
                topics.setdefault(key, set()).add(connection)
                held[id] = key
                await connection.send(reply("subscribed", id))
            elif op == "unsubscribe":
                key = held.pop(id, None)
                if key is not None and key not in held.values():
                    topics.get(key, set()).discard(connection)
                await connection.send(reply("unsubscribed", id))
    finally:
        for key in held.values():
            topics.get(key, set()).discard(connection)


async def relay():
    async for key, text in publications():
        members = topics.get(key)
        if members:
            broadcast(members, text)


async def main(port, backlog):
    relaying = asyncio.create_task(relay())
    async with serve(
        handle, "127.0.0.1", port, compression=None, backlog=backlog
    ) as server:
        await asyncio.gather(server.serve_forever(), relaying)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.backlog))
