"""run_topologies refuses a bad configuration before it runs anything."""
import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def test_no_kafka_bootstrap_is_a_command_error(settings):
    settings.KAFKA_BOOTSTRAP_SERVERS = ""
    with pytest.raises(CommandError, match="KAFKA_BOOTSTRAP_SERVERS"):
        call_command("run_topologies")


def test_an_unknown_topology_is_a_command_error():
    with pytest.raises(CommandError, match="no topology is named ghost"):
        call_command("run_topologies", "--only", "ghost")


def test_a_consumer_option_needs_a_value():
    with pytest.raises(CommandError, match="KEY=VALUE"):
        call_command("run_topologies", "--consumer-option", "session.timeout.ms")
