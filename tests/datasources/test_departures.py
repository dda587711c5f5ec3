"""The departures source: which topic a flight record goes to, and its row."""
import pytest

from datasources.management.commands.replay_flights import COLUMNS, Flights
from datasources.sources.departures import DeparturesSource
from pubsub.exceptions import InvalidParams

SOURCE = DeparturesSource()


def record(**fields):
    value = {
        "origin": "JFK",
        "carrier": "B6",
        "carrier_name": "JetBlue Airways",
        "flight": 725,
        "dest": "BQN",
        "sched_dep_time": "05:45",
        "dep_time": "05:44",
        "dep_delay": -1,
        "tailnum": "N804JB",
        "date": "2013-01-01",
        "cancelled": False,
    }
    value.update(fields)
    return value


@pytest.mark.parametrize("airport", ["JFK", "LGA", "EWR"])
def test_route_sends_a_departure_to_its_origin(airport):
    """One record, one publication, on the topic of its origin airport."""
    routes = SOURCE.route(record(origin=airport), airport)
    assert len(routes) == 1
    params, payload = routes[0]
    assert params == {"airport": airport}
    assert SOURCE.clean_params(params) == params


def test_row_is_what_a_departures_board_shows():
    """The payload is compact: flight name, times, delay, status."""
    [(_, payload)] = SOURCE.route(record(), "JFK")
    assert payload == {
        "carrier": "B6",
        "carrier_name": "JetBlue Airways",
        "flight": "B6725",
        "dest": "BQN",
        "scheduled": "05:45",
        "departed": "05:44",
        "delay": -1,
        "status": "departed",
        "tailnum": "N804JB",
        "date": "2013-01-01",
    }


@pytest.mark.parametrize(
    "fields, status",
    [
        ({"dep_delay": 14}, "departed"),
        ({"dep_delay": 15}, "delayed"),
        ({"dep_delay": None, "dep_time": None, "cancelled": True}, "cancelled"),
        ({"dep_delay": None, "dep_time": None}, "cancelled"),
    ],
)
def test_status_follows_the_delay(fields, status):
    """Fifteen minutes late is delayed; no departure time is cancelled."""
    [(_, payload)] = SOURCE.route(record(**fields), "JFK")
    assert payload["status"] == status


@pytest.mark.parametrize(
    "value",
    [
        record(origin="BOS"),
        record(origin=None),
        {"carrier": "B6"},
        ["JFK"],
        "JFK",
    ],
)
def test_route_refuses_what_is_not_a_new_york_departure(value):
    """ValueError makes the topology treat the record as poison."""
    with pytest.raises(ValueError):
        SOURCE.route(value, None)


def test_params_accept_only_the_three_airports():
    """Subscribers name JFK, LGA or EWR, and nothing else."""
    assert SOURCE.clean_params({"airport": "LGA"}) == {"airport": "LGA"}
    for params in ({"airport": "BOS"}, {}, {"airport": "JFK", "extra": 1}):
        with pytest.raises(InvalidParams):
            SOURCE.clean_params(params)


def test_a_replayed_flight_routes_to_its_airport(settings):
    """What replay_flights produces from the real data is what route() reads."""
    line = "2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,x"
    flights = Flights(settings.VANILLA["DEMO_DATA_DIR"])
    flights.airlines = {"UA": "United Air Lines Inc."}
    row = line.split(",")
    assert len(row) == len(COLUMNS)
    [(params, payload)] = SOURCE.route(flights.value(row), "EWR")
    assert params == {"airport": "EWR"}
    assert payload["flight"] == "UA1545"
    assert payload["carrier_name"] == "United Air Lines Inc."
    assert (payload["scheduled"], payload["departed"]) == ("05:15", "05:17")
    assert payload["status"] == "departed"
