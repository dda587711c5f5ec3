"""Create the demo's topology, unless it exists. Safe to run again."""
from django.core.management.base import BaseCommand

from datasources.models import Topology

DEMO_TOPOLOGY = {
    "description": "The 2013 New York departures that replay_flights produces.",
    "topics": "flights",
    "group_id": "vanilla-departures",
    "source": "departures",
    "mode": Topology.Mode.ON_DEMAND,
    "start_from": Topology.StartFrom.LATEST,
    "desired_state": Topology.DesiredState.RUNNING,
}


class Command(BaseCommand):
    help = "Create the demo topology 'departures' (Kafka topic 'flights') if absent."

    def handle(self, *args, **options):
        topology, created = Topology.objects.get_or_create(
            name="departures", defaults=DEMO_TOPOLOGY
        )
        if created:
            self.stdout.write(f"created topology {topology.name}")
        else:
            self.stdout.write(f"topology {topology.name} exists; left unchanged")
