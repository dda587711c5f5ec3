"""
Generated frames thrown at the consumer (hypothesis): every frame gets the
answer the protocol (docs/protocol.md) gives it, nothing else arrives, and
the process stays healthy: no internal errors, no leaked counts or tasks.

The expectations come from ``Model``, the protocol's rules for one
connection written out independently of the consumer.
"""
import asyncio
import json
import logging
import re

import pytest
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings
from hypothesis import strategies as st

from pubsub.subscriptions import snapshot

from . import sources
from .helpers import connect, receive, send

pytestmark = pytest.mark.integration

MAX_SUBSCRIPTIONS = 2
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# --- frames ---------------------------------------------------------------------

not_strings = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_scalars = not_strings | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
good_ids = st.sampled_from(["a", "b", "c", "订阅-😀", "i" * 128])
bad_ids = st.sampled_from([None, 7, "", "i" * 129, ["a"], "a\nb", "\x00", "\x9f"])
good_params = st.fixed_dictionaries(
    {}, optional={"room": st.text(max_size=10), "size": json_values}
)
bad_params = st.one_of(
    st.fixed_dictionaries({"room": not_strings}),
    st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=3),
    st.just({"room": "r" * 5000}),
    json_scalars,
    st.lists(json_values, max_size=3),
)
# A field of a frame set to something else than a well-formed frame holds.
corruptions = {
    "op": st.sampled_from(["subscribe", "unsubscribe", "ping", "Ping", ""])
    | json_scalars,
    "id": bad_ids | st.text(max_size=6),
    "source": st.sampled_from(["vault", "nope", "c" * 101, "", "chat\x00"])
    | json_scalars,
    "params": bad_params,
    "since": st.sampled_from([0, 3, -1, 1.5, True, "7", 2**63, None])
    | st.integers(0, 10),
}


@st.composite
def protocol_frames(draw):
    """A client frame, well-formed but for up to two fields, or one left out."""
    op = draw(st.sampled_from(["subscribe", "subscribe", "unsubscribe", "ping"]))
    frame = {"op": op, "id": draw(good_ids)}
    if op == "subscribe":
        frame.update(source="chat", params=draw(good_params))
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from([*corruptions, "left out"]))
        if field == "left out":
            frame.pop(draw(st.sampled_from(sorted(frame))), None)
        else:
            frame[field] = draw(corruptions[field])
    return json.dumps(frame, ensure_ascii=draw(st.booleans()))


def not_json(text):
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


garbage = st.one_of(
    st.text(max_size=40).filter(not_json),
    (json_scalars | st.lists(json_values, max_size=3)).map(json.dumps),
    st.binary(max_size=40),
    st.sampled_from(['{"op":"ping","x":"\\udc00"}', '{"op":"ping","x":NaN}']),
)
# One frame in five is garbage; the rest get as far as the protocol's rules.
frames = st.integers(0, 4).flatmap(lambda n: garbage if n == 0 else protocol_frames())


# --- the protocol's answers -----------------------------------------------------


class Model:
    """What one connection answers, per docs/protocol.md; ``live`` is its ids."""

    def __init__(self):
        self.live = set()

    def answer(self, raw):
        """The expected frames' (op, code, id), in order."""
        if isinstance(raw, bytes):
            return [("error", "bad_frame", None)]
        try:
            frame = json.loads(raw, parse_constant=self.refuse)
            json.dumps(frame, ensure_ascii=False).encode()
        except (ValueError, UnicodeEncodeError):
            return [("error", "bad_frame", None)]
        if not isinstance(frame, dict):
            return [("error", "bad_frame", None)]
        op = frame.get("op")
        if op == "ping":
            return [("pong", None, None)]
        if op == "subscribe":
            return self.subscribe(frame)
        if op == "unsubscribe":
            return self.unsubscribe(frame)
        id = frame.get("id")
        return [("error", "unknown_op", id if self.usable(id) else None)]

    def subscribe(self, frame):
        id, since = frame.get("id"), frame.get("since")
        if not self.usable(id):
            return [("error", "invalid_id", None)]
        if id in self.live:
            return [("error", "duplicate_id", id)]
        if since is not None and (type(since) is not int or not 0 <= since < 2**63):
            return [("error", "bad_frame", id)]
        if len(self.live) >= MAX_SUBSCRIPTIONS:
            return [("error", "too_many_subscriptions", id)]
        source = frame.get("source")
        if source not in ("chat", "vault"):
            return [("error", "unknown_source", id)]
        if source == "vault":
            return [("error", "forbidden", id)]
        params = frame.get("params", {})
        if not self.valid_params(params):
            return [("error", "invalid_params", id)]
        self.live.add(id)
        return [("subscribed", None, id), ("status", None, id)]

    def unsubscribe(self, frame):
        id = frame.get("id")
        if not self.usable(id):
            return [("error", "invalid_id", None)]
        if id not in self.live:
            return [("error", "unknown_id", id)]
        self.live.remove(id)
        return [("unsubscribed", None, id)]

    @staticmethod
    def valid_params(params):
        """The test source's rules: a dict of at most room (a string) and size."""
        if not isinstance(params, dict):
            return False
        canonical = json.dumps(
            params, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        if len(canonical.encode()) > 4 * 1024:
            return False
        return set(params) <= {"room", "size"} and isinstance(
            params.get("room", ""), str
        )

    @staticmethod
    def usable(id):
        return isinstance(id, str) and 0 < len(id) <= 128 and not CONTROL.search(id)

    @staticmethod
    def refuse(name):
        raise ValueError(name)


# --- the test -------------------------------------------------------------------


@pytest.fixture
def fuzz_settings(settings, registry):
    settings.VANILLA = {
        **settings.VANILLA,
        "MAX_SUBSCRIPTIONS": MAX_SUBSCRIPTIONS,
        # The rate limit has its own tests; here every frame must be read.
        "RATE_LIMIT": 1e9,
        "RATE_BURST": 10**9,
    }
    registry.add(sources.TrackingSource("vault", members_only=True))


def consumer_tasks():
    return [
        task
        for task in asyncio.all_tasks()
        if "SubscriptionConsumer" in repr(task.get_coro()) and not task.done()
    ]


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(frames, min_size=1, max_size=20))
async def test_generated_frames_are_answered_per_the_protocol(
    node, fuzz_settings, caplog, sent
):
    """Each generated frame gets exactly its answer; nothing leaks or fails."""
    caplog.set_level(logging.WARNING, logger="pubsub")
    caplog.clear()
    # Examples share the test's Redis: judge each by what it changed.
    counts = snapshot()["counts"]
    client = await connect()
    try:
        await exchange(client, sent)
    finally:
        await client.disconnect()

    # The process is healthy: the connection left nothing behind.
    await asyncio.sleep(0)
    assert not node.connections
    assert snapshot()["counts"] == counts
    assert consumer_tasks() == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def exchange(client, sent):
    """Send each frame and check that exactly its answer comes back."""
    model = Model()
    for raw in sent:
        if isinstance(raw, bytes):
            await client.send_input({"type": "websocket.receive", "bytes": raw})
        else:
            await send(client, raw)
        for op, code, id in model.answer(raw):
            event(f"{op} {code or ''}")
            reply = await receive(client)
            assert (reply["op"], reply.get("code"), reply.get("id")) == (
                op,
                code,
                id,
            ), (
                raw,
                reply,
            )
            if op == "subscribed":
                since = json.loads(raw).get("since")
                assert ("resumed" in reply) == (since is not None), reply
    assert await client.receive_nothing(0.01)
