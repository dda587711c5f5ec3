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
from collections import Counter

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import auth, backpressure
from .conf import option, source_registry
from .connection import Keys, async_client
from .exceptions import (
    InvalidParams,
    ProtocolError,
    SourceDoesNotExist,
    SubscriptionForbidden,
)
from .frames import (
    MAX_ID_LENGTH,
    MAX_SOURCE_LENGTH,
    RateLimiter,
    frame_size,
    parse,
    shown,
    usable_id,
)
from .node import get_node
from .outbox import Outbox
from .protocol import ClientOp, CloseCode, ErrorCode, ServerOp, SourceState
from .topics import Topic, canonical_json

logger = logging.getLogger(__name__)

DATA_PREFIX = '{"seq":'
#: Seconds a slow reader has to reach the close frame (4051) before its TCP
#: connection is dropped.
SLOW_READER_LINGER = 10.0


def encode(frame):
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def seq_of(message):
    """The seq of a publication as published, without decoding it all."""
    return int(message[7 : message.index(",", 7)])


class Subscription:
    """One subscription id of one connection."""

    __slots__ = (
        "id",
        "id_json",
        "topic",
        "source",
        "last_seq",
        "pending",
        "announced",
        "dropped",
        "gap_after",
        "reread",
    )

    def __init__(self, id, topic, source):
        self.id = id
        self.id_json = json.dumps(id, ensure_ascii=False)
        self.topic = topic
        self.source = source
        self.last_seq = 0
        # Live publications that arrive while history is read: (seq, message),
        # and whether some were let go, to be read from the history instead.
        self.pending = []
        self.reread = False
        # Whether the client was told it is subscribed.
        self.announced = False
        # Publications the outbox dropped since the client was last told, and
        # the seq just before the first of them (see pubsub.outbox).
        self.dropped = 0
        self.gap_after = None

    @property
    def syncing(self):
        return self.pending is not None

    def frame(self, message):
        return '{"op":"data","id":' + self.id_json + "," + message[1:]


