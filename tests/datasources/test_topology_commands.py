"""
run_topologies refuses a bad configuration before it runs anything; the
commands that run until a signal say who caught it.
"""
import logging
import signal

import pytest
from django.core.management import CommandError, call_command

from datasources.topology import capture_signals

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


def test_a_stopping_signal_is_logged_by_whoever_caught_it(caplog):
    """The replay command catches signals with the runner's helper, in its name."""
    stopped = []
    replay_log = logging.getLogger("datasources.replay")

    with caplog.at_level(logging.INFO), capture_signals(
        lambda: stopped.append(True), log=replay_log
    ):
        signal.raise_signal(signal.SIGTERM)

    assert stopped == [True]
    [record] = [r for r in caplog.records if "received SIGTERM" in r.getMessage()]
    assert record.name == "datasources.replay"
