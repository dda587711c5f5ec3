"""
The limits on one connection and one process: frame size, subscriptions,
inbound rate, the bounded outbox with its overflow policies, and the number
of connections. Each has a safe default and a ``VANILLA`` setting.
"""

import asyncio
import logging
import time

import pytest

from pubsub.conf import DEFAULTS
from pubsub.connection import Keys, sync_client
from pubsub.exceptions import PublicationTooLarge
from pubsub.outbox import Outbox
from pubsub.publishing import apublish, publish
from pubsub.subscriptions import snapshot
from pubsub.topics import Topic

from . import sources
from .helpers import (
    FakeSocket,
    closed_with,
    connect,
    receive,
    receive_until,
    send,
    subscribe,
)

pytestmark = pytest.mark.integration


def limit(settings, **values):
    settings.VANILLA = {**settings.VANILLA, **values}


def ping_of_size(size):
    """A ping frame of exactly ``size`` bytes."""
    head, tail = '{"op":"ping","pad":"', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


async def wait_until(predicate, timeout=3):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def connection_of(node):
    (connection,) = node.connections
    return connection


# --- frame size -----------------------------------------------------------------


LIMITS = (
    "MAX_FRAME_BYTES",
    "MAX_PARAMS_BYTES",
    "MAX_SUBSCRIPTIONS",
    "MAX_CONNECTIONS",
    "OUTBOX_SIZE",
    "RATE_LIMIT",
    "RATE_BURST",
    "TOKEN_CHECK_INTERVAL",
)


def test_limit_defaults(settings):
    """The defaults the issue asks for; the site's settings agree with them."""
    assert {name: settings.VANILLA[name] for name in LIMITS} == {
        name: DEFAULTS[name] for name in LIMITS
    }
    assert DEFAULTS["MAX_FRAME_BYTES"] == 64 * 1024
    assert DEFAULTS["MAX_PARAMS_BYTES"] == 4 * 1024
    assert DEFAULTS["MAX_SUBSCRIPTIONS"] == 100
    assert DEFAULTS["MAX_CONNECTIONS"] == 10000
    assert DEFAULTS["OUTBOX_SIZE"] == 1000
    assert (DEFAULTS["RATE_LIMIT"], DEFAULTS["RATE_BURST"]) == (50.0, 200)


async def test_a_frame_of_exactly_64_kib_is_answered(node):
    """The default limit lets a frame of 65536 bytes through."""
    client = await connect()

    await send(client, ping_of_size(64 * 1024))

    assert await receive(client) == {"op": "pong"}
    await client.disconnect()


async def test_a_frame_one_byte_over_64_kib_closes_with_1009(node, caplog):
    """One byte over the default limit closes the connection with 1009, logged once."""
    caplog.set_level(logging.INFO, logger="pubsub.consumers")
    client = await connect()

    await send(client, ping_of_size(64 * 1024 + 1))

    assert await closed_with(client) == 1009
    assert sum("65537 bytes" in r.getMessage() for r in caplog.records) == 1


async def test_the_frame_limit_counts_utf8_bytes_not_characters(node):
    """Three-byte characters that fit as characters but not as bytes close 1009."""
    client = await connect()
    frame = '{"op":"ping","pad":"' + "€" * 22000 + '"}'
    assert len(frame) < 64 * 1024 < len(frame.encode())

    await send(client, frame)

    assert await closed_with(client) == 1009


# --- subscriptions per connection -------------------------------------------------


async def test_the_101st_subscription_is_refused_by_default(node):
    """A connection holds at most 100 subscriptions; one more is refused, not fatal."""
    client = await connect()
    for n in range(100):
        await subscribe(client, f"s{n}", {"room": "many"})

    await send(client, {"op": "subscribe", "id": "s100", "source": "chat"})
    error = await receive(client)
    await send(client, {"op": "unsubscribe", "id": "s0"})
    await receive_until(client, "unsubscribed")

    assert (error["code"], error["id"]) == ("too_many_subscriptions", "s100")
    await subscribe(client, "s100")
    await client.disconnect()


async def test_max_subscriptions_is_a_setting(node, settings):
    """VANILLA["MAX_SUBSCRIPTIONS"] sets the limit."""
    limit(settings, MAX_SUBSCRIPTIONS=2)
    client = await connect()
    await subscribe(client, "a")
    await subscribe(client, "b")

    await send(client, {"op": "subscribe", "id": "c", "source": "chat"})

    assert (await receive(client))["code"] == "too_many_subscriptions"
    await client.disconnect()


# --- inbound rate -----------------------------------------------------------------


