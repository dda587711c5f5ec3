"""
``departures``: flights leaving a New York airport, as they leave.

A topology feeds it from the Kafka topic that ``replay_flights`` fills with
the real 2013 departures (``setup_demo`` creates that topology). Each record
is one flight; it goes to the topic of its origin airport.
"""
from typing import Literal

import pydantic

from ..base import StreamSource

AIRPORTS = ("JFK", "LGA", "EWR")
#: A departure this many minutes late counts as delayed (the FAA's threshold).
DELAYED_AFTER = 15


class DeparturesParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    airport: Literal["JFK", "LGA", "EWR"]


class DeparturesSource(StreamSource):
    name = "departures"
    Params = DeparturesParams
    description = "Departures from JFK, LGA or EWR as they happen (2013, replayed)."
    history_size = 200
    stale_after = 120.0

    def route(self, value, key):
        if not isinstance(value, dict):
            raise ValueError("a departure must be a JSON object")
        origin = value.get("origin")
        if origin not in AIRPORTS:
            raise ValueError(f"unknown origin airport {origin!r}")
        return [({"airport": origin}, departure_row(value))]


def departure_row(value):
    """The compact row a departures board shows for one flight record."""
    delay = value.get("dep_delay")
    return {
        "carrier": value.get("carrier"),
        "carrier_name": value.get("carrier_name"),
        "flight": _flight(value.get("carrier"), value.get("flight")),
        "dest": value.get("dest"),
        "scheduled": value.get("sched_dep_time"),
        "departed": value.get("dep_time"),
        "delay": delay,
        "status": _status(value, delay),
        "tailnum": value.get("tailnum"),
        "date": value.get("date"),
    }


def _flight(carrier, number):
    """The flight's name, such as B6725; a missing part is left out."""
    return "".join(str(part) for part in (carrier, number) if part is not None)


def _status(value, delay):
    if value.get("cancelled") or value.get("dep_time") is None:
        return "cancelled"
    if delay is not None and delay >= DELAYED_AFTER:
        return "delayed"
    return "departed"
