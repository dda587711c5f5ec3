"""
The subscription registry: who watches which topic, here and cluster-wide.

Each server process counts its subscriptions per topic in memory and mirrors
them into Redis under a process lease (``VANILLA["PROCESS_LEASE"]`` seconds)
that it renews. Redis also holds the total per topic over every live process.
All changes are Lua scripts, so the totals stay exact when processes subscribe
and leave at the same instant:

- ``add()`` reports whether the topic's source must be started. Only one caller
  in the cluster is told so, however many add at once.
- ``remove()`` reports whether that was the last subscription anywhere. The
  topic is then put on the idle list; the source stops when the grace period
  (``VANILLA["STOP_GRACE"]``) ends, unless someone subscribes again.
- ``reap()`` removes the subscriptions of processes whose lease ran out: a
  process killed without cleaning up stops counting within the lease.
- ``claim_stops()`` hands each due stop to exactly one caller.

When a process finds that its lease was lost (it stalled for longer than the
lease and was reaped) it writes its whole state back with ``restore()``.
"""
import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter

from .conf import option
from .connection import Keys, async_client, queue_script, script, sync_client

logger = logging.getLogger(__name__)

LEASE_LOST = -1

# KEYS: process, counts, topics, states, started, idle, processes
# ARGV: process id, topic, topic JSON, now ms
ADD = """
if not redis.call('ZSCORE', KEYS[7], ARGV[1]) then return {-1, 0} end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
local total = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[2])
if redis.call('HSETNX', KEYS[4], ARGV[2], 'starting') == 1 then
  redis.call('HSET', KEYS[5], ARGV[2], ARGV[4])
  return {total, 1}
end
return {total, 0}
"""

# KEYS: process, counts, idle, processes
# ARGV: process id, topic, now ms, grace ms
REMOVE = """
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then return -1 end
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
if mine <= 0 then return -1 end
if mine == 1 then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
end
local total = redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
if total <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[2])
  return 0
end
return total
"""

# KEYS: process, counts, topics, states, started, idle, processes
# ARGV: process id, now ms, lease ms, grace ms, then (topic, count, JSON)...
RESTORE = """
local now = tonumber(ARGV[2])
local touched = {}
local old = redis.call('HGETALL', KEYS[1])
for i = 1, #old, 2 do
  redis.call('HINCRBY', KEYS[2], old[i], -tonumber(old[i + 1]))
  touched[#touched + 1] = old[i]
end
redis.call('DEL', KEYS[1])
for i = 5, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1]))
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
  touched[#touched + 1] = ARGV[i]
end
local starts = {}
for _, topic in ipairs(touched) do
  local total = tonumber(redis.call('HGET', KEYS[2], topic) or '0')
  if total <= 0 then
    redis.call('HDEL', KEYS[2], topic)
    redis.call('ZADD', KEYS[6], 'NX', now + tonumber(ARGV[4]), topic)
  else
    redis.call('ZREM', KEYS[6], topic)
    if redis.call('HSETNX', KEYS[4], topic, 'starting') == 1 then
      redis.call('HSET', KEYS[5], topic, now)
      starts[#starts + 1] = topic
    end
  end
end
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[3]), ARGV[1])
return starts
"""

# KEYS: processes. ARGV: process id, lease end ms.
RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: counts, idle, processes, process info
# ARGV: now ms, grace ms, key prefix
REAP = """
local now = tonumber(ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(dead) do
  local key = ARGV[3] .. ':process:' .. id
  local held = redis.call('HGETALL', key)
  for i = 1, #held, 2 do
    local total = redis.call('HINCRBY', KEYS[1], held[i], -tonumber(held[i + 1]))
    if total <= 0 then
      redis.call('HDEL', KEYS[1], held[i])
      redis.call('ZADD', KEYS[2], 'NX', now + tonumber(ARGV[2]), held[i])
    end
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return dead
"""

