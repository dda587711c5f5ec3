"""The topology admin: status column, status view, Start and Stop actions."""
import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from datasources.models import Topology, TopologyStatus

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:datasources_topology_changelist"


@pytest.fixture
def topologies():
    return [
        Topology.objects.create(name=name, topics=name, source="departures")
        for name in ("alpha", "beta", "gamma")
    ]


def report(topology, runner_id, age=0, **fields):
    values = {"state": "running", "heartbeat": timezone.now()}
    values["heartbeat"] -= datetime.timedelta(seconds=age)
    values.update(fields)
    return TopologyStatus.objects.create(
        topology=topology, runner_id=runner_id, **values
    )


def test_changelist_shows_each_runner_s_status(admin_client, topologies):
    """Live runners are summed up; a runner silent for long does not count."""
    alpha, beta, _ = topologies
    report(alpha, "a:1", partitions={"t/0": {"lag": 4}}, records_per_second=2.5)
    report(alpha, "a:2", partitions={"t/1": {"lag": 1}}, poison_count=2)
    report(beta, "b:1", age=60)
    response = admin_client.get(reverse(CHANGELIST))
    page = response.content.decode()
    assert response.status_code == 200
    assert 'data-topology-status="alpha"' in page
    assert "2 runners" in page
    assert "2 partitions, lag 5, 2.5 records/s, 2 poison" in page
    assert "no runner" in page
    assert "datasources/js/topology-status.js" in page


def test_status_view_gives_every_topology_s_line(admin_client, topologies):
    alpha = topologies[0]
    report(alpha, "a:1", state="error", last_error="_ALL_BROKERS_DOWN: <down>")
    url = reverse("admin:datasources_topology_status")
    lines = admin_client.get(url).json()["topologies"]
    assert set(lines) == {"alpha", "beta", "gamma"}
    assert "error" in lines["alpha"]
    assert "&lt;down&gt;" in lines["alpha"]


def test_status_view_needs_the_view_permission(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw")
    user.is_staff = True
    user.save()
    client.force_login(user)
    response = client.get(reverse("admin:datasources_topology_status"))
    assert response.status_code == 403


def test_change_form_shows_runner_rows_read_only(admin_client, topologies):
    alpha = topologies[0]
    report(alpha, "host:42", last_error="nothing")
    url = reverse("admin:datasources_topology_change", args=[alpha.pk])
    page = admin_client.get(url).content.decode()
    assert "host:42" in page
    assert "Kafka" in page and "Publishing" in page


def test_stop_and_start_report_in_the_plural(admin_client, topologies):
    """Actions say how many changed and how many were so already."""
    alpha, beta, gamma = topologies
    Topology.objects.filter(pk=gamma.pk).update(desired_state="stopped")
    url = reverse(CHANGELIST)
    everyone = [alpha.pk, beta.pk, gamma.pk]

    response = admin_client.post(
        url, {"action": "stop", "_selected_action": everyone}, follow=True
    )
    page = response.content.decode()
    assert "2 topologies were stopped" in page
    assert "1 topology was stopped already" in page
    assert set(Topology.objects.values_list("desired_state", flat=True)) == {"stopped"}

    response = admin_client.post(
        url, {"action": "start", "_selected_action": [alpha.pk]}, follow=True
    )
    assert "1 topology was started" in response.content.decode()
    assert Topology.objects.get(pk=alpha.pk).desired_state == "running"
