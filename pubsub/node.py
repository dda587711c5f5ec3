"""
This server process's part of the cluster: one hub, one subscription
registry and one janitor per event loop, shared by all its connections.
"""
import asyncio
import logging
import weakref

from .hub import Hub
from .lifecycle import Janitor, start_source
from .subscriptions import SubscriptionRegistry

logger = logging.getLogger(__name__)

_nodes = weakref.WeakKeyDictionary()


class Node:
    def __init__(self):
        self.hub = Hub()
        self.registry = SubscriptionRegistry()
        self.registry.members = self.members
        self.janitor = Janitor(self.registry)
        self.connections = set()
        self.named = 0
        # Connections refused since the process was last below its maximum.
        self.refused = 0
        logger.info("server process %s joined", self.registry.process_id)

    def members(self):
        """Topic key -> how many of this process's connections watch it."""
        return {key: len(members) for key, members in self.hub.members.items()}

    def connection_name(self):
        """A name for a new connection, unique in the cluster."""
        self.named += 1
        return f"{self.registry.process_id}.{self.named}"

    def attach(self, connection):
        if self.refused:
            logger.info(
                "process %s accepts connections again after refusing %d",
                self.registry.process_id,
                self.refused,
            )
            self.refused = 0
        self.connections.add(connection)
        self.registry.connections = len(self.connections)
        self.janitor.ensure_running()

    def refuse(self):
        """Count a connection refused for want of room; True for the first in a run."""
        self.refused += 1
        return self.refused == 1

    def detach(self, connection):
        self.connections.discard(connection)
        self.registry.connections = len(self.connections)

    async def subscribe(self, topic, member, join, read=None):
        """
        Count one subscription of ``member`` to ``topic``; ``join`` says it is
        the member's first on that topic, so it must join the hub too.
        ``read(pipe)`` may queue reads for the round trip that counts it.
        Returns whether this is the first subscription anywhere, when the
        caller must ``start()`` the topic's source, and the replies of the
        reads (see ``SubscriptionRegistry.add_and_read``).
        """
        if join:
            await self.hub.join(topic.key, member)
        try:
            return await self.registry.add_and_read(topic, read)
        except BaseException:
            if join:
                await self.hub.leave(topic.key, member)
            raise

    async def start(self, topic):
        """Start ``topic``'s source; its failures reach the subscribers."""
        return await start_source(topic)

    async def unsubscribe(self, topic, member, leave):
        if leave:
            await self.hub.leave(topic.key, member)
        if await self.registry.remove(topic):
            self.janitor.expect_stop()

    async def close(self):
        """Leave the cluster cleanly: uncount everything, stop the janitor."""
        await self.janitor.stop()
        await self.registry.close()
        await self.hub.close()


def get_node():
    loop = asyncio.get_running_loop()
    node = _nodes.get(loop)
    if node is None:
        node = _nodes[loop] = Node()
    return node


def forget_nodes():
    """Drop every node without cleanup (tests that reset Redis use this)."""
    _nodes.clear()