# KEYS: idle, counts, states, started, topics, last publication. ARGV: now ms.
# Returns the claimed (topic, JSON) pairs flat, and when the next stop is due.
CLAIM_STOPS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local stops = {}
for _, topic in ipairs(due) do
  redis.call('ZREM', KEYS[1], topic)
  if not redis.call('HGET', KEYS[2], topic) then
    local info = redis.call('HGET', KEYS[5], topic)
    if redis.call('HDEL', KEYS[3], topic) == 1 and info then
      stops[#stops + 1] = topic
      stops[#stops + 1] = info
    end
    redis.call('HDEL', KEYS[4], topic)
    redis.call('HDEL', KEYS[5], topic)
    redis.call('HDEL', KEYS[6], topic)
  end
end
local after = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {stops, after[2] or false}
"""


def now_ms():
    return int(time.time() * 1000)


def _lease_ms():
    return int(option("PROCESS_LEASE") * 1000)


def _grace_ms():
    return int(option("STOP_GRACE") * 1000)


def topic_json(topic):
    return json.dumps({"source": topic.source, "params": topic.params})


class SubscriptionRegistry:
    """
    One server process's subscriptions, mirrored into the cluster counts.

    Connections call ``add(topic)`` once per subscription and ``remove(topic)``
    once when it ends; a page that subscribes twice to the same topic counts
    twice. Methods are coroutines on the process's event loop.
    """

    def __init__(self, process_id=None):
        self.process_id = process_id or uuid.uuid4().hex[:16]
        self.keys = Keys()
        self.local = Counter()
        self.topics = {}
        self.connections = 0
        # Set by the node: topic key -> local connections on it, for the admin.
        self.members = dict
        self.started_at = time.time()
        self.registered = False
        self._registering = asyncio.Lock()

    # --- subscriptions --------------------------------------------------------

    async def add(self, topic):
        """Count one subscription; True when the caller must start the source."""
        first, _ = await self.add_and_read(topic)
        return first

    async def add_and_read(self, topic, read=None):
        """
        Count one subscription, and run the reads that ``read(pipe)`` queues
        in the same round trip, after the count. Returns whether the caller
        must start the source, and the replies of those reads: a read that
        failed has its exception there, since the count stands regardless.
        """
        # Registering writes the local counts, which must not hold this
        # subscription yet: ADD counts it, and only ADD tells it is the first.
        await self._ensure_registered()
        self.local[topic.key] += 1
        self.topics[topic.key] = topic
        try:
            async with async_client().pipeline(transaction=False) as pipe:
                queue_script(
                    pipe,
                    ADD,
                    self._table_keys(),
                    [self.process_id, topic.key, topic_json(topic), now_ms()],
                )
                if read is not None:
                    read(pipe)
                counted, *replies = await pipe.execute(raise_on_error=False)
            if isinstance(counted, Exception):
                raise counted
        except BaseException:
            self._uncount(topic.key)
            self._mark_unsure()
            raise
        total, first = counted
        if total == LEASE_LOST:
            try:
                starts = await self.restore()
            except BaseException:
                # Uncounted here too, or the next restore would write it.
                self._uncount(topic.key)
                self._mark_unsure()
                raise
            return topic.key in starts, replies
        return bool(first), replies

    async def remove(self, topic):
        """Uncount one subscription; True when nobody in the cluster is left."""
        if self.local[topic.key] <= 0:
            return False
        self._uncount(topic.key)
        keys = self.keys
        try:
            total = await self._run(
                REMOVE,
                [keys.process(self.process_id), keys.counts, keys.idle, keys.processes],
                [self.process_id, topic.key, now_ms(), _grace_ms()],
            )
        except BaseException:
            self._mark_unsure()
            raise
        if total == LEASE_LOST:
            await self.restore()
            return False
        return total == 0

    def _uncount(self, topic_key):
        self.local[topic_key] -= 1
        if self.local[topic_key] <= 0:
            del self.local[topic_key]
            self.topics.pop(topic_key, None)

    def _mark_unsure(self):
        """Redis may or may not hold a change: the next renewal rewrites all."""
        self.registered = False

    async def restore(self, reason="lease lost"):
        """Write this process's whole state again; returns topics to start."""
        args = [self.process_id, now_ms(), _lease_ms(), _grace_ms()]
        for key, count in self.local.items():
            args += [key, count, topic_json(self.topics[key])]
        starts = await self._run(RESTORE, self._table_keys(), args)
        self.registered = True
        level = logging.WARNING if reason == "lease lost" else logging.DEBUG
        logger.log(
            level,
            "process %s wrote %d subscriptions on %d topics (%s)",
            self.process_id,
            sum(self.local.values()),
            len(self.local),
            reason,
        )
        return set(starts)

    # --- the process lease ----------------------------------------------------

    async def _ensure_registered(self):
        """
        Write this process's lease and counts unless they are written. Under
        a lock, so that subscriptions counted meanwhile wait and are added
        after it, each once.
        """
        async with self._registering:
            if not self.registered:
                return await self.restore(reason="registered")
        return set()

    async def renew(self):
        """Extend this process's lease; restore everything if it was lost."""
        if not self.registered:
            starts = await self._ensure_registered()
            await async_client().hset(
                self.keys.process_info, self.process_id, self.describe()
            )
            return starts
        async with async_client().pipeline(transaction=False) as pipe:
            self.queue_renewal(pipe)
            renewed, _ = await pipe.execute()
        return await self.renewed(renewed)

    def queue_renewal(self, pipe):
        """Queue on ``pipe`` the lease renewal and this process's description."""
        queue_script(
            pipe,
            RENEW,
            [self.keys.processes],
            [self.process_id, now_ms() + _lease_ms()],
        )
        pipe.hset(self.keys.process_info, self.process_id, self.describe())

    async def renewed(self, renewed):
        """
        After a queued renewal: the topics to start, when the lease was lost
        (or never written) and everything was restored.
        """
        if renewed and self.registered:
            return set()
        if not self.registered:
            return await self._ensure_registered()
        return await self.restore()

    def describe(self):
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self.started_at,
                "connections": self.connections,
                "subscriptions": sum(self.local.values()),
                "members": self.members(),
            }
        )

    async def close(self):
        """Give up this process's subscriptions at once (clean shutdown)."""
        self.local.clear()
        self.topics.clear()
        await self.restore(reason="closing")
        await async_client().zrem(self.keys.processes, self.process_id)
        await async_client().hdel(self.keys.process_info, self.process_id)
        self.registered = False

    def _table_keys(self):
        """The keys ADD and RESTORE work on, in their KEYS order."""
        keys = self.keys
        return [
            keys.process(self.process_id),
            keys.counts,
            keys.topics,
            keys.states,
            keys.started,
            keys.idle,
            keys.processes,
        ]

    async def _run(self, text, keys, args):
        return await script(async_client(), text)(keys=keys, args=args)


