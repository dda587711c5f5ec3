"""The admin's live view of active sources, fed by a real daphne process."""
import asyncio

import pytest

from ..wsclient import Client

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def test_live_sources_view_shows_who_watches_what(processes, async_client,
                                                        django_user_model):
    """Subscriptions on a real server appear with counts, process and state."""
    server = processes.daphne()
    first = await Client.open(server)
    second = await Client.open(server)
    await first.subscribe("a", "departures", {"airport": "JFK"})
    await first.subscribe("b", "departures", {"airport": "JFK"})
    await second.subscribe("c", "departures", {"airport": "JFK"})
    admin = await django_user_model.objects.acreate(
        username="root", is_staff=True, is_superuser=True
    )
    await async_client.aforce_login(admin)

    page = await async_client.get("/admin/live-sources/")
    # Processes report their connections with each lease renewal.
    for _ in range(50):
        data = (await async_client.get("/admin/live-sources/?format=json")).json()
        if data["sources"] and data["sources"][0]["connections"] == 2:
            break
        await asyncio.sleep(0.1)

    assert page.status_code == 200 and b"Live sources" in page.content
    [row] = data["sources"]
    assert row["source"] == "departures" and row["params"] == {"airport": "JFK"}
    assert row["subscriptions"] == 3
    assert row["connections"] == 2
    assert row["state"] == "starting"
    assert row["processes"] == [f"{data['processes'][0]['label']}"]
    assert str(server.pid) in row["processes"][0]
    assert data["processes"][0]["connections"] == 2
    await first.close()
    await second.close()


async def test_live_sources_view_needs_staff(async_client):
    """Anonymous visitors are sent to the admin login."""
    response = await async_client.get("/admin/live-sources/?format=json")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
