"""
The websocket consumer: Vanilla's protocol (docs/protocol.md) on one
connection.

A connection holds subscriptions by the ids its client chose. Several
subscriptions to the same topic share one hub membership, but each counts in
the subscription registry. Every frame to the client goes through one bounded
outbox, so replies, history and live publications keep their order and a slow
reader meets its source's overflow policy instead of growing memory.
"""
import asyncio
import json
import logging
import time
from collections import Counter, deque

from channels.generic.websocket import AsyncWebsocketConsumer

from . import backpressure
from .conf import option, source_registry
from .connection import Keys, async_client
from .exceptions import (
    InvalidParams,
    ProtocolError,
    SourceDoesNotExist,
    SubscriptionForbidden,
)
from .node import get_node
from .protocol import ClientOp, CloseCode, ErrorCode, ServerOp, SourceState
from .topics import Topic, canonical_json

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 128
DATA_PREFIX = '{"seq":'


def encode(frame):
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def seq_of(message):
    """The seq of a publication as published, without decoding it all."""
    return int(message[7 : message.index(",", 7)])


class Subscription:
    """One subscription id of one connection."""

    __slots__ = ("id", "id_json", "topic", "source", "last_seq", "pending")

    def __init__(self, id, topic, source):
        self.id = id
        self.id_json = json.dumps(id, ensure_ascii=False)
        self.topic = topic
        self.source = source
        self.last_seq = 0
        # Live publications that arrive while history is read: (seq, message).
        self.pending = []

    @property
    def syncing(self):
        return self.pending is not None

    def frame(self, message):
        return '{"op":"data","id":' + self.id_json + "," + message[1:]


