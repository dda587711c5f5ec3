"""
The websocket consumer: Vanilla's protocol (docs/protocol.md) on one
connection.

A connection holds subscriptions by the ids its client chose. Several
subscriptions to the same topic share one hub membership, but each counts in
the subscription registry. This module reads what the client sends and
manages its subscriptions; ``pubsub.delivery`` sends it what they publish.
Every frame to the client goes through one bounded outbox, so replies,
history and live publications keep their order and a slow reader meets its
source's overflow policy instead of growing memory.
"""
import asyncio
import logging
import time
from collections import Counter

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from . import auth, backpressure
from .conf import option, source_registry
from .delivery import Delivery, Subscription
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
from .protocol import ClientOp, CloseCode, ErrorCode, ServerOp
from .topics import Topic, canonical_json

logger = logging.getLogger(__name__)

#: Seconds a cancelled connection may take to uncount its subscriptions.
CLEANUP_TIMEOUT = 5.0


class SubscriptionConsumer(Delivery, AsyncWebsocketConsumer):
    """Speaks the subscription protocol; knows sources only by name."""

    # Publications come through the node's hub, never the channel layer: a
    # layer channel per connection would cost a receive task, Redis work and
    # about 16 KB each, for nothing.
    channel_layer_alias = None

    async def __call__(self, scope, receive, send):
        """
        Channels' message loop, less what this consumer does not use. Without
        a channel layer the client is the only source of messages, so each is
        awaited here instead of through a new task and ``asyncio.wait`` per
        message: about 0.05 ms less per frame, and one task less held by
        every idle connection.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            # daphne cancels an application still running some seconds after
            # its client left (application_close_timeout), say one whose
            # subscribe waits on a slow source start, and at shutdown. Its
            # disconnect was never handled: uncount what it holds, shielded
            # from the cancellation and bounded, so that no count outlives it.
            if getattr(self, "live", False):
                try:
                    await asyncio.wait_for(
                        asyncio.shield(self.disconnect(None)), CLEANUP_TIMEOUT
                    )
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    logger.warning(
                        "%s was cancelled before it uncounted its subscriptions",
                        self.channel_name,
                    )
            raise

    async def dispatch(self, message):
        """
        Channels closes its sync thread's old database connections before
        every message, a thread round trip (about 0.2 ms) per client frame.
        This consumer touches the database only through
        ``database_sync_to_async``, which does the same around each call, so
        its frames are handled without the hop.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    # --- connection lifecycle --------------------------------------------------

    async def connect(self):
        self.node = get_node()
        # What the logs call this connection (Channels names only layer users).
        self.channel_name = self.node.connection_name()
        self.subscriptions = {}
        self.by_topic = {}
        self.outbox = Outbox(option("OUTBOX_SIZE"))
        self.errors = Counter()
        self.limiter = RateLimiter(option("RATE_LIMIT"), option("RATE_BURST"))
        self.refusals = 0
        self.last_refusal = 0.0
        # closing: no more frames are queued. close_code: the writer closes with
        # it once the frames queued so far are sent. close_sent: the close went
        # out, and nothing may follow it.
        self.closing = False
        self.close_code = None
        self.close_sent = False
        # The writer task and its events exist once a frame has to wait in the
        # outbox: most frames go straight to the socket, and an idle
        # connection holds neither (see Delivery.wake).
        self.wakeup = None
        self.room = None
        self.writer = None
        self.tasks = set()
        self.live = False
        self.writing = False
        self.pressure = None
        self.direct = None
        self.token = self.scope.get(auth.GRANT_KEY)
        subprotocol = auth.chosen_subprotocol(self.scope)

        # Count the connection before the first await, so that a burst of
        # connections cannot all pass the check at once.
        if len(self.node.connections) >= option("MAX_CONNECTIONS"):
            await self.refuse_full(subprotocol)
            return
        self.node.attach(self)
        backpressure.limit_message_size(self.scope, option("MAX_FRAME_BYTES"))
        self.pressure = backpressure.watch(self.scope, self.wake)
        self.direct = backpressure.direct_writer(self.scope)
        self.live = True
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
            logger.debug(
                "refused connection %s: the process is full", self.channel_name
            )
        await self.accept(subprotocol)
        await self.close(code=CloseCode.SERVER_FULL)

    async def disconnect(self, code):
        if not self.live:
            return
        self.live = False
        if self.writer is not None:
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
        self.closing = True
        self.close_sent = True
        # autobahn, daphne's websocket library, refuses an IntEnum close code
        # (it checks for exactly int) and fails the connection with 1011.
        await super().close(code=None if code is None else int(code), reason=reason)

    async def close_now(self, code):
        """Close with ``code``, dropping the frames still queued."""
        self.closing = True
        self.outbox.clear()
        await self.close(code=code)

    def close_when_sent(self, code):
        """Close with ``code`` once the frames queued so far are sent."""
        self.closing = True
        self.close_code = code
        self.wake()

    async def revoke(self, reason):
        """Close at once with 4003: the credentials are no longer valid."""
        if self.closing:
            return
        logger.info("closing %s: %s", self.channel_name, reason)
        await self.close_now(CloseCode.FORBIDDEN)

    # --- inbound frames --------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing or not self.live:
            return
        if not self.limiter.allow():
            await self.rate_limited()
            return
        size = frame_size(text_data, bytes_data)
        if size > option("MAX_FRAME_BYTES"):
            await self.close_too_big(size)
        elif bytes_data is not None:
            self.reply_error(
                None, ErrorCode.BAD_FRAME, "binary frames are not accepted"
            )
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
            # The rate_limited errors go out first.
            self.close_when_sent(CloseCode.RATE_LIMITED)

    async def close_too_big(self, size):
        self.note_error(
            ErrorCode.BAD_FRAME,
            f"a frame of {size} bytes is over the limit of "
            f"{option('MAX_FRAME_BYTES')}",
        )
        await self.close_now(CloseCode.MESSAGE_TOO_BIG)

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

        # Count it and join the hub.
        subscription = Subscription(id, topic, source)
        siblings = self.by_topic.setdefault(topic.key, {})
        siblings[id] = subscription
        self.subscriptions[id] = subscription

        # The reads that begin the catch-up share the counting round trip.
        def read(pipe):
            self.queue_catch_up(pipe, subscription, since, announce=True)

        try:
            first, replies = await self.node.subscribe(
                topic, self, join=len(siblings) == 1, read=read
            )
        except BaseException:
            self.forget(subscription)
            raise

        # Counted: from here on a failure uncounts it (abandon), and so does
        # the connection's cleanup if this handler is cancelled. Start the
        # source if nobody watched it; reply, then what the client missed or
        # the latest value, then live.
        try:
            if first:
                await self.node.start(topic)
            await self.caught_up(subscription, since, True, replies)
        except Exception:
            await self.abandon(subscription)
            raise
        logger.debug("%s subscribed %r to %s", self.channel_name, id, topic.key)

    def check_since(self, frame, id):
        since = frame.get("since")
        if since is not None and (type(since) is not int or not 0 <= since < 2**63):
            raise ProtocolError(
                "since must be a non-negative integer seq",
                code=ErrorCode.BAD_FRAME,
                id=id,
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
            raise ProtocolError(
                str(exc), code=ErrorCode.UNKNOWN_SOURCE, id=id
            ) from None
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

    # --- errors ---------------------------------------------------------------

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
