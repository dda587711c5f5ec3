"""
The servers Vanilla is measured against. Each accepts the same subscribe and
unsubscribe frames as Vanilla (without its validation, history or
back-pressure) and relays publications from Redis, or from a channel layer,
to every subscriber of the topic, unchanged.
"""
import json
import os

import redis.asyncio

#: Redis channel of a topic: ``<prefix>:<topic key>``.
PREFIX = os.environ.get("BENCH_PREFIX", "vbench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")


def topic_key(source, params):
    """The same name for a topic in publishers, servers and clients."""
    return source + ":" + ",".join(f"{k}={params[k]}" for k in sorted(params))


def parse(text):
    """``(op, id, topic key or None)`` of a client frame."""
    frame = json.loads(text)
    op = frame.get("op")
    key = None
    if op == "subscribe":
        key = topic_key(frame["source"], frame.get("params") or {})
    return op, frame.get("id"), key


async def publications():
    """``(topic key, text)`` of every publication the publisher makes."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.psubscribe(f"{PREFIX}:*")
    start = len(PREFIX) + 1
    async for message in pubsub.listen():
        if message["type"] == "pmessage":
            yield message["channel"][start:], message["data"]


def reply(op, id):
    return json.dumps({"op": op, "id": id}, separators=(",", ":"))
