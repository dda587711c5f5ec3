"""Fixtures of the Pub-Sub tests: test-double sources and this loop's node."""
import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from pubsub.node import get_node

from . import sources


@pytest.fixture
def registry(settings, vanilla_settings):
    settings.VANILLA = {**settings.VANILLA, "SOURCE_REGISTRY": "tests.pubsub.sources.registry"}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    sources.registry.sources.clear()
    sources.registry.add(sources.TrackingSource("chat"))
    return sources.registry


@pytest.fixture
async def node(registry):
    # Channels closes stale database connections before each message, in
    # asgiref's thread; one left open there by an earlier test that had the
    # database would be checked, and these tests have none.
    await sync_to_async(connections.close_all)()
    node = get_node()
    yield node
    await node.close()
