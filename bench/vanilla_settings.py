"""
Vanilla's own settings, with the benchmark's data sources registered.

Every Pub-Sub option keeps its default (or its ``VANILLA_*`` variable); the
only addition is the ``bench`` app, whose ``ready()`` registers the sources
the scenarios subscribe to (``bench.sources``).
"""
from vanilla_site.settings import *  # noqa: F401,F403
from vanilla_site.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench"]
