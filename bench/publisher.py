"""
The publisher: numbered publications at a fixed rate, stamped when published.

One process per measurement point. It gets its plan (JSON, first argument),
emits ``ready``, waits for a ``start`` line on stdin, then publishes
publication ``n`` for n = 0, 1, ... at ``rate`` a second per topic, emitting
``phase`` as n crosses each bound and ``end`` after the last one.

Modes, one per kind of server:

- ``vanilla``: ``pubsub.publishing.apublish()``, which stamps ``time``;
- ``redis``: PUBLISH of a frame shaped like Vanilla's, for the baselines;
- ``channels``: ``group_send()`` of that frame on the Redis channel layer;
- ``kafka``: a departure record per n, stamped in its ``date`` field, for a
  topology to route (``rotate`` spreads the records over the topics).
"""
import asyncio
import json
import sys
import time

from .baselines import topic_key


def encode(body):
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class Publisher:
    def __init__(self, plan):
        self.plan = plan
        self.topics = [(source, params) for source, params in plan["topics"]]
        self.pad = "x" * plan["pad"]

    async def setup(self):
        mode = self.plan["mode"]
        if mode == "vanilla":
            self.send = await self._vanilla()
        elif mode == "redis":
            self.send = await self._redis()
        elif mode == "channels":
            self.send = await self._channels()
        elif mode == "kafka":
            self.send = self._kafka()
        else:
            raise ValueError(f"unknown publisher mode {mode!r}")

    async def _vanilla(self):
        import django

        django.setup()
        from pubsub.publishing import apublish
        from pubsub.topics import Topic

        topics = [Topic.of(source, params) for source, params in self.topics]

        async def send(n, index):
            await apublish(topics[index], {"n": n, "pad": self.pad})

        return send

    def frame(self, n, index):
        source, params = self.topics[index]
        return encode(
            {
                "op": "data",
                "id": "a",
                "seq": n + 1,
                "source": source,
                "params": params,
                "time": time.time(),
                "data": {"n": n, "pad": self.pad},
            }
        )

    async def _redis(self):
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.plan["redis_url"])
        prefix = self.plan["prefix"]
        channels = [f"{prefix}:{topic_key(*topic)}" for topic in self.topics]
        await client.ping()

        async def send(n, index):
            await client.publish(channels[index], self.frame(n, index))

        return send

    async def _channels(self):
        from channels_redis.core import RedisChannelLayer

        from .baselines.channels_app import group_name

        layer = RedisChannelLayer(
            hosts=[self.plan["redis_url"]], prefix=f"{self.plan['prefix']}-layer:"
        )
        groups = [group_name(topic_key(*topic)) for topic in self.topics]

        async def send(n, index):
            await layer.group_send(
                groups[index],
                {"type": "bench.publication", "text": self.frame(n, index)},
            )

        return send

    def _kafka(self):
        from confluent_kafka import Producer

        settings = self.plan["kafka"]
        producer = Producer(
            {"bootstrap.servers": settings["bootstrap"], "linger.ms": 5, "acks": 1}
        )
        topic = settings["topic"]

        async def send(n, index):
            params = self.topics[index][1]
            record = {
                "origin": params["airport"],
                "point": params["point"],
                "carrier": "BN",
                "carrier_name": None,
                "flight": n,
                "dest": "BOS",
                "sched_dep_time": 1200,
                "dep_time": 1201,
                "dep_delay": 1,
                "tailnum": "N0BENCH",
                "date": time.time(),
            }
            producer.produce(
                topic, encode(record).encode(), key=params["airport"].encode()
            )
            producer.poll(0)

        self.flush = lambda: producer.flush(10)
        return send

    async def run(self):
        plan = self.plan
        bounds = plan["bounds"]
        total = bounds[-1]
        interval = 1.0 / plan["rate"]
        rotate = plan.get("spread") == "rotate"
        count = len(self.topics)
        loop = asyncio.get_running_loop()
        began = loop.time()
        lag = 0.0
        for n in range(total):
            if n in bounds:
                emit("phase", index=bounds.index(n), t=time.time())
            due = began + n * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            if rotate:
                await self.send(n, n % count)
            else:
                for index in range(count):
                    await self.send(n, index)
        if hasattr(self, "flush"):
            self.flush()
        emit("end", t=time.time(), lag=lag)


def emit(event, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def main(plan):
    publisher = Publisher(plan)
    await publisher.setup()
    emit("ready")
    await asyncio.to_thread(sys.stdin.readline)
    await publisher.run()
    await asyncio.to_thread(sys.stdin.readline)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
