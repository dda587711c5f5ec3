"""
The websocket consumer against real Redis, with test-double sources.

Each test runs the consumer in-process through Channels' communicator; the
hub, the subscription registry and the history are the real ones in Redis.
"""

import asyncio
import json
import threading

import pytest
from pubsub.publishing import apublish, publish
from pubsub.subscriptions import snapshot
from pubsub.topics import Topic

from . import sources
from .helpers import connect, receive, receive_until, send, subscribe

pytestmark = pytest.mark.integration


async def test_subscribe_replies_with_normalised_params(node):
    """The reply carries the params as the source normalised them."""
    client = await connect()

    reply, status = await subscribe(client, "a", {"room": "Kitchen"})

    assert reply == {
        "op": "subscribed",
        "id": "a",
        "source": "chat",
        "params": {"room": "kitchen", "size": 1},
    }
    assert status["state"] == "starting"
    await client.disconnect()


async def test_publication_reaches_subscriber_with_seq(node):
    """A publication arrives as a data frame with the topic's next seq."""
    client = await connect()
    await subscribe(client, "a", {"room": "x"})
    topic = Topic.of("chat", {"room": "x", "size": 1})

    await apublish(topic, {"text": "hello"})
    await apublish(topic, {"text": "again"})

    frames = await receive_until(client, "data")
    frames += await receive_until(client, "data")
    frames = [frame for frame in frames if frame["op"] == "data"]
    assert [(f["seq"], f["data"]["text"]) for f in frames] == [
        (1, "hello"),
        (2, "again"),
    ]
    assert frames[0]["id"] == "a" and frames[0]["params"] == {"room": "x", "size": 1}
    await client.disconnect()


async def test_connections_sharing_an_id_each_get_their_own_frame(node):
    """
    The frames of one publication are built once per subscription id and
    shared by the connections using it; each still gets its id, in order.
    """
    ids = ["a", "a", "b", "a", "ü"]
    clients = [await connect() for _ in ids]
    for client, id in zip(clients, ids):
        await subscribe(client, id, {"room": "shared"})
    topic = Topic.of("chat", {"room": "shared", "size": 1})

    for text in ("one", "two"):
        await apublish(topic, {"text": text})

    for client, id in zip(clients, ids):
        frames = await receive_until(client, "data")
        frames += await receive_until(client, "data")
        data = [f for f in frames if f["op"] == "data"]
        assert [(f["id"], f["seq"], f["data"]["text"]) for f in data] == [
            (id, 1, "one"),
            (id, 2, "two"),
        ]
        await client.disconnect()


async def test_bad_frames_get_errors_and_connection_survives(node):
    """Unknown source, bad params and malformed frames are answered, not fatal."""
    client = await connect()
    cases = [
        ("{not json", None, "bad_frame"),
        ("[1, 2]", None, "bad_frame"),
        ({"op": "dance"}, None, "unknown_op"),
        ({"op": "subscribe", "id": 7, "source": "chat"}, None, "invalid_id"),
        ({"op": "subscribe", "id": "u", "source": "nope"}, "u", "unknown_source"),
        (
            {"op": "subscribe", "id": "p", "source": "chat", "params": {"colour": 1}},
            "p",
            "invalid_params",
        ),
        (
            {"op": "subscribe", "id": "q", "source": "chat", "params": []},
            "q",
            "invalid_params",
        ),
        ({"op": "unsubscribe", "id": "ghost"}, "ghost", "unknown_id"),
    ]
    for frame, id, code in cases:
        await send(client, frame)
        error = await receive(client)
        assert error["op"] == "error" and error["code"] == code, (frame, error)
        assert error["id"] == id and error["message"]

    await client.send_to(bytes_data=b"\x00\x01")
    assert (await receive(client))["code"] == "bad_frame"

    # The same connection still subscribes and pings.
    await subscribe(client, "ok")
    await send(client, {"op": "ping"})
    assert (await receive(client)) == {"op": "pong"}
    await client.disconnect()


async def test_frames_are_handled_without_a_sync_thread_round_trip(
    node, monkeypatch
):
    """
    Channels would close old database connections in its sync thread before
    every frame; this consumer leaves that to database_sync_to_async.
    """
    hops = []

    async def counted():
        hops.append(1)

    monkeypatch.setattr("channels.consumer.aclose_old_connections", counted)
    client = await connect()
    await subscribe(client, "a", {"room": "hops"})
    await send(client, {"op": "unsubscribe", "id": "a"})
    await receive_until(client, "unsubscribed")

    assert hops == []
    await client.disconnect()


async def test_a_connection_holds_no_receive_task(node):
    """
    The consumer awaits its client's messages itself: Channels' loop would
    add a receive task per connection, and a new one per message.
    """
    first = await connect()
    await subscribe(first, "a", {"room": "tasks"})
    before = len(asyncio.all_tasks())

    clients = [await connect() for _ in range(5)]
    for client in clients:
        await subscribe(client, "a", {"room": "tasks"})

    # Two tasks each: the application instance the communicator runs, and
    # the writer that its frames need without daphne's socket to write to.
    assert len(asyncio.all_tasks()) - before == 2 * 5
    for client in [first, *clients]:
        await client.disconnect()


