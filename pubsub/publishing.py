"""
The one way data enters Pub-Sub: ``publish()``.

A publication is encoded to JSON once, here. One Redis script then gives it the
topic's next ``seq``, appends it to the topic's history (a Redis stream whose
entry ids are the seqs, for resume and the latest value) and publishes it on
the topic's channel, where every server process with subscribers receives it.
"""
import json
import time

from .conf import option
from .connection import (
    Keys,
    async_client,
    queue_script,
    script as _script,
    sync_client,
)
from .exceptions import PublicationTooLarge
from .protocol import SourceState
from .topics import Topic

# KEYS: seq, history, channel, states, last publication
# ARGV: publication JSON without seq, history size, topic key, now ms
PUBLISH_SCRIPT = """
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  -- A lost counter must not go back behind the history it left.
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if newest[1] then
    seq = tonumber(string.match(newest[1][1], '^%d+')) + 1
    redis.call('SET', KEYS[1], seq)
  end
end
local message = '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'm', message)
redis.call('PUBLISH', KEYS[3], message)
redis.call('HSET', KEYS[5], ARGV[3], ARGV[4])
local state = redis.call('HGET', KEYS[4], ARGV[3])
if state and state ~= 'live' then
  redis.call('HSET', KEYS[4], ARGV[3], 'live')
  redis.call('PUBLISH', KEYS[3], '{"state":"live"}')
end
return seq
"""

# KEYS: states, channel. ARGV: topic key, state, message, only-if-state.
SET_STATE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if ARGV[4] ~= '' and current ~= ARGV[4] then return 0 end
if current == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], cjson.encode({state=ARGV[2], message=ARGV[3]}))
return 1
"""


def encode_publication(topic, data, extra=None):
    body = {"source": topic.source, "params": topic.params, "time": time.time()}
    if extra:
        body.update(extra)
    body["data"] = data
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _publish_args(topic, data, history_size, extra):
    keys = Keys()
    size = history_size or option("HISTORY_SIZE")
    encoded = encode_publication(topic, data, extra)
    # Characters never outnumber bytes: only a long text is measured.
    limit = option("MAX_PUBLICATION_BYTES")
    if len(encoded) > limit // 4 and len(encoded.encode()) > limit:
        raise PublicationTooLarge(
            f"a publication to {topic.key} of {len(encoded.encode())} bytes is "
            f"over the limit of {limit} (MAX_PUBLICATION_BYTES)"
        )
    return (
        [
            keys.seq(topic.key),
            keys.history(topic.key),
            keys.channel(topic.key),
            keys.states,
            keys.last_publication,
        ],
        [encoded, size, topic.key, _now_ms()],
    )


def publish(topic, data, *, history_size=None, extra=None):
    """
    Publish ``data`` (anything JSON can encode) to every subscriber of
    ``topic`` (a Topic, or a ``(source, params)`` pair) and return its seq.
    Raises PublicationTooLarge (a ValueError) beyond MAX_PUBLICATION_BYTES.
    """
    topic = _as_topic(topic)
    keys, args = _publish_args(topic, data, history_size, extra)
    return _script(sync_client(), PUBLISH_SCRIPT)(keys=keys, args=args)


def prepare(topic, data, *, history_size=None, extra=None):
    """
    ``data`` for ``topic`` encoded and checked as ``publish()`` does it, to
    be published later, with others, by ``publish_all()``. Raises what
    ``publish()`` raises for data it cannot publish.
    """
    return _publish_args(_as_topic(topic), data, history_size, extra)


def publish_all(prepared):
    """
    Publish what ``prepare()`` returned, in order, in one pipeline: one round
    trip to Redis for them all, where ``publish()`` takes one each. Returns
    their seqs.
    """
    if not prepared:
        return []
    with sync_client().pipeline(transaction=False) as pipe:
        for keys, args in prepared:
            queue_script(pipe, PUBLISH_SCRIPT, keys, args)
        return pipe.execute()


async def apublish(topic, data, *, history_size=None, extra=None):
    """``publish()`` for code running in an event loop."""
    topic = _as_topic(topic)
    keys, args = _publish_args(topic, data, history_size, extra)
    return await _script(async_client(), PUBLISH_SCRIPT)(keys=keys, args=args)


def set_state(topic_key, state, message="", only_if=None):
    """Move a running source to ``state`` and tell its subscribers, once."""
    keys = Keys()
    return _script(sync_client(), SET_STATE_SCRIPT)(
        keys=[keys.states, keys.channel(topic_key)],
        args=[topic_key, SourceState(state), message, only_if or ""],
    )


async def aset_state(topic_key, state, message="", only_if=None):
    keys = Keys()
    return await _script(async_client(), SET_STATE_SCRIPT)(
        keys=[keys.states, keys.channel(topic_key)],
        args=[topic_key, SourceState(state), message, only_if or ""],
    )


def latest(topic):
    """The newest publication of ``topic`` as published, or None."""
    topic = _as_topic(topic)
    entries = sync_client().xrevrange(Keys().history(topic.key), count=1)
    return entries[0][1]["m"] if entries else None


def _as_topic(topic):
    if isinstance(topic, Topic):
        return topic
    source, params = topic
    return Topic.of(source, params)


def _now_ms():
    return int(time.time() * 1000)