class SubscriptionConsumer(AsyncWebsocketConsumer):
    """Speaks the subscription protocol; knows sources only by name."""

    # --- connection lifecycle --------------------------------------------------

    async def connect(self):
        self.node = get_node()
        self.subscriptions = {}
        self.by_topic = {}
        self.outbox = Outbox(option("OUTBOX_SIZE"))
        self.errors = Counter()
        self.limiter = RateLimiter(option("RATE_LIMIT"), option("RATE_BURST"))
        self.refusals = 0
        self.last_refusal = 0.0
        self.closing = False
        self.wakeup = asyncio.Event()
        # Set when the writer has sent frames, for replays waiting for room.
        self.room = asyncio.Event()
        self.tasks = set()
        self.writer = None
        self.pressure = None
        self.token = self.scope.get(auth.GRANT_KEY)
        subprotocol = auth.chosen_subprotocol(self.scope)

        # Count the connection before the first await, so that a burst of
        # connections cannot all pass the check at once.
        if len(self.node.connections) >= option("MAX_CONNECTIONS"):
            await self.refuse_full(subprotocol)
            return
        self.node.attach(self)
        backpressure.limit_message_size(self.scope, option("MAX_FRAME_BYTES"))
        self.pressure = backpressure.watch(self.scope, self.wakeup.set)
        self.writer = asyncio.create_task(self.write_loop())
        if self.token is not None:
            auth.token_watch().add(self.token, self)
        await self.accept(subprotocol)
        logger.debug("connection %s opened", self.channel_name)

    async def refuse_full(self, subprotocol):
        """
        Accept only to close with 4052, which tells the client to come back
        later. A flood of refusals is logged once, when it begins.
        """
        if self.node.refuse():
            logger.warning(
                "process %s holds %d connections, the maximum: refusing more",
                self.node.registry.process_id,
                len(self.node.connections),
            )
        else:
            logger.debug("refused connection %s: the process is full", self.channel_name)
        self.closing = True
        await self.accept(subprotocol)
        await self.close(code=CloseCode.SERVER_FULL)

    async def disconnect(self, code):
        if self.writer is None:
            return
        self.writer.cancel()
        for task in list(self.tasks):
            task.cancel()
        self.closing = True
        self.node.detach(self)
        if self.token is not None:
            auth.token_watch().discard(self.token, self)
        subscriptions = list(self.subscriptions.values())
        self.subscriptions.clear()
        self.by_topic.clear()
        for subscription in subscriptions:
            await self.uncount(subscription, leave=True)
        if self.errors or self.outbox.dropped:
            logger.info(
                "connection %s closed (%s) after errors %s; %d publications dropped",
                self.channel_name,
                code,
                ", ".join(f"{kind}: {count}" for kind, count in self.errors.items())
                or "none",
                self.outbox.dropped,
            )

    async def close(self, code=None, reason=None):
        # autobahn, daphne's websocket library, refuses an IntEnum close code
        # (it checks for exactly int) and fails the connection with 1011.
        await super().close(code=None if code is None else int(code), reason=reason)

    async def revoke(self, reason):
        """Close at once with 4003: the credentials are no longer valid."""
        if self.closing:
            return
        logger.info("closing %s: %s", self.channel_name, reason)
        self.closing = True
        self.outbox.clear()
        await self.close(code=CloseCode.FORBIDDEN)

    # --- inbound frames --------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing or self.writer is None:
            return
        if not self.limiter.allow():
            await self.rate_limited()
            return
        size = frame_size(text_data, bytes_data)
        if size > option("MAX_FRAME_BYTES"):
            await self.close_too_big(size)
        elif bytes_data is not None:
            self.reply_error(None, ErrorCode.BAD_FRAME, "binary frames are not accepted")
        else:
            await self.answer(text_data)

    async def answer(self, text):
        """Handle one text frame; every failure becomes an error frame."""
        frame = None
        try:
            frame = parse(text)
            await self.handle(frame)
        except ProtocolError as error:
            self.reply_error(error.id, error.code, error.message)
        except Exception:
            id = frame.get("id") if isinstance(frame, dict) else None
            self.fail(id if usable_id(id) else None)

    async def handle(self, frame):
        op = frame.get("op")
        if op == ClientOp.SUBSCRIBE:
            await self.subscribe(frame)
        elif op == ClientOp.UNSUBSCRIBE:
            await self.unsubscribe(frame)
        elif op == ClientOp.PING:
            self.send_frame({"op": ServerOp.PONG})
        else:
            id = frame.get("id")
            raise ProtocolError(
                f"unknown op {shown(op)}; expected one of "
                f"{', '.join(op.value for op in ClientOp)}",
                code=ErrorCode.UNKNOWN_OP,
                id=id if usable_id(id) else None,
            )

    async def rate_limited(self):
        """
        Drop a frame over the rate limit. The first refusal of a run, and every
        hundredth, is answered; a run longer than a burst closes with 4050. A
        second without refusals ends the run.
        """
        now = time.monotonic()
        if now - self.last_refusal > 1.0:
            self.refusals = 0
        self.last_refusal = now
        self.refusals += 1
        if self.refusals % 100 == 1:
            self.reply_error(
                None, ErrorCode.RATE_LIMITED, "too many frames; this one was dropped"
            )
        if self.refusals > option("RATE_BURST"):
            logger.warning("closing %s: rate limited for too long", self.channel_name)
            self.closing = True
            await self.close(code=CloseCode.RATE_LIMITED)

    async def close_too_big(self, size):
        self.note_error(
            ErrorCode.BAD_FRAME,
            f"a frame of {size} bytes is over the limit of "
            f"{option('MAX_FRAME_BYTES')}",
        )
        self.closing = True
        self.outbox.clear()
        await self.close(code=CloseCode.MESSAGE_TOO_BIG)

    # --- subscribe and unsubscribe ---------------------------------------------

    async def subscribe(self, frame):
        id = self.check_id(frame, new=True)
        since = self.check_since(frame, id)
        if len(self.subscriptions) >= option("MAX_SUBSCRIPTIONS"):
            raise ProtocolError(
                f"a connection may hold {option('MAX_SUBSCRIPTIONS')} subscriptions",
                code=ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                id=id,
            )
        source, params = await self.resolve(
            id, frame.get("source"), frame.get("params", {})
        )
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
        try:
            await self.catch_up(subscription, since, announce=True)
        except Exception:
            await self.abandon(subscription)
            raise
        logger.debug("%s subscribed %r to %s", self.channel_name, id, topic.key)

    def check_since(self, frame, id):
        since = frame.get("since")
        if since is not None and (type(since) is not int or not 0 <= since < 2**63):
            raise ProtocolError(
                "since must be a non-negative integer seq", code=ErrorCode.BAD_FRAME, id=id
            )
        return since

    async def resolve(self, id, name, params):
        """The source named ``name`` and ``params`` as it normalises them."""
        if not isinstance(name, str) or not 0 < len(name) <= MAX_SOURCE_LENGTH:
            raise ProtocolError(
                "source must be the name of a data source",
                code=ErrorCode.UNKNOWN_SOURCE,
                id=id,
            )
        try:
            source = source_registry().get(name)
        except SourceDoesNotExist as exc:
            raise ProtocolError(str(exc), code=ErrorCode.UNKNOWN_SOURCE, id=id) from None
        try:
            await self.check_access(source)
        except SubscriptionForbidden as exc:
            raise ProtocolError(str(exc), code=ErrorCode.FORBIDDEN, id=id) from None
        return source, self.clean_params(id, source, params)

    async def check_access(self, source):
        """
        Raise SubscriptionForbidden unless this connection's user may subscribe
        to ``source``. Only a check for a named permission reads the database
        (once per user and connection), so only that one leaves the event loop.
        """
        user = self.scope.get("user")
        if getattr(source, "permission", None) in (None, "authenticated"):
            source.check_access(user)
        else:
            await database_sync_to_async(source.check_access)(user)

    def clean_params(self, id, source, params):
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
            return source.clean_params(params)
        except InvalidParams as exc:
            raise ProtocolError(
                f"invalid params for {source.name}: {exc}",
                code=ErrorCode.INVALID_PARAMS,
                id=id,
            ) from None

    async def unsubscribe(self, frame):
        id = self.check_id(frame, new=False)
        subscription = self.subscriptions.get(id)
        if subscription is None:
            raise ProtocolError(
                f"no subscription has the id {shown(id)}",
                code=ErrorCode.UNKNOWN_ID,
                id=id,
            )
        leave = self.forget(subscription)
        self.send_frame({"op": ServerOp.UNSUBSCRIBED, "id": id})
        await self.uncount(subscription, leave)

    async def abandon(self, subscription):
        """Undo a subscribe that failed after it was counted."""
        leave = self.forget(subscription)
        if subscription.announced:
            self.send_frame({"op": ServerOp.UNSUBSCRIBED, "id": subscription.id})
        await self.uncount(subscription, leave)

    async def uncount(self, subscription, leave):
        try:
            await self.node.unsubscribe(subscription.topic, self, leave=leave)
        except Exception:
            # The registry restores exact counts from memory on its next
            # lease renewal; the hub ignores a member it does not hold.
            logger.warning(
                "could not uncount %s of %s",
                subscription.topic.key,
                self.channel_name,
                exc_info=True,
            )

    def forget(self, subscription):
        """Drop a subscription locally; True if it was the topic's last here."""
        self.subscriptions.pop(subscription.id, None)
        self.outbox.take_gap(subscription)
        siblings = self.by_topic.get(subscription.topic.key, {})
        siblings.pop(subscription.id, None)
        if siblings:
            return False
        self.by_topic.pop(subscription.topic.key, None)
        return True

    def check_id(self, frame, new):
        id = frame.get("id")
        if not usable_id(id):
            raise ProtocolError(
                f"id must be a string of 1 to {MAX_ID_LENGTH} characters "
                "without control characters",
                code=ErrorCode.INVALID_ID,
            )
        if new and id in self.subscriptions:
            raise ProtocolError(
                f"the id {shown(id)} is in use by a live subscription",
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

        History goes out a page at a time. A page that fills up continues in
        ``replay()``, a task that waits for room in the outbox between pages,
        so that a long resume neither overflows a reader that keeps up nor
        holds up the frames the client sends meanwhile.
        """
        key = Keys().history(subscription.topic.key)
        client = async_client()
        page = self.replay_page()
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
                entries = await client.xrange(key, min=f"{since + 1}-0", count=page)
                subscription.last_seq = since
            else:
                entries = newest
        if announce:
            await self.announce(subscription, resumed)
        self.deliver_history(subscription, entries)
        if subscription.reread or (resumed and len(entries) == page):
            self.spawn(self.replay(subscription, key))
        else:
            self.go_live(subscription)

    async def replay(self, subscription, key):
        """The rest of a subscription's history, a page at a time, then live."""
        page = self.replay_page()
        try:
            while True:
                await self.room_for(page)
                if not self.holds(subscription):
                    return
                # What arrived live so far is in the history, read next.
                subscription.pending = [
                    (seq, message) for seq, message in subscription.pending if seq is None
                ]
                subscription.reread = False
                after = subscription.last_seq
                entries = await async_client().xrange(key, min=f"{after + 1}-0", count=page)
                if not self.holds(subscription):
                    return
                if entries and seq_of(entries[0][1]["m"]) > after + 1:
                    # The history was trimmed while the client read slowly.
                    self.outbox.count_drop(
                        subscription, after + 1, seq_of(entries[0][1]["m"]) - after - 1
                    )
                self.deliver_history(subscription, entries)
                if len(entries) < page and not subscription.reread:
                    break
            self.go_live(subscription)
        except Exception:
            if self.holds(subscription):
                await self.abandon(subscription)
                self.fail(subscription.id)

    def deliver_history(self, subscription, entries):
        for _, fields in entries:
            self.deliver_one(subscription, seq_of(fields["m"]), fields["m"])

    def go_live(self, subscription):
        """Deliver what arrived during the catch-up; from now on, as it comes."""
        pending, subscription.pending = subscription.pending, None
        for seq, message in pending:
            self.deliver_one(subscription, seq, message)

    def replay_page(self):
        return max(1, self.outbox.limit // 4)

    async def room_for(self, count):
        """Wait until the outbox has room for ``count`` more frames."""
        while len(self.outbox) + count > self.outbox.limit and not self.closing:
            self.room.clear()
            await self.room.wait()

    def holds(self, subscription):
        """Whether ``subscription`` is still live on this connection."""
        return not self.closing and self.subscriptions.get(subscription.id) is subscription

    def spawn(self, coroutine):
        """Run ``coroutine`` as a task that ends with the connection."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
        subscription.announced = True
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
                self.hold(subscription, seq, message)
            elif seq > subscription.last_seq + 1 and subscription.last_seq:
                # Publications went missing between Redis and this process
                # (a reconnect): fetch them from the history first.
                subscription.pending = [(seq, message)]
                self.spawn(self.fill_gap(subscription))
            else:
                self.deliver_one(subscription, seq, message)

    def hold(self, subscription, seq, message):
        """
        Keep a live publication until the catch-up is done, at most an
        outbox's worth: beyond that, it is read from the history again.
        """
        if len(subscription.pending) < self.outbox.limit:
            subscription.pending.append((seq, message))
        else:
            subscription.reread = True

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
        self.enqueue(subscription, subscription.frame(message), seq)

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

    def fail(self, id):
        """Answer a frame the server failed on; log the first failure in full."""
        self.errors[ErrorCode.INTERNAL] += 1
        if self.errors[ErrorCode.INTERNAL] == 1:
            logger.error("a frame failed on %s", self.channel_name, exc_info=True)
        self.send_frame(
            {
                "op": ServerOp.ERROR,
                "id": id,
                "code": ErrorCode.INTERNAL,
                "message": "the server failed on this frame",
            }
        )

    def note_error(self, code, message):
        """Log a client's error once per kind, not once per frame of a flood."""
        self.errors[code] += 1
        if self.errors[code] == 1:
            logger.info("client error %s on %s: %s", code, self.channel_name, message)

    def enqueue(self, subscription, text, seq=None):
        if self.closing:
            return
        if self.outbox.put(subscription, text, seq):
            self.wakeup.set()
        else:
            self.close_slow_reader(subscription)

    def close_slow_reader(self, subscription):
        """The outbox overflowed where the policy is to close: 4051."""
        logger.warning(
            "closing %s: it reads too slowly for %s",
            self.channel_name,
            subscription.topic.key if subscription else "its replies",
        )
        self.closing = True
        self.outbox.clear()
        # The close frame queues behind what the socket already holds.
        backpressure.linger_on_close(self.scope, SLOW_READER_LINGER)
        self.closer = asyncio.ensure_future(self.close(code=CloseCode.SLOW_READER))

    def overflow_frame(self, subscription, dropped, last_seq):
        """
        The error telling a subscription that ``dropped`` publications after
        seq ``last_seq`` were lost; subscribing again with that ``since``
        brings them back from the topic's history.
        """
        self.note_error(ErrorCode.OVERFLOW, f"dropped {dropped} for {subscription.id!r}")
        return encode(
            {
                "op": ServerOp.ERROR,
                "id": subscription.id,
                "code": ErrorCode.OVERFLOW,
                "message": f"{dropped} publications after seq {last_seq} were "
                "dropped because the connection reads too slowly",
                "dropped": dropped,
                "last_seq": last_seq,
            }
        )

    async def write_loop(self):
        """Drain the outbox into the socket, pausing while it is full."""
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                await self.drain()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.error("writing to %s failed", self.channel_name, exc_info=True)
            self.closing = True
            await self.close(code=CloseCode.INTERNAL_ERROR)

    async def drain(self):
        """Send queued frames until the outbox is empty or the socket is full."""
        outbox = self.outbox
        pressure = self.pressure
        while outbox and not (pressure and pressure.paused):
            subscription, text, seq = outbox.get()
            if seq is not None:
                await self.tell_gap(subscription)
            await self.send_text(text)
        self.room.set()
        if not outbox:
            # Subscriptions that lost every publication they had queued.
            for subscription in list(outbox.gaps):
                await self.tell_gap(subscription)

    async def tell_gap(self, subscription):
        """Send the overflow error of a subscription that lost publications."""
        gap = self.outbox.take_gap(subscription)
        if gap is not None:
            await self.send_text(self.overflow_frame(subscription, *gap))

    async def send_text(self, text):
        await self.base_send({"type": "websocket.send", "text": text})
