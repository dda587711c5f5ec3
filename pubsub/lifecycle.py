"""
Starting and stopping data sources on the registry's first and last
transitions, and the janitor that keeps the cluster's books.

Pub-Sub only calls ``start(topic)`` and ``stop(topic)`` on the object the
source registry returns; what starting means (a Celery beat entry, a Kafka
topology) is the source's business.
"""
import asyncio
import json
import logging
import time

from asgiref.sync import sync_to_async

from .conf import option, source_registry
from .connection import Keys, async_client
from .exceptions import SourceDoesNotExist
from .protocol import SourceState
from .publishing import aset_state
from .subscriptions import (
    claim_stops,
    claimed,
    queue_claim_stops,
    queue_reap,
    reap,
)
from .topics import Topic

logger = logging.getLogger(__name__)


def _error_status(message):
    return json.dumps({"state": SourceState.ERROR, "message": message})


async def start_source(topic):
    """Start ``topic``'s source; on failure tell subscribers and allow a retry."""
    try:
        source = source_registry().get(topic.source)
        await sync_to_async(source.start)(topic)
    except Exception as exc:
        logger.error("could not start source %s", topic.key, exc_info=True)
        client = async_client()
        keys = Keys()
        # Forget the start so that the next subscriber tries again.
        await client.hdel(keys.states, topic.key)
        await client.publish(keys.channel(topic.key), _error_status(str(exc)))
        return False
    logger.info("started source %s for %s", topic.source, topic.key)
    return True


def stop_source(topic):
    """Stop ``topic``'s source. Failures are logged: nobody is left to tell."""
    try:
        source_registry().get(topic.source).stop(topic)
    except SourceDoesNotExist:
        logger.warning("no source %r to stop for %s", topic.source, topic.key)
        return False
    except Exception:
        logger.error("could not stop source %s", topic.key, exc_info=True)
        return False
    logger.info("stopped source %s for %s", topic.source, topic.key)
    return True


def _topic(info):
    return Topic.of(info["source"], info["params"])


def upkeep():
    """
    Reap dead processes and stop sources whose grace ran out. Runs in every
    server process's janitor and as a Celery beat task, so that sources stop
    even when no server process is left.
    """
    dead = reap()
    if dead:
        logger.warning("reaped %d dead server processes: %s", len(dead), dead)
    stopped = 0
    for key, info in claim_stops():
        stopped += stop_source(_topic(info))
    return {"reaped": len(dead), "stopped": stopped}


class Janitor:
    """
    One per server process: renews the process lease, starts sources that a
    lease restore found unstarted, reaps dead processes, stops idle sources
    and marks silent ones stale. It logs and retries; it never dies quietly.
    """

    def __init__(self, registry):
        self.registry = registry
        self.task = None
        self.stopping = False

    def ensure_running(self):
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name="vanilla-janitor")

    async def run(self):
        interval = option("JANITOR_INTERVAL")
        failures = 0
        while not self.stopping:
            try:
                await self.tick()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.warning(
                    "janitor tick failed (%d in a row); retrying", failures,
                    exc_info=True,
                )
            await asyncio.sleep(interval * min(1 + failures, 5))

    async def tick(self):
        """
        One round of upkeep, its Redis work in one pipeline: the books of a
        quiet server cost one round trip a second, not one per task.
        """
        registry = self.registry
        keys = Keys()
        async with async_client().pipeline(transaction=False) as pipe:
            registry.queue_renewal(pipe)
            queue_reap(pipe)
            queue_claim_stops(pipe)
            pipe.hgetall(keys.states)
            pipe.hgetall(keys.last_publication)
            pipe.hgetall(keys.topics)
            replies = await pipe.execute(raise_on_error=False)
        # A command that failed spoils only its own part: stops claimed by
        # CLAIM_STOPS are this process's to carry out whatever else failed.
        # Stops go before the starts of a restored lease: a topic whose count
        # the lost lease took to zero may be claimed above and be watched
        # here again, and it must end up running.
        renewed, _, dead, stops, states, last, topics = replies
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if not isinstance(stops, Exception):
            for key, info in claimed(stops):
                await sync_to_async(stop_source)(_topic(info))
        if dead and not isinstance(dead, Exception):
            logger.warning("reaped %d dead server processes: %s", len(dead), dead)
        if not isinstance(renewed, Exception):
            for key in await registry.renewed(renewed):
                await start_source(registry.topics[key])
        if errors:
            raise errors[0]
        await self.mark_stale(states, last, topics)

    async def mark_stale(self, states, last, topics):
        """Mark live topics whose source has been silent too long as stale."""
        now = time.time() * 1000
        for key, state in states.items():
            if state != SourceState.LIVE or key not in last or key not in topics:
                continue
            stale_after = self._stale_after(json.loads(topics[key])["source"])
            if stale_after and now - int(last[key]) > stale_after * 1000:
                await aset_state(
                    key,
                    SourceState.STALE,
                    f"no publication for {stale_after:g} s",
                    only_if=SourceState.LIVE,
                )

    def _stale_after(self, name):
        try:
            return getattr(source_registry().get(name), "stale_after", None)
        except SourceDoesNotExist:
            return None

    async def stop(self):
        if self.task is not None:
            # The flag ends the loop even if a library swallowed the
            # cancellation (a Redis call whose own timeout fired at the same
            # moment reports it as a TimeoutError).
            self.stopping = True
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
