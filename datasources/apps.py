from django.apps import AppConfig


class DatasourcesConfig(AppConfig):
    name = "datasources"
    verbose_name = "Data sources"

    def ready(self):
        from .registry import registry
        from .sources.departures import DeparturesSource
        from .sources.weather import WeatherSource

        for source in (DeparturesSource(), WeatherSource()):
            if source.name not in registry:
                registry.register(source)
