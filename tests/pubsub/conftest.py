"""Fixtures of the Pub-Sub tests: test-double sources and this loop's node."""
import pytest

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
    node = get_node()
    yield node
    await node.close()
