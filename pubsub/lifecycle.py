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

from channels.db import database_sync_to_async

from .conf import option, source_registry
from .connection import Keys, async_client
from .exceptions import SourceDoesNotExist
from .protocol import SourceState
from .publishing import aset_state
from .subscriptions import (
    claim_stops,
    claimed,
    now_ms,
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
        await database_sync_to_async(source.start)(topic)
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


def _earliest(*times):
    """The earliest of ``times`` that are not None, or None."""
    return min((t for t in times if t is not None), default=None)


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

    It wakes every ``JANITOR_INTERVAL`` seconds but goes to Redis only when
    there is something to do: a full round every sixth of the lease (or every
    interval, if that is longer), and in between a claim when a stop it knows
    of falls due. It knows of the stops its own last unsubscribes begin
    (``expect_stop()``) and of the earliest one on the idle list at its last
    claim, whoever put it there. A quiet process so costs one round trip
    every few seconds, and a grace period still ends within an interval.
    """

    def __init__(self, registry):
        self.registry = registry
        self.task = None
        self.stopping = False
        # When the next stop known to this process falls due (ms since the
        # epoch), and the earliest begun here since the last claim was sent.
        self.next_stop = None
        self.noted = None
        self.last_round = None

    def ensure_running(self):
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name="vanilla-janitor")

    def expect_stop(self):
        """This process's unsubscribe left a topic unwatched: its grace began."""
        due = now_ms() + option("STOP_GRACE") * 1000
        self.noted = _earliest(self.noted, due)
        self.next_stop = _earliest(self.next_stop, due)

    async def run(self):
        interval = option("JANITOR_INTERVAL")
        failures = 0
        while not self.stopping:
            try:
                await self.step()
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

    async def step(self):
        every = max(option("JANITOR_INTERVAL"), option("PROCESS_LEASE") / 6)
        if self.last_round is None or time.monotonic() - self.last_round >= every:
            await self.tick()
        elif self.next_stop is not None and now_ms() >= self.next_stop:
            await self.claim()

    async def tick(self):
        """
        A full round, its Redis work in one pipeline: renew the lease, reap,
        claim due stops, and read what staleness needs.
        """
        registry = self.registry
        keys = Keys()
        watched = self.watched_for_staleness()
        self.noted = None
        async with async_client().pipeline(transaction=False) as pipe:
            registry.queue_renewal(pipe)
            queue_reap(pipe)
            queue_claim_stops(pipe)
            if watched:
                pipe.hmget(keys.states, list(watched))
                pipe.hmget(keys.last_publication, list(watched))
            replies = await pipe.execute(raise_on_error=False)
        # A command that failed spoils only its own part: stops claimed by
        # CLAIM_STOPS are this process's to carry out whatever else failed.
        # Stops go before the starts of a restored lease: a topic whose count
        # the lost lease took to zero may be claimed above and be watched
        # here again, and it must end up running.
        renewed, _, dead, stops = replies[:4]
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if not isinstance(stops, Exception):
            await self.carry_out(stops)
        if dead and not isinstance(dead, Exception):
            logger.warning("reaped %d dead server processes: %s", len(dead), dead)
        if not isinstance(renewed, Exception):
            for key in await registry.renewed(renewed):
                await start_source(registry.topics[key])
        if errors:
            raise errors[0]
        if watched:
            await self.mark_stale(watched, *replies[4:])
        self.last_round = time.monotonic()

    async def claim(self):
        """Claim the stops that fell due since the last round."""
        self.noted = None
        async with async_client().pipeline(transaction=False) as pipe:
            queue_claim_stops(pipe)
            (stops,) = await pipe.execute()
        await self.carry_out(stops)

    async def carry_out(self, reply):
        stops, after = claimed(reply)
        # A stop begun here while the claim was under way may be missing from
        # its reply.
        self.next_stop = _earliest(after, self.noted)
        for key, info in stops:
            await database_sync_to_async(stop_source)(_topic(info))

    def watched_for_staleness(self):
        """Topic key -> stale_after, for this process's topics that have one."""
        watched = {}
        for key, topic in self.registry.topics.items():
            stale_after = self._stale_after(topic.source)
            if stale_after:
                watched[key] = stale_after
        return watched

    async def mark_stale(self, watched, states, last):
        """
        Mark live topics whose source has been silent too long as stale. Each
        process looks after the topics it serves; a topic nobody serves is
        stopping anyway.
        """
        now = time.time() * 1000
        for (key, stale_after), state, at in zip(watched.items(), states, last):
            if state != SourceState.LIVE or at is None:
                continue
            if now - int(at) > stale_after * 1000:
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
