"""From a Kafka record to publications: what is published, what is poison."""

import json

import pytest

from datasources.base import StreamSource
from datasources.records import PoisonRecord, RecordMapping, coordinates, publications
from datasources.sources.departures import DeparturesParams


class Record:
    """The few things of a confluent_kafka.Message that records.py reads."""

    def __init__(self, value, key=b"k", offset=7):
        if value is not None and not isinstance(value, bytes):
            value = json.dumps(value).encode()
        self._value, self._key, self._offset = value, key, offset

    def value(self):
        return self._value

    def key(self):
        return self._key

    def topic(self):
        return "flights"

    def partition(self):
        return 2

    def offset(self):
        return self._offset


class AirportSource(StreamSource):
    name = "airports"
    Params = DeparturesParams

    def route(self, value, key):
        if value.get("refuse"):
            raise ValueError("refused")
        return [({"airport": value["airport"]}, {"key": key, **value})]


SOURCE = AirportSource()


def test_a_good_record_becomes_one_publication_per_route():
    """The params are cleaned into a topic; the key reaches route() as text."""
    [(topic, payload)] = publications(SOURCE, Record({"airport": "JFK"}), 100)
    assert (topic.source, topic.params) == ("airports", {"airport": "JFK"})
    assert payload == {"key": "k", "airport": "JFK"}
    assert coordinates(Record({})) == {"topic": "flights", "partition": 2, "offset": 7}


@pytest.mark.parametrize(
    "record, reason",
    [
        (Record(None), "not_json"),
        (Record(b"{oops"), "not_json"),
        (Record(b'"\xff"'), "not_utf8"),
        (Record({"airport": "JFK"}, key=b"\xff"), "not_utf8"),
        (Record({"airport": "JFK", "pad": "x" * 200}), "too_large"),
        (Record({"airport": "JFK", "refuse": True}), "unroutable"),
        (Record({"no_airport": True}), "unroutable"),
        (Record({"airport": "BOS"}), "invalid_params"),
    ],
)
def test_poison_records_say_why(record, reason):
    """Each kind of bad record raises PoisonRecord with its reason."""
    with pytest.raises(PoisonRecord) as caught:
        publications(SOURCE, record, 100)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_a_record_of_exactly_the_limit_is_accepted():
    """max_record_bytes is inclusive."""
    record = Record({"airport": "JFK"})
    assert publications(SOURCE, record, len(record.value()))


def test_a_topology_mapping_routes_instead_of_the_source():
    """Params from fields (dotted paths) or the key; payload from listed fields."""
    record = Record(
        {"flight": {"origin": "LGA", "number": 7}, "dest": "BOS"}, key=b"EWR"
    )
    nested = RecordMapping({"airport": "flight.origin"}, ["dest"])
    [(topic, payload)] = publications(SOURCE, record, 1000, nested)
    assert topic.params == {"airport": "LGA"}
    assert payload == {"dest": "BOS"}

    by_key = RecordMapping({"airport": "@key"})
    [(topic, payload)] = publications(SOURCE, record, 1000, by_key)
    assert topic.params == {"airport": "EWR"}
    assert payload == {"flight": {"origin": "LGA", "number": 7}, "dest": "BOS"}


@pytest.mark.parametrize(
    "value, reason",
    [
        ({"dest": "BOS"}, "unroutable"),
        ({"flight": "LGA"}, "unroutable"),
        ([1, 2], "unroutable"),
        ({"flight": {"origin": "BOS"}}, "invalid_params"),
    ],
)
def test_a_record_the_mapping_cannot_route_is_poison(value, reason):
    mapping = RecordMapping({"airport": "flight.origin"})
    with pytest.raises(PoisonRecord) as caught:
        publications(SOURCE, Record(value), 1000, mapping)
    assert caught.value.reason == reason
