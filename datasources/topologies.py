"""
Starting and stopping topologies from code and from the admin.

These only record the desired state; every ``run_topologies`` process reads it
about once a second and starts or stops its consumers to match.
"""
from django.utils import timezone

from .models import Topology

RUNNING = Topology.DesiredState.RUNNING
STOPPED = Topology.DesiredState.STOPPED


def start_topology(name):
    """Ask the runners to run ``name``; False if it was already asked to."""
    return _set_one(name, RUNNING)


def stop_topology(name):
    """Ask the runners to stop ``name``; False if it was already asked to."""
    return _set_one(name, STOPPED)


def set_desired_state(queryset, state):
    """Set ``state`` on every topology of ``queryset``; returns how many changed."""
    changed = queryset.exclude(desired_state=state)
    return changed.update(desired_state=state, updated=timezone.now())


def _set_one(name, state):
    # Raise Topology.DoesNotExist for a name nobody configured.
    topology = Topology.objects.get(name=name)
    return bool(set_desired_state(Topology.objects.filter(pk=topology.pk), state))
