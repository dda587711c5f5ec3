"""
What a connection sends: the history a subscription missed, live
publications and status frames, each through the connection's bounded outbox
(``pubsub.outbox``), and the overflow errors that tell a client what a slow
read cost it.

A publication arrives from the hub already encoded, once per process; a
connection only splices its subscription id in (``Subscription.frame``), and
connections whose subscriptions share an id share that frame (``Fanout``).
While a subscription catches up on history, live publications wait in its
``pending`` list, so that the client gets each seq once and in order.
"""
import asyncio
import json
import logging

from . import backpressure
from .connection import Keys, async_client
from .protocol import CloseCode, ErrorCode, ServerOp, SourceState

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


class Fanout:
    """
    The frames of the publication the hub is handing out. The hub gives the
    same message to each member in turn, and pages mostly choose the same
    subscription ids, so a frame is built once per publication and id, not
    once per connection, and encoded for the socket once, by the first
    connection that writes it directly. Only the newest publication is kept,
    and only a small one.
    """

    #: Distinct ids kept per publication; connections beyond build their own.
    LIMIT = 64
    #: Larger publications are not kept: 64 ids of them would pin megabytes
    #: until the next publication.
    MAX_LENGTH = 16 * 1024

    __slots__ = ("message", "seq", "frames")

    def __init__(self):
        self.message = None
        self.seq = 0
        self.frames = {}

    def seq_of(self, message):
        if message is self.message:
            return self.seq
        seq = seq_of(message)
        # Identity, not equality: the hub hands out one string object per
        # publication, and this reference keeps it from being reused.
        self.frames = {}
        self.message = message if len(message) <= self.MAX_LENGTH else None
        self.seq = seq
        return seq

    def frame(self, subscription, message):
        """
        ``[text, wire bytes or None]`` of ``message`` for ``subscription``;
        ``DirectWriter.write`` fills in the bytes when it first needs them.
        """
        if message is not self.message:
            return [subscription.frame(message), None]
        frame = self.frames.get(subscription.id_json)
        if frame is None:
            frame = [subscription.frame(message), None]
            if len(self.frames) < self.LIMIT:
                self.frames[subscription.id_json] = frame
        return frame


_fanout = Fanout()


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


