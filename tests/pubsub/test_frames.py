"""
Bad frames from clients: each kind is answered with an error frame with a
stable code and a message, the connection stays usable, and the log names
each kind once per connection however many such frames arrive.
"""
import logging
import re

import pytest

from pubsub.connection import Keys, sync_client
from pubsub.publishing import apublish
from pubsub.subscriptions import snapshot
from pubsub.topics import Topic

from . import sources
from .helpers import connect, receive, receive_until, send, subscribe

pytestmark = pytest.mark.integration

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
SUBSCRIBE = {"op": "subscribe", "source": "chat"}

# (frame, the id the error must carry, its code); a str is sent as it is.
BAD_FRAMES = {
    "invalid JSON": ("{not json", None, "bad_frame"),
    "truncated JSON": ('{"op":"ping"', None, "bad_frame"),
    "empty frame": ("", None, "bad_frame"),
    "a JSON array": ("[1, 2]", None, "bad_frame"),
    "a JSON string": ('"ping"', None, "bad_frame"),
    "JSON null": ("null", None, "bad_frame"),
    "NaN": ('{"op":"ping","x":NaN}', None, "bad_frame"),
    "a number too large for a float": ('{"op":"ping","x":1e999}', None, "bad_frame"),
    "an integer of 5000 digits": (
        '{"op":"ping","x":' + "9" * 5000 + "}",
        None,
        "bad_frame",
    ),
    "nesting 40 deep": (
        '{"op":"ping","x":' + "[" * 40 + "]" * 40 + "}",
        None,
        "bad_frame",
    ),
    "nesting 5000 deep": ("[" * 5000 + "]" * 5000, None, "bad_frame"),
    "an unpaired surrogate": ('{"op":"subscribe","id":"\\ud800"}', None, "bad_frame"),
    "no op": ({"id": "x"}, "x", "unknown_op"),
    "an unknown op": ({"op": "dance", "id": "x"}, "x", "unknown_op"),
    "an op that is not a string": ({"op": ["subscribe"]}, None, "unknown_op"),
    "subscribe without id": (SUBSCRIBE, None, "invalid_id"),
    "an id that is a number": ({**SUBSCRIBE, "id": 7}, None, "invalid_id"),
    "an id that is null": ({**SUBSCRIBE, "id": None}, None, "invalid_id"),
    "an empty id": ({**SUBSCRIBE, "id": ""}, None, "invalid_id"),
    "an id of 129 characters": ({**SUBSCRIBE, "id": "i" * 129}, None, "invalid_id"),
    "unsubscribe without id": ({"op": "unsubscribe"}, None, "invalid_id"),
    "an unknown source": (
        {**SUBSCRIBE, "id": "u", "source": "nope"},
        "u",
        "unknown_source",
    ),
    "no source": ({"op": "subscribe", "id": "u"}, "u", "unknown_source"),
    "a source that is an object": (
        {**SUBSCRIBE, "id": "u", "source": {"name": "chat"}},
        "u",
        "unknown_source",
    ),
    "a source name of 101 characters": (
        {**SUBSCRIBE, "id": "u", "source": "c" * 101},
        "u",
        "unknown_source",
    ),
    "params that are a list": (
        {**SUBSCRIBE, "id": "p", "params": []},
        "p",
        "invalid_params",
    ),
    "params that are a string": (
        {**SUBSCRIBE, "id": "p", "params": "room=x"},
        "p",
        "invalid_params",
    ),
    "a param of the wrong type": (
        {**SUBSCRIBE, "id": "p", "params": {"room": 5}},
        "p",
        "invalid_params",
    ),
    "an unknown param": (
        {**SUBSCRIBE, "id": "p", "params": {"colour": 1}},
        "p",
        "invalid_params",
    ),
    "params over 4 KiB": (
        {**SUBSCRIBE, "id": "p", "params": {"room": "r" * 5000}},
        "p",
        "invalid_params",
    ),
    "a negative since": ({**SUBSCRIBE, "id": "s", "since": -1}, "s", "bad_frame"),
    "a since that is a float": (
        {**SUBSCRIBE, "id": "s", "since": 1.5},
        "s",
        "bad_frame",
    ),
    "a since that is true": ({**SUBSCRIBE, "id": "s", "since": True}, "s", "bad_frame"),
    "a since of 2**63": ({**SUBSCRIBE, "id": "s", "since": 2**63}, "s", "bad_frame"),
    "unsubscribe of an unknown id": (
        {"op": "unsubscribe", "id": "ghost"},
        "ghost",
        "unknown_id",
    ),
}