async def test_a_flood_gets_rate_limited_then_closed_with_4050(node, settings, caplog):
    """
    Past the burst a frame is dropped with `rate_limited`, answered once per
    run rather than per frame; a run longer than a burst closes with 4050.
    Each is logged once.
    """
    caplog.set_level(logging.INFO, logger="pubsub.consumers")
    limit(settings, RATE_LIMIT=1.0, RATE_BURST=10)
    client = await connect()

    for _ in range(25):
        await send(client, {"op": "ping"})
    frames = []
    while True:
        message = await client.receive_output(timeout=3)
        if message["type"] == "websocket.close":
            break
        frames.append(message["text"])

    assert message["code"] == 4050
    assert frames[:10] == ['{"op":"pong"}'] * 10
    assert len(frames) == 11 and '"code":"rate_limited"' in frames[10]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("client error rate_limited" in line for line in lines) == 1
    assert sum("rate limited for too long" in line for line in lines) == 1


async def test_a_client_that_slows_down_is_served_again(node, settings):
    """Refused frames do not close a client that keeps under the rate afterwards."""
    limit(settings, RATE_LIMIT=20.0, RATE_BURST=5)
    client = await connect()
    for _ in range(7):
        await send(client, {"op": "ping"})
    replies = [await receive(client) for _ in range(6)]
    assert replies[-1]["code"] == "rate_limited"

    for _ in range(5):
        await asyncio.sleep(0.06)
        await send(client, {"op": "ping"})
        assert await receive(client) == {"op": "pong"}
    await client.disconnect()


# --- the outbox -------------------------------------------------------------------


class Sub:
    """A subscription as the outbox sees it: a source with a policy, counters."""

    def __init__(self, overflow="latest"):
        self.source = type("Source", (), {"overflow": overflow})()
        self.dropped = 0
        self.gap_after = None


def test_outbox_keeps_the_newest_publication_of_each_subscription():
    """Full, with the "latest" policy: older publications go, replies stay."""
    outbox = Outbox(4)
    a, b = Sub(), Sub()
    outbox.put(None, "reply")
    for seq in (1, 2, 3):
        outbox.put(a, f"a{seq}", seq)

    assert outbox.put(b, "b7", 7)
    assert outbox.put(a, "a4", 4)

    assert [text for _, text, _ in outbox.frames] == ["reply", "a3", "b7", "a4"]
    assert (a.dropped, b.dropped, outbox.dropped) == (2, 0, 2)
    assert outbox.take_gap(a) == (2, 0)
    assert outbox.take_gap(a) is None and outbox.take_gap(b) is None


def test_outbox_gap_starts_before_the_lowest_dropped_seq():
    """When the newest queued publication is replaced, the gap starts before it."""
    outbox = Outbox(3)
    a, b, c = Sub(), Sub(), Sub()
    outbox.put(a, "a10", 10)
    outbox.put(b, "b1", 1)
    outbox.put(c, "c1", 1)

    outbox.put(a, "a11", 11)
    outbox.put(a, "a12", 12)

    assert [text for _, text, _ in outbox.frames] == ["b1", "c1", "a12"]
    assert outbox.take_gap(a) == (2, 9)


def test_outbox_drops_the_new_publication_when_nothing_else_can_go():
    """Full of replies and other subscriptions' newest: the newcomer is dropped."""
    outbox = Outbox(2)
    a, b = Sub(), Sub()
    outbox.put(None, "reply")
    outbox.put(b, "b1", 1)

    assert outbox.put(a, "a5", 5)

    assert [text for _, text, _ in outbox.frames] == ["reply", "b1"]
    assert outbox.take_gap(a) == (1, 4)


def test_outbox_close_policy_and_unread_replies_ask_to_close():
    """A "close" source's publication, or a reply, that finds no room: False."""
    outbox = Outbox(2)
    strict = Sub(overflow="close")
    outbox.put(strict, "s1", 1)
    outbox.put(strict, "s2", 2)

    assert outbox.put(strict, "s3", 3) is False
    assert outbox.put(None, "reply") is False
    assert len(outbox) == 2 and outbox.dropped == 0


