"""
Baseline 3: stock Channels. A minimal consumer joins the group of the topic it
subscribes to; the publisher calls ``group_send`` on the Redis channel layer,
and the consumer's handler sends the text on.

    DJANGO_SETTINGS_MODULE=bench.baselines.channels_settings \\
        python -m daphne -p 8003 bench.baselines.channels_app:application
"""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baselines.channels_settings")
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402

from . import parse, reply  # noqa: E402


def group_name(key):
    """A topic key as a group name (letters, digits, hyphens, dots)."""
    return "bench." + "".join(c if c.isalnum() else "." for c in key)


class BroadcastConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.held = {}
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        op, id, key = parse(text_data)
        if op == "subscribe":
            self.held[id] = key
            await self.channel_layer.group_add(group_name(key), self.channel_name)
            await self.send(text_data=reply("subscribed", id))
        elif op == "unsubscribe":
            key = self.held.pop(id, None)
            if key is not None and key not in self.held.values():
                await self.channel_layer.group_discard(
                    group_name(key), self.channel_name
                )
            await self.send(text_data=reply("unsubscribed", id))

    async def disconnect(self, code):
        for key in set(self.held.values()):
            await self.channel_layer.group_discard(group_name(key), self.channel_name)

    async def bench_publication(self, event):
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter({"websocket": BroadcastConsumer.as_asgi()})
