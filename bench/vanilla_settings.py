"""
Vanilla's own settings, with the benchmark's data sources registered.

Every Pub-Sub option keeps its default (or its ``VANILLA_*`` variable); the
only addition is the ``bench`` app, whose ``ready()`` registers the sources
the scenarios subscribe to (``bench.sources``).
"""
import vanilla_site.settings as site

globals().update((name, value) for name, value in vars(site).items() if name.isupper())

INSTALLED_APPS = [*site.INSTALLED_APPS, "bench"]
