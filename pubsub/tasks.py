"""Pub-Sub's periodic upkeep, for when no server process is left to do it."""
from celery import shared_task

from .lifecycle import upkeep as run_upkeep


@shared_task(ignore_result=True)
def upkeep():
    """Reap dead server processes and stop sources whose grace ran out."""
    return run_upkeep()
