"""The HTTP API that issues, lists and revokes access tokens."""
import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from pubsub.models import AccessToken

pytestmark = pytest.mark.django_db

TOKENS = "/api/tokens/"


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def browser(alice):
    client = Client()
    client.force_login(alice)
    return client


def post(client, body):
    return client.post(TOKENS, json.dumps(body), content_type="application/json")


def test_anonymous_callers_get_401_not_a_redirect():
    response = post(Client(), {"name": "script"})
    assert response.status_code == 401
    assert response.json() == {"error": "sign in first"}


def test_issue_shows_the_secret_once_and_it_signs_in(browser, alice):
    response = post(browser, {"name": " nightly export ", "days": 7})

    assert response.status_code == 201
    issued = response.json()
    token = AccessToken.objects.for_secret(issued["token"])
    assert token.user == alice and token.name == "nightly export"
    assert token.refusal() is None
    assert 6.9 < (token.expires - token.created).total_seconds() / 86400 < 7.1
    # The list never shows a secret again.
    listed = browser.get(TOKENS).json()["tokens"]
    assert [entry["id"] for entry in listed] == [token.pk]
    assert "token" not in listed[0] and issued["token"] not in json.dumps(listed)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 101},
        {"name": 3},
        {"name": "ok", "days": 0},
        {"name": "ok", "days": 366},
        {"name": "ok", "days": "7"},
        {"name": "ok", "days": True},
        ["name"],
    ],
)
def test_bad_requests_are_refused_with_a_reason(browser, body):
    response = post(browser, body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert not AccessToken.objects.exists()


def test_a_body_that_is_not_json_is_refused(browser):
    response = browser.post(TOKENS, "{oops", content_type="application/json")
    assert response.status_code == 400


def test_revoke_own_token_only(browser, alice):
    mine, _ = AccessToken.objects.issue(alice, "mine")
    bob = get_user_model().objects.create_user("bob")
    theirs, _ = AccessToken.objects.issue(bob, "theirs")

    assert browser.delete(f"{TOKENS}{theirs.pk}/").status_code == 404
    response = browser.delete(f"{TOKENS}{mine.pk}/")

    assert response.status_code == 200 and response.json()["revoked"]
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.refusal() == "revoked" and theirs.refusal() is None
    assert browser.get(TOKENS).json()["tokens"][0]["id"] == mine.pk


def test_csrf_protects_issuing(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert post(client, {"name": "forged"}).status_code == 403
    assert not AccessToken.objects.exists()
