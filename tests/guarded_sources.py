"""
Data sources that differ only in who may subscribe and in their overflow
policy; the tests publish to them directly.
"""
from datasources.base import StreamSource
from datasources.registry import SourceRegistry


class GuardedStream(StreamSource):
    """A stream source nothing feeds but the test itself."""

    def __init__(self, name, permission=None, overflow="latest"):
        self.name = name
        self.permission = permission
        self.overflow = overflow

    def route(self, value, key):
        return []


registry = SourceRegistry()
registry.register(GuardedStream("ticker"))
registry.register(GuardedStream("ledger", overflow="close"))
registry.register(GuardedStream("members", permission="authenticated"))
registry.register(GuardedStream("staff", permission="pubsub.view_accesstoken"))