async def test_duplicate_id_is_refused(node):
    """An id in use by a live subscription cannot be reused."""
    client = await connect()
    await subscribe(client, "a")

    await send(client, {"op": "subscribe", "id": "a", "source": "chat"})

    error = await receive(client)
    assert error["code"] == "duplicate_id" and error["id"] == "a"
    await client.disconnect()


async def test_two_subscriptions_one_unsubscribed_still_receive(node):
    """Subscribing twice then unsubscribing once leaves one live subscription."""
    client = await connect()
    await subscribe(client, "w1", {"room": "r"})
    await subscribe(client, "w2", {"room": "r"})
    topic = Topic.of("chat", {"room": "r", "size": 1})
    assert snapshot()["counts"][topic.key] == 2

    await send(client, {"op": "unsubscribe", "id": "w1"})
    assert await receive(client) == {"op": "unsubscribed", "id": "w1"}
    await asyncio.sleep(0.05)
    assert snapshot()["counts"][topic.key] == 1
    await apublish(topic, "still here")

    frames = await receive_until(client, "data")
    frames.append(await receive(client))
    assert [(f["op"], f["id"]) for f in frames] == [("data", "w2"), ("status", "w2")]
    assert frames[0]["data"] == "still here" and frames[1]["state"] == "live"
    assert await client.receive_nothing(timeout=0.2)

    # Unsubscribing the same id again is answered, and harmless.
    await send(client, {"op": "unsubscribe", "id": "w1"})
    assert (await receive(client))["code"] == "unknown_id"
    assert snapshot()["counts"][topic.key] == 1
    await client.disconnect()


async def test_first_subscriber_starts_last_stops_after_grace(node, registry):
    """The source starts once for many subscribers and stops after the grace."""
    source = registry.get("chat")
    clients = [await connect() for _ in range(3)]
    for index, client in enumerate(clients):
        await subscribe(client, f"s{index}", {"room": "once"})
    topic = Topic.of("chat", {"room": "once", "size": 1})
    assert source.started == [topic.key]

    for client in clients:
        await client.disconnect()
    assert snapshot()["counts"].get(topic.key) is None
    assert source.stopped == []

    for _ in range(50):
        if source.stopped:
            break
        await asyncio.sleep(0.1)
    assert source.stopped == [topic.key]
    assert topic.key not in snapshot()["states"]


async def test_resubscribe_within_grace_keeps_source_running(node, registry):
    """A subscriber arriving within the grace period prevents the stop."""
    source = registry.get("chat")
    first = await connect()
    await subscribe(first, "a", {"room": "grace"})
    await first.disconnect()

    second = await connect()
    await subscribe(second, "b", {"room": "grace"})
    await asyncio.sleep(1.5)

    assert len(source.started) == 1 and source.stopped == []
    await second.disconnect()


async def test_resume_sends_missed_publications_in_order(node):
    """A subscribe with since gets exactly what came after, then live data."""
    topic = Topic.of("chat", {"room": "resume", "size": 1})
    for n in range(1, 6):
        await apublish(topic, n)
    client = await connect()

    await send(
        client,
        {
            "op": "subscribe",
            "id": "r",
            "source": "chat",
            "params": {"room": "resume"},
            "since": 2,
        },
    )
    frames = [await receive(client) for _ in range(5)]
    await apublish(topic, 6)
    frames.append(await receive(client))

    assert frames[0]["op"] == "subscribed" and frames[0]["resumed"] is True
    assert frames[1]["op"] == "status"
    assert [f["seq"] for f in frames[2:]] == [3, 4, 5, 6]
    await client.disconnect()


async def test_resume_beyond_history_says_so_and_sends_latest(node, registry):
    """When history does not reach back, resumed is false and the latest follows."""
    registry.get("chat").history_size = 3
    topic = Topic.of("chat", {"room": "short", "size": 1})
    for n in range(1, 200):
        await apublish(topic, n, history_size=3)
    client = await connect()

    await send(
        client,
        {
            "op": "subscribe",
            "id": "r",
            "source": "chat",
            "params": {"room": "short"},
            "since": 5,
        },
    )
    reply = await receive(client)
    await receive(client)
    latest = await receive(client)

    assert reply["resumed"] is False
    assert latest["seq"] == 199
    await client.disconnect()


class FloodingSource(sources.TrackingSource):
    """Publishes past its history's size as it starts."""

    def start(self, topic):
        super().start(topic)
        for n in range(51, 201):
            publish(topic, n, history_size=self.history_size)


