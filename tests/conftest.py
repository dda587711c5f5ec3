"""
Fixtures shared by every test.

Unit tests use the in-memory channel layer and no services. Tests that need
Redis, Kafka or processes get a Redis key prefix of their own, so that tests
never see each other's topics, counts or processes.
"""
import os
import uuid

import pytest
from django.conf import settings

from pubsub.connection import reset_clients, sync_client
from pubsub.node import forget_nodes

from .processes import Processes


def _unique_prefix():
    return f"vtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_prefix(settings):
    """A Redis key prefix for this test alone; its keys go when it ends."""
    prefix = _unique_prefix()
    settings.VANILLA = {**settings.VANILLA, "REDIS_PREFIX": prefix}
    reset_clients()
    forget_nodes()
    yield prefix
    client = sync_client()
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    reset_clients()
    forget_nodes()


@pytest.fixture
def vanilla_settings(settings, redis_prefix):
    """Shorter lease and grace, so lifecycle tests finish in seconds."""
    settings.VANILLA = {
        **settings.VANILLA,
        "PROCESS_LEASE": 3.0,
        "STOP_GRACE": 1.0,
        "JANITOR_INTERVAL": 0.2,
    }
    return settings.VANILLA


@pytest.fixture
def processes(request, tmp_path, redis_prefix, vanilla_settings, transactional_db):
    """
    Starts real processes sharing this test's Redis prefix and the test
    database; stops them at the end and prints their logs if the test failed.
    """
    db = settings.DATABASES["default"]
    env = dict(
        os.environ,
        VANILLA_REDIS_PREFIX=redis_prefix,
        VANILLA_DB_NAME=str(db["NAME"]),
        VANILLA_PROCESS_LEASE=str(vanilla_settings["PROCESS_LEASE"]),
        VANILLA_STOP_GRACE=str(vanilla_settings["STOP_GRACE"]),
        VANILLA_JANITOR_INTERVAL=str(vanilla_settings["JANITOR_INTERVAL"]),
        VANILLA_LOG_LEVEL="INFO",
        VANILLA_CELERY_QUEUE=f"{redis_prefix}-tasks",
        PYTHONUNBUFFERED="1",
    )
    group = Processes(env, tmp_path)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