class Delivery:
    """
    The outbound half of ``SubscriptionConsumer``: history, live publications
    and status frames for its subscriptions, and the writer that drains its
    outbox into the socket. A frame with nothing queued before it skips the
    outbox and goes straight to the socket where daphne's allows it
    (``direct``). It uses the consumer's ``subscriptions``, ``by_topic``,
    ``outbox``, ``closing``, ``live``, ``tasks``, ``writer``, ``wakeup``,
    ``room``, ``pressure``, ``direct`` and ``writing``, and its ``abandon()``,
    ``fail()`` and ``note_error()``.
    """

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
        async with async_client().pipeline(transaction=False) as pipe:
            self.queue_catch_up(pipe, subscription, since, announce)
            replies = await pipe.execute(raise_on_error=False)
        await self.caught_up(subscription, since, announce, replies)

    def queue_catch_up(self, pipe, subscription, since, announce):
        """
        Queue the reads a catch-up starts with on ``pipe``: the ends of the
        history, and the source's state for the reply. A subscribe queues them
        on the round trip that counts the subscription.
        """
        keys = Keys()
        key = keys.history(subscription.topic.key)
        pipe.xrevrange(key, count=1)
        if since is not None:
            pipe.xrange(key, count=1)
        if announce:
            pipe.hget(keys.states, subscription.topic.key)

    async def caught_up(self, subscription, since, announce, replies):
        """The rest of ``catch_up()``, given the replies of its reads."""
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        key = Keys().history(subscription.topic.key)
        page = self.replay_page()
        newest = entries = replies[0]
        resumed = None
        if since is not None:
            oldest = replies[1]
            newest_seq = int(newest[0][0].split("-")[0]) if newest else 0
            oldest_seq = int(oldest[0][0].split("-")[0]) if oldest else 1
            resumed = oldest_seq <= since + 1 and since <= newest_seq
            if resumed:
                entries = await async_client().xrange(
                    key, min=f"{since + 1}-0", count=page
                )
                subscription.last_seq = since
                # A first subscriber's source started in between, and the
                # history may have been trimmed past ``since`` meanwhile.
                self.count_trimmed(subscription, since, entries)
        if announce:
            self.announce(subscription, resumed, replies[-1])
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
                    (seq, message)
                    for seq, message in subscription.pending
                    if seq is None
                ]
                subscription.reread = False
                after = subscription.last_seq
                entries = await async_client().xrange(
                    key, min=f"{after + 1}-0", count=page
                )
                if not self.holds(subscription):
                    return
                # The history may have been trimmed while the client read.
                self.count_trimmed(subscription, after, entries)
                self.deliver_history(subscription, entries)
                if len(entries) < page and not subscription.reread:
                    break
            self.go_live(subscription)
        except Exception:
            if self.holds(subscription):
                await self.abandon(subscription)
                self.fail(subscription.id)

    def count_trimmed(self, subscription, after, entries):
        """
        Count as dropped what the history lost between seq ``after`` and
        ``entries``, read from just after it: the client is told, as for an
        overflow, and may resubscribe to fetch what is left.
        """
        if entries:
            first = seq_of(entries[0][1]["m"])
            if first > after + 1:
                self.outbox.count_drop(subscription, after + 1, first - after - 1)

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
            if self.room is None:
                # Set when the writer has sent frames.
                self.room = asyncio.Event()
            self.room.clear()
            await self.room.wait()

    def holds(self, subscription):
        """Whether ``subscription`` is still live on this connection."""
        return (
            not self.closing and self.subscriptions.get(subscription.id) is subscription
        )

    def spawn(self, coroutine):
        """Run ``coroutine`` as a task that ends with the connection."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def announce(self, subscription, resumed, state):
        """Reply to a subscribe: subscribed, then the source's state."""
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
        seq = _fanout.seq_of(message)
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
            subscription.last_seq,
            subscription.topic.key,
        )
        try:
            await self.catch_up(subscription, subscription.last_seq)
        except Exception:
            logger.warning(
                "could not fill a gap on %s", subscription.topic.key, exc_info=True
            )
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
        frame = _fanout.frame(subscription, message)
        self.enqueue(subscription, frame[0], seq, frame)

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

    def enqueue(self, subscription, text, seq=None, frame=None):
        """
        Send ``text`` for ``subscription`` (None for a reply to the
        connection); ``frame`` is a shared ``[text, wire bytes]`` from
        ``Fanout``.
        """
        if self.closing:
            return
        # Straight to the socket when nothing is queued before this frame
        # (backpressure.DirectWriter says when the socket allows it).
        if (
            self.direct is not None
            and not self.writing
            and not self.outbox
            and not self.outbox.gaps
            and self.direct.write(text, frame)
        ):
            return
        if self.outbox.put(subscription, text, seq):
            self.wake()
        else:
            self.close_slow_reader(subscription)

    def close_slow_reader(self, subscription):
        """The outbox overflowed where the policy is to close: 4051."""
        logger.warning(
            "closing %s: it reads too slowly for %s",
            self.channel_name,
            subscription.topic.key if subscription else "its replies",
        )
        # The close frame queues behind what the socket already holds.
        backpressure.linger_on_close(self.scope, SLOW_READER_LINGER)
        self.outbox.clear()
        self.close_when_sent(CloseCode.SLOW_READER)

    def overflow_frame(self, subscription, dropped, last_seq):
        """
        The error telling a subscription that ``dropped`` publications after
        seq ``last_seq`` were lost (its outbox overflowed, or a resume found
        the history trimmed past them); subscribing again with that ``since``
        brings back what the topic's history still holds.
        """
        self.note_error(
            ErrorCode.OVERFLOW, f"dropped {dropped} for {subscription.id!r}"
        )
        return encode(
            {
                "op": ServerOp.ERROR,
                "id": subscription.id,
                "code": ErrorCode.OVERFLOW,
                "message": f"{dropped} publications after seq {last_seq} were "
                "dropped: the connection read too slowly, or the topic's history "
                "no longer held them",
                "dropped": dropped,
                "last_seq": last_seq,
            }
        )

    def wake(self):
        """Have the writer drain the outbox, starting it the first time."""
        if not self.live:
            return
        if self.writer is None:
            self.wakeup = asyncio.Event()
            self.writer = asyncio.create_task(self.write_loop())
        self.wakeup.set()

    async def write_loop(self):
        """
        Drain the outbox into the socket, pausing while it is full, and close
        when asked to once the frames queued before are sent (or the socket
        is full: a client that does not read will not read them).
        """
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                await self.drain()
                if self.close_code is not None and not self.close_sent:
                    await self.close(code=self.close_code)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.close_sent or not backpressure.socket_open(self.scope):
                # The client went away in the middle of a frame.
                logger.debug("%s closed while written to", self.channel_name)
                return
            logger.error("writing to %s failed", self.channel_name, exc_info=True)
            await self.close_now(CloseCode.INTERNAL_ERROR)

    async def drain(self):
        """Send queued frames until the outbox is empty or the socket is full."""
        outbox = self.outbox
        pressure = self.pressure
        self.writing = True
        try:
            while (
                outbox and not self.close_sent and not (pressure and pressure.paused)
            ):
                subscription, text, seq = outbox.get()
                if seq is not None:
                    await self.tell_gap(subscription)
                await self.send_text(text)
        finally:
            self.writing = False
        if self.room is not None:
            self.room.set()
        if not outbox and not self.close_sent:
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
