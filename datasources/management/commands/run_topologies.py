"""Run the Kafka topologies whose desired state is "running"."""
import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from datasources.models import Topology
from datasources.topology import TopologyRunner

logger = logging.getLogger("datasources.topology")


class Command(BaseCommand):
    help = (
        "Consume the Kafka topics of every running topology and publish their "
        "records to the topologies' data sources, until SIGINT or SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--only",
            action="append",
            default=[],
            metavar="NAME",
            help="Run only this topology (repeatable).",
        )
        parser.add_argument(
            "--runner-id",
            help="How the status rows name this process (default host:pid).",
        )
        parser.add_argument(
            "--consumer-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="A librdkafka consumer setting, e.g. session.timeout.ms=6000.",
        )

    def handle(self, *args, only, runner_id, consumer_option, **options):
        if not getattr(settings, "KAFKA_BOOTSTRAP_SERVERS", ""):
            raise CommandError(
                "settings.KAFKA_BOOTSTRAP_SERVERS is empty: set "
                "VANILLA_KAFKA_BOOTSTRAP_SERVERS to the Kafka brokers."
            )
        unknown = set(only) - set(
            Topology.objects.filter(name__in=only).values_list("name", flat=True)
        )
        if unknown:
            raise CommandError(f"no topology is named {', '.join(sorted(unknown))}")
        runner = TopologyRunner(
            runner_id=runner_id,
            only=only,
            consumer_options=_parse_options(consumer_option),
        )
        logger.info(
            "runner %s: starting for %s",
            runner.runner_id,
            ", ".join(only) or "every running topology",
        )
        runner.run()


def _parse_options(pairs):
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise CommandError(f"--consumer-option wants KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options