async def test_a_slow_reader_gets_the_newest_and_an_overflow_it_can_resume_from(
    node, settings, caplog
):
    """
    While the socket is full, a "latest" subscription keeps only its newest
    publications; the client is told how many it lost and after which seq,
    and a subscribe with that `since` brings them back.
    """
    caplog.set_level(logging.INFO, logger="pubsub.consumers")
    limit(settings, OUTBOX_SIZE=10)
    socket = FakeSocket()
    client = await connect(socket.application())
    await subscribe(client, "t", {"room": "slow"})
    topic = Topic.of("chat", {"room": "slow", "size": 1})
    await apublish(topic, 1)
    await receive_until(client, "data")
    await receive_until(client, "status")
    connection = connection_of(node)

    # Phase: the socket fills; 40 publications arrive meanwhile.
    socket.pause()
    for n in range(2, 42):
        await apublish(topic, n)
    await wait_until(lambda: connection.subscriptions["t"].last_seq == 41)
    socket.resume()

    # Phase: the overflow, then the newest publications, up to the outbox's size.
    overflow = await receive(client)
    seqs = []
    while not await client.receive_nothing(0.1):
        seqs.append((await receive(client))["seq"])
    assert overflow["code"] == "overflow" and overflow["id"] == "t"
    assert overflow["last_seq"] == 1 and overflow["dropped"] > 0
    assert seqs == list(range(2 + overflow["dropped"], 42))
    assert len(seqs) <= 10

    # Phase: resume from the gap.
    await send(
        client,
        {
            "op": "subscribe",
            "id": "t2",
            "source": "chat",
            "params": {"room": "slow"},
            "since": overflow["last_seq"],
        },
    )
    reply = await receive(client)
    await receive(client)
    replayed = [(await receive(client))["seq"] for _ in range(40)]
    assert reply["resumed"] is True and replayed == list(range(2, 42))

    await client.disconnect()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("client error overflow" in line for line in lines) == 1
    assert any(f"{overflow['dropped']} publications dropped" in line for line in lines)


async def test_a_subscription_that_lost_everything_it_had_queued_is_told(
    node, settings
):
    """The overflow error comes even when no publication of it is left to follow."""
    limit(settings, OUTBOX_SIZE=2)
    socket = FakeSocket()
    client = await connect(socket.application())
    await subscribe(client, "a", {"room": "a"})
    await subscribe(client, "b", {"room": "b"})
    a = Topic.of("chat", {"room": "a", "size": 1})
    b = Topic.of("chat", {"room": "b", "size": 1})
    for topic in (a, b):
        await apublish(topic, "first")
        await receive_until(client, "status")
    connection = connection_of(node)

    # Phase: a pong and b's publication fill the outbox; a's finds no room.
    socket.pause()
    await send(client, {"op": "ping"})
    await wait_until(lambda: len(connection.outbox) == 1)
    await apublish(b, "b2")
    await wait_until(lambda: connection.subscriptions["b"].last_seq == 2)
    await apublish(a, "a2")
    await wait_until(lambda: connection.subscriptions["a"].last_seq == 2)
    socket.resume()

    frames = [await receive(client) for _ in range(3)]
    assert frames[0] == {"op": "pong"}
    assert (frames[1]["id"], frames[1]["data"]) == ("b", "b2")
    assert frames[2]["code"] == "overflow"
    assert (frames[2]["id"], frames[2]["dropped"], frames[2]["last_seq"]) == ("a", 1, 1)
    await client.disconnect()


async def test_a_slow_reader_of_a_close_source_is_closed_with_4051(
    node, settings, registry, caplog
):
    """A source whose policy is "close" ends a slow reader's connection: 4051."""
    caplog.set_level(logging.INFO, logger="pubsub.consumers")
    limit(settings, OUTBOX_SIZE=5)
    registry.add(sources.TrackingSource("ledger")).overflow = "close"
    socket = FakeSocket()
    client = await connect(socket.application())
    await subscribe(client, "l", source="ledger")
    topic = Topic.of("ledger", {"room": "lobby", "size": 1})

    socket.pause()
    for n in range(10):
        await apublish(topic, n)

    assert await closed_with(client) == 4051
    lines = [r.getMessage() for r in caplog.records]
    assert sum("reads too slowly" in line for line in lines) == 1


async def test_replies_a_client_does_not_read_close_with_4051(node, settings):
    """Replies are never dropped: too many unread ones close the connection."""
    limit(settings, OUTBOX_SIZE=5)
    socket = FakeSocket()
    client = await connect(socket.application())

    socket.pause()
    for _ in range(6):
        await send(client, {"op": "ping"})

    assert await closed_with(client) == 4051


# --- resume through a bounded outbox ---------------------------------------------


async def resume(client, id, room, since):
    await send(
        client,
        {
            "op": "subscribe",
            "id": id,
            "source": "chat",
            "params": {"room": room},
            "since": since,
        },
    )


async def stalled_resume(node, settings, room, history):
    """
    A client with a full socket that resumed a topic of ``history``
    publications from the start, once its outbox of 10 is full; returns the
    client, its socket and the topic.
    """
    limit(settings, OUTBOX_SIZE=10)
    topic = Topic.of("chat", {"room": room, "size": 1})
    for n in range(1, history + 1):
        await apublish(topic, n)
    socket = FakeSocket()
    client = await connect(socket.application())
    socket.pause()
    await resume(client, "r", room, since=0)
    await wait_until(lambda: len(connection_of(node).outbox) == 10)
    return client, socket, topic


