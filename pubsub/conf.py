"""Pub-Sub's view of the settings, and the lookup of the source registry."""
from functools import cache

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULTS = {
    "SOURCE_REGISTRY": "datasources.registry.registry",
    "REDIS_PREFIX": "vanilla",
    "PROCESS_LEASE": 30.0,
    "STOP_GRACE": 5.0,
    "JANITOR_INTERVAL": 1.0,
    "HISTORY_SIZE": 1000,
    "MAX_FRAME_BYTES": 64 * 1024,
    "MAX_PUBLICATION_BYTES": 1_000_000,
    "MAX_PARAMS_BYTES": 4 * 1024,
    "MAX_SUBSCRIPTIONS": 100,
    "MAX_CONNECTIONS": 10000,
    "OUTBOX_SIZE": 1000,
    "RATE_LIMIT": 50.0,
    "RATE_BURST": 200,
    "TOKEN_CHECK_INTERVAL": 2.0,
    "REDIS_CONNECTIONS": 32,
}


def option(name):
    """One entry of the ``VANILLA`` setting, or its default."""
    return getattr(settings, "VANILLA", {}).get(name, DEFAULTS[name])


@cache
def source_registry():
    """
    The object Pub-Sub asks for data sources: ``get(name)`` returns a source or
    raises ``pubsub.exceptions.SourceDoesNotExist``. Pub-Sub never imports a
    concrete source; ``VANILLA["SOURCE_REGISTRY"]`` names this object.
    """
    return import_string(option("SOURCE_REGISTRY"))


def _reset(setting, **kwargs):
    if setting == "VANILLA":
        source_registry.cache_clear()


setting_changed.connect(_reset)
