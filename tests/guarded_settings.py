"""
The site's settings, with the data sources of ``tests.guarded_sources``
instead of the demo's: the daphne processes of the access and limit tests
run with ``DJANGO_SETTINGS_MODULE=tests.guarded_settings``. With
``VANILLA_TEST_SLOW_SESSIONS`` set, every session load takes a while.
"""
import os

import vanilla_site.settings as site

globals().update((name, value) for name, value in vars(site).items() if name.isupper())

VANILLA = {**site.VANILLA, "SOURCE_REGISTRY": "tests.guarded_sources.registry"}

if os.environ.get("VANILLA_TEST_SLOW_SESSIONS"):
    SESSION_ENGINE = "tests.slow_sessions"
