"""Fixtures of the Pub-Sub tests: test-double sources and this loop's node."""
import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from pubsub.node import get_node

from . import sources


@pytest.fixture
def registry(settings, vanilla_settings):
    close_sync_thread_connections()
    settings.VANILLA = {
        **settings.VANILLA,
        "SOURCE_REGISTRY": "tests.pubsub.sources.registry",
    }
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }
    sources.registry.sources.clear()
    sources.registry.add(sources.TrackingSource("chat"))
    return sources.registry


@pytest.fixture
async def node(registry):
    node = get_node()
    yield node
    await node.close()


def close_sync_thread_connections():
    """
    Close the database connections that earlier tests left open in asgiref's
    thread for sync code. ``database_sync_to_async`` looks at those
    connections around every call, which pytest-django refuses in a test
    without database access.
    """
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
