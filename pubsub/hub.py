"""
Fan-out inside one server process.

Each process holds one Redis subscription per topic that any of its
connections watch, however many connections that is. A publication arrives
once per process, already encoded (see ``publishing``), and the hub hands the
same string to every local member, each of which only adds its subscription id
and queues it for its socket. The cost per delivery therefore does not grow
with the size of the group.
"""
import asyncio
import logging

from django.conf import settings

from .connection import Keys
from .listener import Listener

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
#: Seconds a join may take to connect and have Redis confirm the subscription.
JOIN_TIMEOUT = 10.0


class Hub:
    def __init__(self):
        self.keys = Keys()
        self.members = {}
        self._joined = {}
        self._listener = None
        self._connecting = None
        self._closing = False

    # --- membership -----------------------------------------------------------

    async def join(self, topic_key, member):
        """
        Add ``member`` (anything with ``deliver(topic_key, message)``) to the
        topic. Returns once the process receives the topic's publications, so
        that history read after this call and live messages leave no gap.
        """
        members = self.members.get(topic_key)
        if members is not None:
            members.add(member)
            await asyncio.shield(self._joined[topic_key])
            return
        self.members[topic_key] = {member}
        joined = self._joined[topic_key] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(JOIN_TIMEOUT):
                listener = await self._connected()
                if not joined.done():
                    listener.subscribe(self.keys.channel(topic_key))
                await asyncio.shield(joined)
        except BaseException:
            self.members.pop(topic_key, None)
            self._joined.pop(topic_key, None)
            if not joined.done():
                # Members that joined meanwhile wait on it: they fail too.
                joined.set_exception(ConnectionError(f"could not join {topic_key}"))
                joined.exception()  # retrieved, whether anybody waits or not
            if self._listener is not None:
                self._listener.unsubscribe(self.keys.channel(topic_key))
            raise

    async def leave(self, topic_key, member):
        members = self.members.get(topic_key)
        if members is None:
            return
        members.discard(member)
        if members:
            return
        del self.members[topic_key]
        self._joined.pop(topic_key, None)
        # Without a connection there is nothing to undo: the reconnect
        # subscribes only to the topics members hold.
        if self._listener is not None:
            self._listener.unsubscribe(self.keys.channel(topic_key))

    # --- the Redis connection ---------------------------------------------------

    async def _connected(self):
        """The listener, connecting (once, for every caller) when there is none."""
        if self._listener is not None:
            return self._listener
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self):
        listener = await Listener.open(
            settings.REDIS_URL, self._dispatch, self._subscribed, self._lost
        )
        if self._closing:
            listener.close()
            raise ConnectionError("the hub is closing")
        self._listener = listener
        return listener

    def _lost(self, listener, exc):
        if listener is not self._listener:
            return
        self._listener = None
        if self._closing:
            return
        logger.warning("lost the Redis subscription (%s); reconnecting", exc)
        self._connecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self):
        """
        Connect again and subscribe to every topic a member holds. What was
        published meanwhile is missing from the live stream; a subscription
        notices the jump in seq and reads it from the history.
        """
        failures = 0
        while not self._closing:
            try:
                listener = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                logger.warning(
                    "could not reach Redis (%s); retrying in %.1f s", exc, delay
                )
                await asyncio.sleep(delay)
                continue
            if self.members:
                listener.subscribe(*(self.keys.channel(key) for key in self.members))
            logger.info(
                "restored the Redis subscription to %d topics", len(self.members)
            )
            return listener
        raise ConnectionError("the hub is closing")

    # --- delivery -------------------------------------------------------------

    def _dispatch(self, channel, message):
        topic_key = self.keys.topic_key_of_channel(channel)
        for member in tuple(self.members.get(topic_key, ())):
            try:
                member.deliver(topic_key, message)
            except Exception:
                logger.error(
                    "delivery on %s failed for %r", topic_key, member, exc_info=True
                )

    def _subscribed(self, channel):
        joined = self._joined.get(self.keys.topic_key_of_channel(channel))
        if joined is not None and not joined.done():
            joined.set_result(None)

    async def close(self):
        # As for the janitor: the flag ends a reconnect loop should a call
        # swallow the cancellation.
        self._closing = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            try:
                await self._connecting
            except (asyncio.CancelledError, Exception):
                pass  # closing: a connect that failed or was cut short
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.members.clear()
