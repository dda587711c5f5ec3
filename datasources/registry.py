"""
The data source registry: name -> DataSource.

Pub-Sub looks sources up here (``VANILLA["SOURCE_REGISTRY"]``). Built-in
sources register when the app loads (``DatasourcesConfig.ready``); a project
adds its own with ``registry.register(MySource())`` in its own ``ready()``.
"""
import re

from pubsub.exceptions import SourceDoesNotExist

from .base import DataSource

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class SourceRegistry:
    def __init__(self):
        self._sources = {}

    def register(self, source):
        if not isinstance(source, DataSource):
            raise TypeError(f"{source!r} is not a DataSource instance")
        if not NAME.match(getattr(source, "name", "") or ""):
            raise ValueError(
                f"{type(source).__name__}.name must match {NAME.pattern}, "
                f"got {getattr(source, 'name', None)!r}"
            )
        if source.name in self._sources:
            raise ValueError(f"a data source named {source.name!r} is registered")
        self._sources[source.name] = source
        return source

    def unregister(self, name):
        self._sources.pop(name, None)

    def get(self, name):
        try:
            return self._sources[name]
        except (KeyError, TypeError):
            raise SourceDoesNotExist(name) from None

    def __contains__(self, name):
        return name in self._sources

    def __iter__(self):
        return iter(sorted(self._sources.values(), key=lambda source: source.name))

    def names(self):
        return sorted(self._sources)


registry = SourceRegistry()
