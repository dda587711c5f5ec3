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

from .connection import Keys, async_client

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class Hub:
    def __init__(self):
        self.keys = Keys()
        self.members = {}
        self._joined = {}
        self._pubsub = None
        self._reader = None
        self._wake = asyncio.Event()
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
            await self._subscribe(topic_key)
            await asyncio.wait_for(asyncio.shield(joined), timeout=10)
        except BaseException:
            self.members.pop(topic_key, None)
            self._joined.pop(topic_key, None)
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
        try:
            await self._pubsub.unsubscribe(self.keys.channel(topic_key))
        except Exception:
            # The reader restores the subscriptions it needs after a
            # reconnect; an extra one only costs ignored messages.
            logger.warning("could not unsubscribe from %s", topic_key, exc_info=True)

    async def _subscribe(self, topic_key):
        if self._pubsub is None:
            self._pubsub = async_client().pubsub()
        await self._pubsub.subscribe(self.keys.channel(topic_key))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="vanilla-hub")
        self._wake.set()

    # --- delivery -------------------------------------------------------------

    async def _read(self):
        failures = 0
        while not self._closing:
            try:
                if not self._pubsub.subscribed:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                logger.warning(
                    "lost the Redis subscription; retrying in %.1f s", delay,
                    exc_info=True,
                )
                await asyncio.sleep(delay)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message):
        kind = message["type"]
        topic_key = self.keys.topic_key_of_channel(message["channel"])
        if kind == "message":
            for member in tuple(self.members.get(topic_key, ())):
                try:
                    member.deliver(topic_key, message["data"])
                except Exception:
                    logger.error(
                        "delivery on %s failed for %r", topic_key, member,
                        exc_info=True,
                    )
        elif kind == "subscribe":
            joined = self._joined.get(topic_key)
            if joined is not None and not joined.done():
                joined.set_result(None)

    async def close(self):
        # As for the janitor: the flag ends the loop should a Redis call
        # swallow the cancellation.
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        if self._pubsub is not None:
            await self._pubsub.aclose()
        self.members.clear()
