"""
The data sources Vanilla serves in the benchmark (``bench.apps`` registers
them).

Both are stream sources, whose start and stop cost nothing, so that what is
measured is Pub-Sub and the topology runner: a subscribe costs what the
protocol, the subscription registry and the hub cost, not a Celery beat
entry or a demo file. Their params are validated by pydantic models, like
any source's.
"""
from typing import Literal

import pydantic

from datasources.base import StreamSource

AIRPORTS = ("JFK", "LGA", "EWR")


class FeedParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    #: A topic per measurement point, so that no point sees the last
    #: publication of the one before as its subscribe-time latest value.
    name: str = pydantic.Field(pattern=r"^[a-z0-9-]{1,40}$")


class FeedSource(StreamSource):
    """Publications that ``bench.publisher`` publishes straight to Pub-Sub."""

    name = "bench_feed"
    Params = FeedParams
    description = "Benchmark publications, published by bench.publisher."

    def route(self, value, key):
        raise ValueError("bench_feed is published to directly, not from Kafka")


class FlightParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    airport: Literal["JFK", "LGA", "EWR"]
    #: As for FeedParams.name: one set of topics per measurement point.
    point: str = pydantic.Field(pattern=r"^[a-z0-9-]{1,40}$")


class FlightSource(StreamSource):
    """
    Departure records that ``bench.publisher`` stamps into Kafka; a topology
    publishes each to the topic of its airport and measurement point.
    """

    name = "bench_departures"
    Params = FlightParams
    description = "Benchmark departures, from Kafka through a topology."

    def route(self, value, key):
        if not isinstance(value, dict) or value.get("origin") not in AIRPORTS:
            raise ValueError("a departure needs an origin among JFK, LGA and EWR")
        params = {"airport": value["origin"], "point": value["point"]}
        row = {
            "flight": f"{value['carrier']}{value['flight']}",
            "dest": value.get("dest"),
            "delay": value.get("dep_delay"),
            "date": value["date"],
        }
        return [(params, row)]
