"""
Celery beat entries of scheduled sources, one per watched topic.

An entry exists only while its topic is watched: ``enable`` creates it when
the first subscriber arrives and ``disable`` deletes it when the source stops.
django-celery-beat's database scheduler notices both, and any edit an admin
makes to a running entry's schedule, without a restart.
"""
import json
import logging

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

logger = logging.getLogger(__name__)

TASK = "datasources.tasks.refresh_source"


def entry_name(topic):
    return f"vanilla:{topic.key}"


def interval_of(source):
    """Seconds between fetches: ``VANILLA["INTERVALS"][name]`` or the class's."""
    overrides = getattr(settings, "VANILLA", {}).get("INTERVALS", {})
    return max(1, round(float(overrides.get(source.name, source.interval))))


def enable(source, topic):
    from .tasks import refresh_source

    with transaction.atomic():
        schedule, _ = IntervalSchedule.objects.get_or_create(
            every=interval_of(source), period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.update_or_create(
            name=entry_name(topic),
            defaults={
                "task": TASK,
                "interval": schedule,
                "kwargs": json.dumps({"source": source.name, "params": topic.params}),
                "enabled": True,
                "description": f"{source.name} {json.dumps(topic.params)}, "
                "while somebody watches it",
            },
        )
    # The first subscriber should not wait a whole interval for a value.
    transaction.on_commit(
        lambda: refresh_source.delay(source=source.name, params=topic.params)
    )
    logger.info("scheduled %s every %d s", topic.key, interval_of(source))


def disable(topic):
    deleted, _ = PeriodicTask.objects.filter(name=entry_name(topic)).delete()
    logger.info("unscheduled %s (%d entries)", topic.key, deleted)