class RateLimiter:
    """A token bucket: ``rate`` frames a second, bursts of ``burst``."""

    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def allow(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class SubscriptionConsumer(AsyncWebsocketConsumer):
    """Speaks the subscription protocol; knows sources only by name."""

    # --- connection lifecycle --------------------------------------------------

    async def connect(self):
        self.node = get_node()
        self.subscriptions = {}
        self.by_topic = {}
        self.outbox = deque()
        self.outbox_limit = option("OUTBOX_SIZE")
        self.dropped = Counter()
        self.errors = Counter()
        self.limiter = RateLimiter(option("RATE_LIMIT"), option("RATE_BURST"))
        self.violations = 0
        self.closing = False
        self.wakeup = asyncio.Event()
        self.writer = None
        if len(self.node.connections) >= option("MAX_CONNECTIONS"):
            logger.warning(
                "refused a connection: this process holds %d",
                len(self.node.connections),
            )
            await self.accept()
            await self.close(code=CloseCode.SERVER_FULL)
            return
        await self.accept()
        self.node.attach(self)
        self.pressure = backpressure.watch(self.base_send, self.wakeup.set)
        self.writer = asyncio.create_task(self.write_loop())
        logger.debug("connection %s opened", self.channel_name)

    async def disconnect(self, code):
        if self.writer is None:
            return
        self.writer.cancel()
        self.node.detach(self)
        subscriptions = list(self.subscriptions.values())
        self.subscriptions.clear()
        self.by_topic.clear()
        for subscription in subscriptions:
            try:
                await self.node.unsubscribe(subscription.topic, self, leave=True)
            except Exception:
                # The registry restores exact counts from memory on its next
                # lease renewal; the hub ignores a member it does not hold.
                logger.warning(
                    "could not uncount %s on disconnect", subscription.topic.key,
                    exc_info=True,
                )
        if self.errors:
            logger.info(
                "connection %s closed (%s) after errors %s",
                self.channel_name, code, dict(self.errors),
            )

    # --- inbound frames --------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing or self.writer is None:
            return
        if not self.limiter.allow():
            await self.rate_limited()
            return
        if bytes_data is not None:
            self.reply_error(None, ErrorCode.BAD_FRAME, "binary frames are not accepted")
            return
        if len(text_data) * 4 > option("MAX_FRAME_BYTES") and (
            len(text_data.encode()) > option("MAX_FRAME_BYTES")
        ):
            self.note_error(ErrorCode.BAD_FRAME, "frame larger than the limit")
            self.closing = True
            await self.close(code=CloseCode.MESSAGE_TOO_BIG)
            return
        try:
            frame = self.parse(text_data)
            await self.handle(frame)
        except ProtocolError as error:
            self.reply_error(error.id, error.code, error.message)
        except Exception:
            logger.error("frame failed on %s", self.channel_name, exc_info=True)
            self.reply_error(None, ErrorCode.INTERNAL, "the server failed on this frame")

    def parse(self, text):
        try:
            frame = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"the frame is not valid JSON: {exc}") from None
        if not isinstance(frame, dict):
            raise ProtocolError(
                f"a frame must be a JSON object, got {type(frame).__name__}"
            )
        return frame

    async def handle(self, frame):
        op = frame.get("op")
        if op == ClientOp.SUBSCRIBE:
            await self.subscribe(frame)
        elif op == ClientOp.UNSUBSCRIBE:
            await self.unsubscribe(frame)
        elif op == ClientOp.PING:
            self.send_frame({"op": ServerOp.PONG})
        else:
            raise ProtocolError(
                f"unknown op {op!r}; expected one of "
                f"{', '.join(op.value for op in ClientOp)}",
                code=ErrorCode.UNKNOWN_OP,
                id=_id_or_none(frame.get("id")),
            )

    async def rate_limited(self):
        self.violations += 1
        if self.violations == 1 or self.violations % 100 == 0:
            self.reply_error(
                None, ErrorCode.RATE_LIMITED, "too many frames; this one was dropped"
            )
        if self.violations > option("RATE_BURST"):
            self.closing = True
            await self.close(code=CloseCode.RATE_LIMITED)

    # --- subscribe and unsubscribe ---------------------------------------------

    async def subscribe(self, frame):
        id = self.check_id(frame, new=True)
        name = frame.get("source")
        params = frame.get("params", {})
        since = frame.get("since")
        if since is not None and (type(since) is not int or since < 0):
            raise ProtocolError(
                "since must be a non-negative integer seq", code=ErrorCode.BAD_FRAME, id=id
            )
        if len(self.subscriptions) >= option("MAX_SUBSCRIPTIONS"):
            raise ProtocolError(
                f"a connection may hold {option('MAX_SUBSCRIPTIONS')} subscriptions",
                code=ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                id=id,
            )
        source, params = self.resolve(id, name, params)
        topic = Topic.of(source.name, params)

        # Count it, join the hub, start the source if nobody watched it.
        subscription = Subscription(id, topic, source)
        siblings = self.by_topic.setdefault(topic.key, {})
        siblings[id] = subscription
        self.subscriptions[id] = subscription
        try:
            await self.node.subscribe(topic, self, join=len(siblings) == 1)
        except BaseException:
            self.forget(subscription)
            raise

        # Reply, then what the client missed or the latest value, then live.
        await self.catch_up(subscription, since, announce=True)
        logger.debug("%s subscribed %s to %s", self.channel_name, id, topic.key)

    def resolve(self, id, name, params):
        if not isinstance(name, str):
            raise ProtocolError(
                "source must be a string", code=ErrorCode.UNKNOWN_SOURCE, id=id
            )
        try:
            source = source_registry().get(name)
        except SourceDoesNotExist as exc:
            raise ProtocolError(str(exc), code=ErrorCode.UNKNOWN_SOURCE, id=id) from None
        try:
            source.check_access(self.scope.get("user"))
        except SubscriptionForbidden as exc:
            raise ProtocolError(str(exc), code=ErrorCode.FORBIDDEN, id=id) from None
        if not isinstance(params, dict):
            raise ProtocolError(
                "params must be a JSON object", code=ErrorCode.INVALID_PARAMS, id=id
            )
        if len(canonical_json(params).encode()) > option("MAX_PARAMS_BYTES"):
            raise ProtocolError(
                f"params are larger than {option('MAX_PARAMS_BYTES')} bytes",
                code=ErrorCode.INVALID_PARAMS,
                id=id,
            )
        try:
            return source, source.clean_params(params)
        except InvalidParams as exc:
            raise ProtocolError(
                f"invalid params for {name}: {exc}", code=ErrorCode.INVALID_PARAMS, id=id
            ) from None

    async def unsubscribe(self, frame):
        id = self.check_id(frame, new=False)
        subscription = self.subscriptions.get(id)
        if subscription is None:
            raise ProtocolError(
                f"no subscription has the id {id!r}", code=ErrorCode.UNKNOWN_ID, id=id
            )
        leave = self.forget(subscription)
        self.send_frame({"op": ServerOp.UNSUBSCRIBED, "id": id})
        await self.node.unsubscribe(subscription.topic, self, leave=leave)

    def forget(self, subscription):
        """Drop a subscription locally; True if it was the topic's last here."""
        self.subscriptions.pop(subscription.id, None)
        siblings = self.by_topic.get(subscription.topic.key, {})
        siblings.pop(subscription.id, None)
        if siblings:
            return False
        self.by_topic.pop(subscription.topic.key, None)
        return True

    def check_id(self, frame, new):
        id = frame.get("id")
        if not isinstance(id, str) or not 0 < len(id) <= MAX_ID_LENGTH:
            raise ProtocolError(
                f"id must be a string of 1 to {MAX_ID_LENGTH} characters",
                code=ErrorCode.INVALID_ID,
                id=_id_or_none(id),
            )
        if new and id in self.subscriptions:
            raise ProtocolError(
                f"the id {id!r} is in use by a live subscription",
                code=ErrorCode.DUPLICATE_ID,
                id=id,
            )
        return id

    # --- history and resume ----------------------------------------------------

    async def catch_up(self, subscription, since, announce=False):
        """
        Send what ``subscription`` missed after ``since`` from the topic's
        history (or the latest publication when ``since`` is None or the
        history does not reach back that far), then release the live
        publications that arrived meanwhile, without gap or duplicate.
        """
        key = Keys().history(subscription.topic.key)
        client = async_client()
        resumed = None
        if since is None:
            entries = await client.xrevrange(key, count=1)
        else:
            oldest = await client.xrange(key, count=1)
            newest = await client.xrevrange(key, count=1)
            newest_seq = int(newest[0][0].split("-")[0]) if newest else 0
            oldest_seq = int(oldest[0][0].split("-")[0]) if oldest else 1
            resumed = oldest_seq <= since + 1 and since <= newest_seq
            if resumed:
                entries = await client.xrange(key, min=f"{since + 1}-0")
                subscription.last_seq = since
            else:
                entries = newest
        if announce:
            await self.announce(subscription, resumed)
        for _, fields in entries:
            self.deliver_one(subscription, seq_of(fields["m"]), fields["m"])
        pending, subscription.pending = subscription.pending, None
        for seq, message in pending:
            self.deliver_one(subscription, seq, message)

    async def announce(self, subscription, resumed):
        topic = subscription.topic
        reply = {
            "op": ServerOp.SUBSCRIBED,
            "id": subscription.id,
            "source": topic.source,
            "params": topic.params,
        }
        if resumed is not None:
            reply["resumed"] = resumed
        self.send_frame(reply)
        state = await async_client().hget(Keys().states, topic.key)
        self.send_status(subscription, state or SourceState.STARTING, "")

    # --- outbound --------------------------------------------------------------

    def deliver(self, topic_key, message):
        """Called by the hub with a publication or a status, as published."""
        siblings = self.by_topic.get(topic_key)
        if not siblings:
            return
        if not message.startswith(DATA_PREFIX):
            for subscription in siblings.values():
                if subscription.syncing:
                    subscription.pending.append((None, message))
                else:
                    self.deliver_status(subscription, message)
            return
        seq = seq_of(message)
        for subscription in siblings.values():
            if subscription.syncing:
                subscription.pending.append((seq, message))
            elif seq > subscription.last_seq + 1 and subscription.last_seq:
                # Publications went missing between Redis and this process
                # (a reconnect): fetch them from the history first.
                subscription.pending = [(seq, message)]
                asyncio.create_task(self.fill_gap(subscription))
            else:
                self.deliver_one(subscription, seq, message)

    async def fill_gap(self, subscription):
        logger.info(
            "filling a gap after seq %d on %s",
            subscription.last_seq, subscription.topic.key,
        )
        try:
            await self.catch_up(subscription, subscription.last_seq)
        except Exception:
            logger.warning("could not fill a gap on %s", subscription.topic.key,
                           exc_info=True)
            pending, subscription.pending = subscription.pending or [], None
            for seq, message in pending:
                self.deliver_one(subscription, seq, message)

    def deliver_status(self, subscription, message):
        status = json.loads(message)
        self.send_status(subscription, status["state"], status.get("message"))

    def deliver_one(self, subscription, seq, message):
        if seq is None:
            self.deliver_status(subscription, message)
            return
        if seq <= subscription.last_seq:
            return
        subscription.last_seq = seq
        self.enqueue(subscription, subscription.frame(message))

    def send_status(self, subscription, state, message):
        frame = {
            "op": ServerOp.STATUS,
            "id": subscription.id,
            "source": subscription.topic.source,
            "params": subscription.topic.params,
            "state": state,
        }
        if message:
            frame["message"] = message
        self.enqueue(subscription, encode(frame))

    def send_frame(self, frame):
        self.enqueue(None, encode(frame))

    def reply_error(self, id, code, message):
        self.note_error(code, message)
        self.send_frame(
            {"op": ServerOp.ERROR, "id": id, "code": code, "message": message}
        )

    def note_error(self, code, message):
        """Log a client's error once per kind, not once per frame of a flood."""
        self.errors[code] += 1
        if self.errors[code] == 1:
            logger.info(
                "client error %s on %s: %s", code, self.channel_name, message
            )

    def enqueue(self, subscription, frame):
        if len(self.outbox) >= self.outbox_limit and subscription is not None:
            self.overflow(subscription)
            if self.closing:
                return
        self.outbox.append((subscription, frame))
        self.wakeup.set()

    def overflow(self, subscription):
        """The outbox is full: apply the source's overflow policy."""
        if subscription.source.overflow == "close":
            if not self.closing:
                self.closing = True
                logger.warning(
                    "closing %s: it reads too slowly for %s",
                    self.channel_name, subscription.topic.key,
                )
                self.outbox.clear()
                asyncio.create_task(self.close(code=CloseCode.SLOW_READER))
            return
        # Keep only the newest frame per subscription and everything that
        # is not a publication; tell each subscription how much it lost.
        kept = {}
        control = []
        for owner, frame in self.outbox:
            if owner is None or not frame.startswith('{"op":"data"'):
                control.append((owner, frame))
            else:
                if owner.id in kept:
                    self.dropped[owner.id] += 1
                kept[owner.id] = (owner, frame)
        if len(control) + len(kept) >= self.outbox_limit:
            # Nothing to squeeze out: the newest publication replaces the
            # oldest one queued for the same subscription.
            self.dropped[subscription.id] += 1
            kept.pop(subscription.id, None)
        self.outbox.clear()
        self.outbox.extend(control)
        self.outbox.extend(kept.values())
        for id, count in self.dropped.items():
            self.outbox.append(
                (
                    None,
                    encode(
                        {
                            "op": ServerOp.ERROR,
                            "id": id,
                            "code": ErrorCode.OVERFLOW,
                            "message": f"{count} publications were dropped "
                            "because the connection reads too slowly",
                            "dropped": count,
                        }
                    ),
                )
            )
        if self.dropped:
            self.note_error(ErrorCode.OVERFLOW, f"dropped {dict(self.dropped)}")
        self.dropped.clear()

    async def write_loop(self):
        """Drain the outbox into the socket, pausing while it is full."""
        outbox = self.outbox
        send = self.base_send
        pressure = self.pressure
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while outbox and not (pressure and pressure.paused):
                _, frame = outbox.popleft()
                await send({"type": "websocket.send", "text": frame})


def _id_or_none(value):
    return value if isinstance(value, str) and len(value) <= MAX_ID_LENGTH else None