async def test_a_resume_longer_than_the_outbox_arrives_whole(node, settings):
    """History longer than the outbox is paced, not dropped: no overflow."""
    limit(settings, OUTBOX_SIZE=10)
    topic = Topic.of("chat", {"room": "long", "size": 1})
    for n in range(1, 101):
        await apublish(topic, n)
    client = await connect(FakeSocket().application())

    await resume(client, "r", "long", since=0)
    frames = [await receive(client) for _ in range(102)]

    assert frames[0]["resumed"] is True and frames[1]["op"] == "status"
    assert [frame.get("seq") for frame in frames[2:]] == list(range(1, 101))
    assert await client.receive_nothing(0.1)
    await client.disconnect()


async def test_live_publications_during_a_paced_resume_follow_without_gap(
    node, settings
):
    """
    Publications that arrive while a slow reader's resume waits for room come
    after the history, each once, even when more arrive than can be held.
    """
    client, socket, topic = await stalled_resume(node, settings, "busy", 50)

    for n in range(51, 81):
        await apublish(topic, n)
    socket.resume()

    frames = []
    while not await client.receive_nothing(0.2):
        frames.append(await receive(client))
    data = [frame["seq"] for frame in frames if frame["op"] == "data"]
    states = [frame["state"] for frame in frames if frame["op"] == "status"]
    assert data == list(range(1, 81))
    assert states == ["starting", "live"]
    await client.disconnect()


async def test_history_trimmed_during_a_paced_resume_is_reported(node, settings):
    """When the history moves on while the client reads slowly, it hears of the gap."""
    client, socket, topic = await stalled_resume(node, settings, "trim", 40)
    read = connection_of(node).subscriptions["r"].last_seq

    sync_client().xtrim(
        Keys().history(topic.key), minid=f"{read + 6}-0", approximate=False
    )
    socket.resume()

    frames = [await receive(client) for _ in range(2 + read + 1)]
    seqs = [frame.get("seq") for frame in frames[2:-1]]
    overflow = frames[-1]
    assert seqs == list(range(1, read + 1))
    assert overflow["code"] == "overflow"
    assert (overflow["last_seq"], overflow["dropped"]) == (read, 5)
    assert (await receive(client))["seq"] == read + 6
    await client.disconnect()


async def test_unsubscribe_during_a_paced_resume_stops_it(node, settings):
    """Nothing of a subscription follows its unsubscribed, even mid-resume."""
    client, socket, topic = await stalled_resume(node, settings, "stop", 40)

    await send(client, {"op": "unsubscribe", "id": "r"})
    await asyncio.sleep(0.05)
    socket.resume()

    frames = await receive_until(client, "unsubscribed")
    assert await client.receive_nothing(0.2)
    assert len(frames) <= 11
    assert snapshot()["counts"] == {}
    await client.disconnect()


# --- connections per process ------------------------------------------------------


async def test_connections_over_the_maximum_are_refused_with_4052(
    node, settings, caplog
):
    """
    Beyond VANILLA["MAX_CONNECTIONS"] a connection is accepted only to be
    closed with 4052; a run of refusals is logged once, and room is made
    again when a connection closes.
    """
    caplog.set_level(logging.INFO, logger="pubsub")
    limit(settings, MAX_CONNECTIONS=2)
    held = [await connect(), await connect()]

    refused = [await connect() for _ in range(3)]
    codes = [await closed_with(client) for client in refused]
    await held[0].disconnect()
    again = await connect()
    await send(again, {"op": "ping"})

    assert codes == [4052] * 3
    assert await receive(again) == {"op": "pong"}
    assert len(node.connections) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert sum("the maximum: refusing more" in line for line in lines) == 1
    assert (
        sum("accepts connections again after refusing 3" in line for line in lines) == 1
    )
    for client in (held[1], again):
        await client.disconnect()


def test_a_publication_over_the_limit_is_refused_and_not_kept(
    settings, vanilla_settings
):
    """publish() refuses it with a ValueError naming the limit; no seq is used."""
    limit(settings, MAX_PUBLICATION_BYTES=10_000)
    topic = Topic.of("chat", {"room": "big"})
    assert publish(topic, "é" * 4_000) == 1

    with pytest.raises(PublicationTooLarge, match="MAX_PUBLICATION_BYTES"):
        publish(topic, "é" * 5_000)
    assert issubclass(PublicationTooLarge, ValueError)
    assert publish(topic, "ok") == 2
    assert sync_client().xlen(Keys().history(topic.key)) == 2
