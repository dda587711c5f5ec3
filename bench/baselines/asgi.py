"""
Baseline 2: a plain ASGI application in daphne.

No Django, no Channels: a websocket is accepted, its ``send`` callable is put
in the set of its topic, and one task relays each Redis publication with a
loop of ``await send(...)`` over that set. This is the least an ASGI server
can do per delivery; it has no outbox, so it is unbounded for slow readers.

    python -m daphne -p 8002 bench.baselines.asgi:application
"""
import asyncio

from . import parse, publications, reply

topics = {}
relaying = None


async def relay():
    async for key, text in publications():
        members = topics.get(key)
        if members:
            event = {"type": "websocket.send", "text": text}
            for send in tuple(members):
                await send(event)


async def application(scope, receive, send):
    global relaying
    if scope["type"] != "websocket":
        return
    if relaying is None:
        relaying = asyncio.create_task(relay())
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    held = {}
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            op, id, key = parse(message["text"])
            if op == "subscribe":
                topics.setdefault(key, set()).add(send)
                held[id] = key
                await send({"type": "websocket.send", "text": reply("subscribed", id)})
            elif op == "unsubscribe":
                key = held.pop(id, None)
                if key is not None and key not in held.values():
                    topics.get(key, set()).discard(send)
                await send(
                    {"type": "websocket.send", "text": reply("unsubscribed", id)}
                )
    finally:
        for key in held.values():
            topics.get(key, set()).discard(send)
