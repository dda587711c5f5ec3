"""
The benchmark as a Django app (``bench.vanilla_settings`` installs it): it
registers the bench's data sources the way any project registers its own.
"""
from django.apps import AppConfig


class BenchConfig(AppConfig):
    name = "bench"
    verbose_name = "Benchmark"

    def ready(self):
        from datasources.registry import registry

        from .sources import FeedSource, FlightSource

        for source in (FeedSource(), FlightSource()):
            if source.name not in registry:
                registry.register(source)
