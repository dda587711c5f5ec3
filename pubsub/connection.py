"""
Redis clients and key names shared by everything in Pub-Sub.

There is one synchronous client per process (Celery tasks, the topology runner,
management commands) and one asynchronous client per event loop (daphne).
"""
import asyncio
import weakref

import redis
import redis.asyncio
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .conf import option

_sync_client = None
_async_clients = weakref.WeakKeyDictionary()

#: Seconds a connect or a command's reply may take before it fails with
#: redis.TimeoutError. Vanilla runs no blocking commands, so only a Redis
#: that has stopped answering takes this long; without a limit, it would
#: hold subscribes, publications and the janitor forever.
COMMAND_TIMEOUT = 10.0


def _client_options():
    """What both clients' connections share."""
    return dict(
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=COMMAND_TIMEOUT,
        socket_connect_timeout=COMMAND_TIMEOUT,
    )


def sync_client():
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(
            settings.REDIS_URL, socket_keepalive=True, **_client_options()
        )
    return _sync_client


def async_client():
    """
    The asyncio client of the running loop: a pool of at most
    ``VANILLA["REDIS_CONNECTIONS"]``, that waits when all are busy. Redis runs
    one command at a time, so more connections buy little but memory: a
    storm of subscribes opened all of 200 before, about 20 KB each.
    """
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        size = option("REDIS_CONNECTIONS")
        if not isinstance(size, int) or size < 1:
            raise ImproperlyConfigured(
                f"VANILLA['REDIS_CONNECTIONS'] must be a whole number above 0, "
                f"not {size!r}"
            )
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=size, timeout=10, **_client_options()
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


def reset_clients():
    """Forget cached clients (tests switch Redis databases between runs)."""
    global _sync_client
    _sync_client = None
    _async_clients.clear()


def script(client, text):
    """A Lua script bound to ``client``; redis-py loads it by sha once."""
    scripts = client.__dict__.setdefault("_vanilla_scripts", {})
    bound = scripts.get(text)
    if bound is None:
        bound = scripts[text] = client.register_script(text)
    return bound


def queue_script(pipe, text, keys, args):
    """
    Queue a Lua script on a pipeline by its text. redis-py would queue it by
    sha and ask SCRIPT EXISTS before every execute, a round trip more; Redis
    keeps the compiled script in its cache either way.
    """
    return pipe.eval(text, len(keys), *keys, *args)


class Keys:
    """Names of every Redis key and channel Vanilla uses, under one prefix."""

    def __init__(self, prefix=None):
        self.prefix = prefix or option("REDIS_PREFIX")

    # Per topic.
    def seq(self, topic_key):
        return f"{self.prefix}:seq:{topic_key}"

    def history(self, topic_key):
        return f"{self.prefix}:history:{topic_key}"

    def channel(self, topic_key):
        return f"{self.prefix}:pub:{topic_key}"

    def topic_key_of_channel(self, channel):
        return channel[len(self.prefix) + 5 :]

    # Cluster-wide tables.
    @property
    def counts(self):
        """Hash: topic -> subscriptions over every live process."""
        return f"{self.prefix}:counts"

    @property
    def topics(self):
        """Hash: topic -> JSON {source, params} of every counted topic."""
        return f"{self.prefix}:topics"

    @property
    def states(self):
        """Hash: topic -> SourceState of every running source."""
        return f"{self.prefix}:states"

    @property
    def started(self):
        """Hash: topic -> epoch ms when the source was started."""
        return f"{self.prefix}:started"

    @property
    def last_publication(self):
        """Hash: topic -> epoch ms of the latest publication."""
        return f"{self.prefix}:last"

    @property
    def idle(self):
        """Sorted set: topic -> epoch ms when it stops unless watched again."""
        return f"{self.prefix}:idle"

    @property
    def processes(self):
        """Sorted set: process id -> epoch ms when its lease runs out."""
        return f"{self.prefix}:processes"

    @property
    def process_info(self):
        """Hash: process id -> JSON {host, pid, started, connections}."""
        return f"{self.prefix}:process-info"

    def process(self, process_id):
        """Hash: topic -> subscriptions held by one process."""
        return f"{self.prefix}:process:{process_id}"