async def test_a_resume_tells_what_the_history_lost_while_its_source_started(
    node, registry
):
    """
    The first subscriber's resume reads the ends of the history, then the
    source starts, then the history is read from ``since``. A source that
    publishes past the history's size as it starts trims what the resume
    was to send: the client is told with an overflow error it can act on,
    then gets what is left, in order and once each.
    """
    registry.add(FloodingSource("flood"))
    topic = Topic.of("flood", {"room": "x", "size": 1})
    for n in range(1, 51):
        await apublish(topic, n, history_size=100)
    client = await connect()

    reply, status = await subscribe(client, "f", {"room": "x"}, "flood", since=10)
    error = await receive(client)
    rest = []
    while not await client.receive_nothing(timeout=0.3):
        rest.append(await receive(client))
    data = [f for f in rest if f["op"] == "data"]

    assert reply["op"] == "subscribed" and reply["resumed"] is True
    assert status["op"] == "status"
    assert (error["op"], error["code"], error["last_seq"]) == ("error", "overflow", 10)
    # Redis trims streams approximately: at least the size is kept.
    first = 11 + error["dropped"]
    assert 11 < first <= 101
    assert [f["seq"] for f in data] == list(range(first, 201))
    # Besides, only the status the first publication brings.
    assert [(f["op"], f["state"]) for f in rest if f["op"] != "data"] == [
        ("status", "live")
    ]
    await client.disconnect()


class SlowStartSource(sources.TrackingSource):
    """Takes its time to start; ``entered`` is set once it has begun."""

    def __init__(self, name):
        super().__init__(name)
        self.entered = threading.Event()
        self.release = threading.Event()

    def start(self, topic):
        self.entered.set()
        self.release.wait(5)
        super().start(topic)


async def test_a_connection_cancelled_mid_subscribe_leaves_no_count(node, registry):
    """
    daphne cancels an application that is still busy some seconds after its
    client left, such as one whose first subscriber waits on a slow source
    start. Every subscription it counted is uncounted all the same, the one
    being started included.
    """
    slow = registry.add(SlowStartSource("slow"))
    client = await connect()
    await subscribe(client, "a", {"room": "other"})
    await send(client, {"op": "subscribe", "id": "s", "source": "slow",
                        "params": {"room": "x"}})
    slow_key = Topic.of("slow", {"room": "x", "size": 1}).key
    other_key = Topic.of("chat", {"room": "other", "size": 1}).key
    assert await asyncio.to_thread(slow.entered.wait, 3)
    assert snapshot()["counts"] == {slow_key: 1, other_key: 1}

    client.future.cancel()
    slow.release.set()
    for _ in range(100):
        if not snapshot()["counts"]:
            break
        await asyncio.sleep(0.02)
    assert snapshot()["counts"] == {}


async def test_new_subscriber_gets_latest_value_at_once(node):
    """A topic's newest publication is sent right after subscribing."""
    topic = Topic.of("chat", {"room": "latest", "size": 1})
    await apublish(topic, "old")
    await apublish(topic, "newest")
    client = await connect()

    await subscribe(client, "l", {"room": "latest"})
    frame = await receive(client)

    assert frame["op"] == "data" and frame["data"] == "newest" and frame["seq"] == 2
    await client.disconnect()


async def test_failed_start_reports_error_and_retries(node, registry):
    """A source that fails to start tells its subscriber; the next one retries."""
    flaky = registry.add(sources.TrackingSource("flaky", fail_start=True))
    client = await connect()

    await subscribe(client, "f", source="flaky")
    status = await receive(client)

    assert status["op"] == "status" and status["state"] == "error"
    assert "upstream refused" in status["message"]
    flaky.fail_start = False
    other = await connect()
    await subscribe(other, "g", source="flaky")
    assert len(flaky.started) == 1
    await client.disconnect()
    await other.disconnect()


async def test_oversized_frame_closes_with_1009(node, settings):
    """A frame over the size limit closes the connection with 1009."""
    settings.VANILLA = {**settings.VANILLA, "MAX_FRAME_BYTES": 1024}
    client = await connect()

    await send(client, json.dumps({"op": "ping", "pad": "x" * 2000}))

    closed = await client.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 1009}
    await client.disconnect()


async def test_silent_source_turns_stale_then_live_again(node, registry):
    """Subscribers hear "stale" when a source is silent too long, then "live"."""
    registry.add(sources.TrackingSource("quiet")).stale_after = 0.5
    client = await connect()
    await subscribe(client, "q", source="quiet")
    topic = Topic.of("quiet", {"room": "lobby", "size": 1})

    await apublish(topic, "tick")
    states = []
    while "stale" not in states:
        frame = await receive(client, timeout=3)
        if frame["op"] == "status":
            states.append(frame["state"])
    await apublish(topic, "tock")
    while states[-1] != "live":
        frame = await receive(client, timeout=3)
        if frame["op"] == "status":
            states.append(frame["state"])

    assert states == ["live", "stale", "live"]
    await client.disconnect()
