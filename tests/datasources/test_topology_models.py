"""Topologies as admins configure them, and the start/stop API."""

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from datasources.models import Topology, TopologyStatus
from datasources.topologies import start_topology, stop_topology

pytestmark = pytest.mark.django_db


def topology(**fields):
    values = {"name": "flights", "topics": "flights", "source": "departures"}
    values.update(fields)
    return Topology(**values)


def test_clean_normalises_topics_and_derives_the_group():
    """Spaces and empty items go; the group defaults to vanilla-<name>."""
    item = topology(topics=" flights , flights.delayed ,")
    item.full_clean()
    assert item.topics == "flights,flights.delayed"
    assert item.group_id == "vanilla-flights"
    assert item.topic_names == ["flights", "flights.delayed"]


def test_save_derives_the_group_too():
    item = topology()
    item.save()
    assert item.group_id == "vanilla-flights"
    assert item.is_running


@pytest.mark.parametrize(
    "topics", ["", " , ", "bad topic", "a,a", "x" * 250, "..", "ünïcode"]
)
def test_topics_must_be_kafka_topic_names(topics):
    with pytest.raises(ValidationError) as caught:
        topology(topics=topics).full_clean()
    assert "topics" in caught.value.message_dict


def test_dead_letter_topic_must_be_a_kafka_topic_name():
    with pytest.raises(ValidationError) as caught:
        topology(dead_letter_topic="no spaces").full_clean()
    assert "dead_letter_topic" in caught.value.message_dict


@pytest.mark.parametrize("source", ["weather", "nosuchsource"])
def test_source_must_be_a_registered_stream_source(source):
    """A scheduled source or an unknown name is refused."""
    with pytest.raises(ValidationError) as caught:
        topology(source=source).full_clean()
    assert "source" in caught.value.message_dict


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"params_map": ["origin"]}, "params_map"),
        ({"params_map": {"airport": ""}}, "params_map"),
        ({"params_map": {"airport": 3}}, "params_map"),
        (
            {"params_map": {"airport": "origin"}, "payload_fields": "flight"},
            "payload_fields",
        ),
        (
            {"params_map": {"airport": "origin"}, "payload_fields": [""]},
            "payload_fields",
        ),
        ({"payload_fields": ["flight"]}, "payload_fields"),
    ],
)
def test_record_mapping_must_be_names_of_fields(fields, field):
    with pytest.raises(ValidationError) as caught:
        topology(**fields).full_clean()
    assert field in caught.value.message_dict


def test_a_record_mapping_reaches_the_runner_s_config():
    """The runner routes with the mapping when params come from the record."""
    from datasources.topology import TopologyConfig

    item = topology(params_map={"airport": "origin"}, payload_fields=["flight"])
    item.full_clean()
    item.save()
    mapping = TopologyConfig.of(item).mapping
    assert mapping.route({"origin": "JFK", "flight": 1, "dest": "BOS"}, "k") == [
        ({"airport": "JFK"}, {"flight": 1})
    ]
    assert TopologyConfig.of(topology(name="plain")).mapping is None


def test_start_and_stop_report_whether_anything_changed():
    topology().save()
    assert stop_topology("flights") is True
    assert stop_topology("flights") is False
    assert Topology.objects.get().desired_state == "stopped"
    assert start_topology("flights") is True
    assert Topology.objects.get().desired_state == "running"
    with pytest.raises(Topology.DoesNotExist):
        start_topology("nothing")


def test_setup_demo_creates_the_departures_topology_once():
    """Running it again leaves an edited topology alone."""
    call_command("setup_demo")
    demo = Topology.objects.get(name="departures")
    assert (demo.topics, demo.group_id, demo.source) == (
        "flights",
        "vanilla-departures",
        "departures",
    )
    assert (demo.mode, demo.start_from, demo.desired_state) == (
        "on_demand",
        "latest",
        "running",
    )
    Topology.objects.filter(pk=demo.pk).update(desired_state="stopped")
    call_command("setup_demo")
    assert Topology.objects.get().desired_state == "stopped"


def test_status_lag_and_liveness():
    item = topology()
    item.save()
    status = TopologyStatus.objects.create(
        topology=item,
        runner_id="host:1",
        state="running",
        partitions={"flights/0": {"lag": 3}, "flights/1": {"lag": None}},
    )
    assert status.lag == 3
    assert status.is_alive
