"""Vanilla's built-in data sources, registered by ``DatasourcesConfig.ready``."""