async def assert_usable(client, id="alive"):
    """The connection still pings and subscribes."""
    await send(client, {"op": "ping"})
    assert await receive(client) == {"op": "pong"}
    await subscribe(client, id)


@pytest.mark.parametrize("frame, id, code", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_bad_frame_gets_its_error_and_the_connection_stays_usable(
    node, frame, id, code
):
    """Each kind of bad frame gets its code and the subscription's id, if any."""
    client = await connect()

    await send(client, frame)

    error = await receive(client)
    assert error["op"] == "error" and error["code"] == code, error
    assert error["id"] == id
    assert error["message"] and not CONTROL.search(error["message"])
    await assert_usable(client)
    await client.disconnect()


async def test_binary_frame_gets_bad_frame(node):
    """Binary frames are not part of the protocol."""
    client = await connect()

    await client.send_to(bytes_data=b'{"op":"ping"}')

    error = await receive(client)
    assert (error["code"], error["id"]) == ("bad_frame", None)
    assert "binary" in error["message"]
    await assert_usable(client)
    await client.disconnect()


async def test_duplicate_id_leaves_the_first_subscription_intact(node):
    """A second subscribe with a live id is refused; the first one still receives."""
    client = await connect()
    await subscribe(client, "a", {"room": "dup"})
    topic = Topic.of("chat", {"room": "dup", "size": 1})

    await send(client, {**SUBSCRIBE, "id": "a", "params": {"room": "other"}})
    error = await receive(client)
    await apublish(topic, "still mine")

    assert (error["code"], error["id"]) == ("duplicate_id", "a")
    data = [frame for frame in await receive_until(client, "data")][-1]
    assert (data["id"], data["data"]) == ("a", "still mine")
    assert snapshot()["counts"] == {topic.key: 1}
    await client.disconnect()


async def test_an_id_is_free_again_after_its_unsubscribed(node):
    """Reusing an id after its unsubscribed is not a duplicate."""
    client = await connect()
    await subscribe(client, "a")
    await send(client, {"op": "unsubscribe", "id": "a"})
    assert await receive(client) == {"op": "unsubscribed", "id": "a"}

    await subscribe(client, "a", {"room": "second"})

    await client.disconnect()


async def test_control_characters_are_refused_in_ids_and_escaped_elsewhere(
    node, caplog
):
    """
    Control characters make an id invalid; in op, source and param names they
    are refused with the usual code, and neither the error messages nor the
    log lines carry them raw (no forged log lines).
    """
    caplog.set_level(logging.DEBUG, logger="pubsub")
    client = await connect()
    cases = [
        ({"op": "ping\n2026-01-01 ERROR forged"}, None, "unknown_op"),
        ({**SUBSCRIBE, "id": "a\nb"}, None, "invalid_id"),
        ({**SUBSCRIBE, "id": "a\x00"}, None, "invalid_id"),
        ({**SUBSCRIBE, "id": "\x85next"}, None, "invalid_id"),
        ({"op": "unsubscribe", "id": "\x1b[31mred"}, None, "invalid_id"),
        (
            {**SUBSCRIBE, "id": "s", "source": "chat\r\nX-Forged: 1"},
            "s",
            "unknown_source",
        ),
        ({**SUBSCRIBE, "id": "p", "params": {"room\x07": "x"}}, "p", "invalid_params"),
    ]

    for frame, id, code in cases:
        await send(client, frame)
        error = await receive(client)
        assert (error["code"], error["id"]) == (code, id), (frame, error)
        assert not CONTROL.search(error["message"]), error

    await client.disconnect()
    for record in caplog.records:
        assert not CONTROL.search(record.getMessage()), record.getMessage()


async def test_unicode_in_ids_and_params_round_trips(node):
    """Non-ASCII ids and param values are valid and come back unchanged."""
    client = await connect()
    id = "订阅-Ω-😀-\u202e-\u200b"
    room = "Küche-\u0000-\u202e-😀"

    reply, status = await subscribe(client, id, {"room": room})
    topic = Topic.of("chat", reply["params"])
    await apublish(topic, {"text": "naïve ✓"})
    data = await receive(client)

    assert reply["id"] == id and reply["params"]["room"] == room.lower()
    assert status["id"] == id
    assert (data["id"], data["data"]) == (id, {"text": "naïve ✓"})
    await send(client, {"op": "unsubscribe", "id": id})
    assert (await receive_until(client, "unsubscribed"))[-1]["id"] == id
    await client.disconnect()


async def test_a_flood_of_bad_frames_is_logged_once_per_kind(node, caplog):
    """A flood of bad frames: every one answered, each kind logged once."""
    caplog.set_level(logging.INFO, logger="pubsub.consumers")
    client = await connect()

    # Within the rate limit's burst of 200 frames.
    for _ in range(90):
        await send(client, "{not json")
        await send(client, {"op": "unsubscribe", "id": "ghost"})
    codes = [(await receive(client))["code"] for _ in range(180)]
    await assert_usable(client)
    await client.disconnect()

    assert codes == ["bad_frame", "unknown_id"] * 90
    lines = [r.getMessage() for r in caplog.records if r.name == "pubsub.consumers"]
    assert sum("client error bad_frame" in line for line in lines) == 1, lines
    assert sum("client error unknown_id" in line for line in lines) == 1, lines
    summary = [line for line in lines if " closed (" in line]
    assert len(summary) == 1 and "bad_frame: 90, unknown_id: 90" in summary[0], lines


async def test_an_internal_error_before_counting_names_the_subscription(
    node, registry, caplog
):
    """A source that fails on its params yields `internal` with the id, logged once."""
    broken = registry.add(sources.TrackingSource("broken"))
    broken.clean_params = lambda params: 1 / 0
    client = await connect()

    for id in ("b1", "b2"):
        await send(client, {"op": "subscribe", "id": id, "source": "broken"})
        error = await receive(client)
        assert (error["code"], error["id"]) == ("internal", id)

    await assert_usable(client)
    failures = [
        r for r in caplog.records if r.getMessage().startswith("a frame failed")
    ]
    assert len(failures) == 1 and failures[0].exc_info[0] is ZeroDivisionError
    await client.disconnect()


async def test_an_internal_error_after_counting_undoes_the_subscription(node):
    """
    A subscribe that fails after it was counted (its history in Redis is not
    a stream) yields `internal` with its id and leaves no count behind.
    """
    topic = Topic.of("chat", {"room": "wrongtype", "size": 1})
    sync_client().set(Keys().history(topic.key), "not a stream")
    client = await connect()

    await send(client, {**SUBSCRIBE, "id": "w", "params": {"room": "wrongtype"}})
    error = await receive(client)

    assert (error["code"], error["id"]) == ("internal", "w")
    assert topic.key not in snapshot()["counts"]
    await send(client, {**SUBSCRIBE, "id": "w", "params": {"room": "fine"}})
    reply = await receive(client)
    assert (reply["op"], reply["id"]) == ("subscribed", "w")
    await client.disconnect()


async def test_frames_after_an_error_are_answered_in_order(node):
    """Errors, replies and pongs come back in the order the frames were sent."""
    client = await connect()
    frames = [
        "{bad",
        {"op": "ping"},
        {**SUBSCRIBE, "id": "o"},
        {**SUBSCRIBE, "id": "o"},
        {"op": "unsubscribe", "id": "o"},
        {"op": "unsubscribe", "id": "o"},
    ]

    for frame in frames:
        await send(client, frame)
    replies = [await receive(client) for _ in range(7)]

    assert [(r["op"], r.get("code")) for r in replies] == [
        ("error", "bad_frame"),
        ("pong", None),
        ("subscribed", None),
        ("status", None),
        ("error", "duplicate_id"),
        ("unsubscribed", None),
        ("error", "unknown_id"),
    ]
    await client.disconnect()