# --- cluster upkeep, callable from any process (daphne, Celery) ---------------


def _reap_args(keys):
    return (
        [keys.counts, keys.idle, keys.processes, keys.process_info],
        [now_ms(), _grace_ms(), keys.prefix],
    )


def _claim_args(keys):
    return (
        [
            keys.idle,
            keys.counts,
            keys.states,
            keys.started,
            keys.topics,
            keys.last_publication,
        ],
        [now_ms()],
    )


def _pairs(flat):
    return [(flat[i], json.loads(flat[i + 1])) for i in range(0, len(flat), 2)]


def queue_reap(pipe):
    """``reap()`` queued on ``pipe``: its reply is the ids."""
    queue_script(pipe, REAP, *_reap_args(Keys()))


def reap():
    """Uncount the subscriptions of dead processes; returns their ids."""
    keys, args = _reap_args(Keys())
    return script(sync_client(), REAP)(keys=keys, args=args)


def queue_claim_stops(pipe):
    """``claim_stops()`` queued on ``pipe``; ``claimed()`` reads its reply."""
    queue_script(pipe, CLAIM_STOPS, *_claim_args(Keys()))


def claimed(reply):
    """
    A CLAIM_STOPS reply: the [(key, info)] claimed, and when (ms since the
    epoch) the next stop on the idle list falls due, or None.
    """
    stops, after = reply
    return _pairs(stops), None if after is None else float(after)


def claim_stops():
    """Topics whose grace ran out, each handed to one caller: [(key, info)]."""
    keys, args = _claim_args(Keys())
    stops, _ = claimed(script(sync_client(), CLAIM_STOPS)(keys=keys, args=args))
    return stops


def snapshot():
    """Everything the cluster counts, for the admin and the tests."""
    keys = Keys()
    client = sync_client()
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.counts)
        pipe.hgetall(keys.topics)
        pipe.hgetall(keys.states)
        pipe.hgetall(keys.started)
        pipe.zrange(keys.idle, 0, -1, withscores=True)
        pipe.zrange(keys.processes, 0, -1, withscores=True)
        pipe.hgetall(keys.process_info)
        counts, topics, states, started, idle, processes, info = pipe.execute()
    holders = {}
    for process_id, _ in processes:
        for key, count in client.hgetall(keys.process(process_id)).items():
            holders.setdefault(key, {})[process_id] = int(count)
    return {
        "counts": {key: int(count) for key, count in counts.items()},
        "topics": {key: json.loads(value) for key, value in topics.items()},
        "states": states,
        "started": {key: int(value) for key, value in started.items()},
        "idle": dict(idle),
        "processes": {
            process_id: {"lease_end": lease, **json.loads(info.get(process_id, "{}"))}
            for process_id, lease in processes
        },
        "holders": holders,
    }
