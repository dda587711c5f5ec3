"""
Who may connect and subscribe: the Origin check against cross-site websocket
hijacking, Django sessions for browsers, revocable access tokens for
programmatic clients, and each source's permission. The connections go
through the site's real websocket stack (``vanilla_site.asgi``).
"""
import datetime
import logging
from types import SimpleNamespace

import pytest
from asgiref.compatibility import is_double_callable
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Permission
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from pubsub import auth
from pubsub.backpressure import SocketMiddleware
from pubsub.exceptions import SubscriptionForbidden
from pubsub.models import AccessToken, digest_of
from vanilla_site.asgi import application

from ..guarded_sources import GuardedStream
from .helpers import closed_with, connect, receive, send, subscribe

# Sign-in reads the database for every cookie or token presented.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SITE = (b"origin", b"http://127.0.0.1:8000")


@pytest.fixture(autouse=True)
def fresh_refusal_logs():
    """Refusals are logged once per Origin or token: forget earlier tests'."""
    auth.origin_refusals.clear()
    auth.token_refusals.clear()


@pytest.fixture
def guarded(registry):
    """Sources for anyone, for signed-in users, and for one permission."""
    for name, permission in [
        ("open", None),
        ("members", "authenticated"),
        ("staff", "pubsub.view_accesstoken"),
    ]:
        registry.add(GuardedStream(name, permission))
    return registry


@pytest.fixture
def users(transactional_db):
    User = get_user_model()
    plain = User.objects.create_user("plain")
    staff = User.objects.create_user("staff")
    staff.user_permissions.add(Permission.objects.get(codename="view_accesstoken"))
    idle = User.objects.create_user("idle")
    return SimpleNamespace(plain=plain, staff=staff, idle=idle)


def session_cookie(user):
    """The Cookie header of a browser that signed in as ``user``."""
    browser = Client()
    browser.force_login(user)
    return (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())


def token_protocols(secret):
    return ["vanilla", auth.TOKEN_SUBPROTOCOL + secret]


async def site(headers=(SITE,), **options):
    """A connection through the site's whole websocket stack."""
    return await connect(application, headers=list(headers), **options)


async def subscribe_reply(client, source, id="x"):
    """The first frame answering a subscribe to ``source``."""
    await send(client, {"op": "subscribe", "id": id, "source": source})
    return await receive(client)


def test_the_websocket_middlewares_are_asgi_3_applications():
    """
    They return their inner application's coroutine instead of awaiting it,
    and say so: a server that tells ASGI 2 from 3 takes them for ASGI 3.
    """
    for middleware in [
        SocketMiddleware(application),
        auth.OriginValidator(application, ["*"]),
        auth.SignInMiddleware(application),
    ]:
        assert not is_double_callable(middleware)


# --- Origin ----------------------------------------------------------------------

FOREIGN_ORIGINS = {
    "another site": [b"http://evil.example"],
    "a sandboxed page": [b"null"],
    "a suffix of an allowed host": [b"http://127.0.0.1.evil.example"],
    "the allowed host in the path": [b"http://evil.example/127.0.0.1"],
    "the allowed host as user info": [b"http://127.0.0.1@evil.example"],
    "a local file": [b"file://"],
    "a broken URL": [b"http://[::1"],
    "two Origins": [b"http://127.0.0.1", b"http://evil.example"],
}


@pytest.mark.parametrize(
    "origins", FOREIGN_ORIGINS.values(), ids=FOREIGN_ORIGINS.keys()
)
async def test_foreign_origins_are_closed_with_4003(node, origins, caplog):
    """A page from elsewhere cannot use a visitor's session: 4003 after handshake."""
    caplog.set_level(logging.INFO, logger="pubsub.auth")

    client = await site(headers=[(b"origin", origin) for origin in origins])

    assert await closed_with(client) == 4003
    assert not node.connections
    refusals = [
        r for r in caplog.records if "refused a websocket from Origin" in r.message
    ]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING


async def test_a_foreign_origin_is_logged_once_with_its_reason(node, caplog):
    """Repeated attempts from one Origin make one warning that says why."""
    caplog.set_level(logging.INFO, logger="pubsub.auth")

    for _ in range(5):
        client = await site(headers=[(b"origin", b"http://evil.example")])
        assert await closed_with(client) == 4003

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "refused a websocket from Origin 'http://evil.example': not in ALLOWED_HOSTS"
    ]


@pytest.mark.parametrize(
    "headers",
    [[SITE], [(b"origin", b"https://localhost")], []],
    ids=["the site itself", "another allowed host", "no Origin (not a browser)"],
)
async def test_allowed_origins_and_non_browsers_are_served(node, headers):
    """The site's own Origins, and clients that send none, get a working connection."""
    client = await site(headers=headers)

    await send(client, {"op": "ping"})

    assert await receive(client) == {"op": "pong"}
    await client.disconnect()


# --- per-source permissions ---------------------------------------------------------


def test_a_source_declares_who_may_subscribe(users):
    """None: anyone; "authenticated": signed-in users; else a permission."""
    anyone = GuardedStream("open", None)
    members = GuardedStream("members", "authenticated")
    staff = GuardedStream("staff", "pubsub.view_accesstoken")

    for user in (None, AnonymousUser(), users.plain, users.staff):
        anyone.check_access(user)
    for refused in (None, AnonymousUser()):
        with pytest.raises(SubscriptionForbidden, match="signed-in"):
            members.check_access(refused)
    members.check_access(users.plain)
    with pytest.raises(SubscriptionForbidden, match="pubsub.view_accesstoken"):
        staff.check_access(users.plain)
    staff.check_access(users.staff)


async def test_anonymous_clients_get_forbidden_for_guarded_sources(guarded, node):
    """Without a session or token only open sources may be subscribed."""
    client = await site()

    members = await subscribe_reply(client, "members", id="m")
    staff = await subscribe_reply(client, "staff", id="s")

    assert (members["code"], members["id"]) == ("forbidden", "m")
    assert (staff["code"], staff["id"]) == ("forbidden", "s")
    await subscribe(client, "o", source="open")
    await client.disconnect()


# --- Django sessions ------------------------------------------------------------


async def test_a_browser_session_signs_the_connection_in(guarded, node, users):
    """The session cookie makes the user's own sources available, and no others."""
    cookie = await sync_to_async(session_cookie)(users.plain)
    client = await site(headers=[SITE, cookie])

    await subscribe(client, "m", source="members")
    staff = await subscribe_reply(client, "staff")

    assert staff["code"] == "forbidden"
    assert "pubsub.view_accesstoken" in staff["message"]
    await client.disconnect()


async def test_a_session_with_the_permission_may_subscribe(guarded, node, users):
    """The permission check reads the database and passes for a user who has it."""
    cookie = await sync_to_async(session_cookie)(users.staff)
    client = await site(headers=[SITE, cookie])

    await subscribe(client, "s", source="staff")

    await client.disconnect()


async def test_a_forged_session_cookie_is_anonymous(guarded, node, users):
    """A session key the server never issued signs nobody in."""
    client = await site(headers=[SITE, (b"cookie", b"sessionid=" + b"a" * 32)])

    assert (await subscribe_reply(client, "members"))["code"] == "forbidden"
    await client.disconnect()


async def test_a_session_from_before_a_password_change_is_anonymous(
    guarded, node, users
):
    """Changing the password signs out other sessions, websockets included."""
    cookie = await sync_to_async(session_cookie)(users.plain)
    users.plain.set_password("changed")
    await sync_to_async(users.plain.save)()

    client = await site(headers=[SITE, cookie])

    assert (await subscribe_reply(client, "members"))["code"] == "forbidden"
    await client.disconnect()


async def test_a_session_signed_with_a_fallback_secret_stays_as_it_is(
    guarded, node, users, settings
):
    """
    After a secret key rotation the browser's session still signs it in, and
    the websocket leaves it alone: Django's own check would give it a new key
    that the browser never learns, signing it out.
    """
    settings.SECRET_KEY = "the key before the rotation, long enough for a test"
    cookie = await sync_to_async(session_cookie)(users.plain)
    key = cookie[1].split(b"=", 1)[1].decode()
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "the key after the rotation, also long enough for it"

    client = await site(headers=[SITE, cookie])

    await subscribe(client, "m", source="members")
    await client.disconnect()
    assert await sync_to_async(Session.objects.filter(session_key=key).exists)()


# --- access tokens ----------------------------------------------------------------


def issue(user, **options):
    return AccessToken.objects.issue(user, "test client", **options)


async def test_a_token_subprotocol_signs_the_connection_in(guarded, node, users):
    """The token's user may subscribe; the server never echoes the token."""
    token, secret = await sync_to_async(issue)(users.staff)

    client = await site(subprotocols=token_protocols(secret))

    await subscribe(client, "s", source="staff")
    await client.disconnect()
    await sync_to_async(token.refresh_from_db)()
    assert token.last_used is not None


async def test_the_server_selects_vanilla_not_the_token(guarded, node, users):
    """The accepted subprotocol is "vanilla"; a token alone selects none."""
    _, secret = await sync_to_async(issue)(users.plain)
    offers = [(token_protocols(secret), "vanilla"), (token_protocols(secret)[1:], None)]

    for offered, chosen in offers:
        communicator = WebsocketCommunicator(
            application, "/ws/", headers=[SITE], subprotocols=offered
        )
        assert await communicator.connect() == (True, chosen)
        await communicator.disconnect()


async def test_a_token_in_the_query_string_signs_the_connection_in(
    guarded, node, users
):
    """Clients that cannot set subprotocols pass ?token=."""
    _, secret = await sync_to_async(issue)(users.plain)

    client = await site(path=f"/ws/?token={secret}")

    await subscribe(client, "m", source="members")
    await client.disconnect()


def refused_tokens(users):
    """(name, secret) of tokens that must not open a connection."""
    _, revoked = issue(users.plain)
    AccessToken.objects.filter(digest=digest_of(revoked)).revoke()
    _, expired = issue(
        users.plain, expires=timezone.now() - datetime.timedelta(seconds=1)
    )
    _, inactive = issue(users.idle)
    users.idle.is_active = False
    users.idle.save()
    return [
        ("unknown token", "vt_" + "x" * 43),
        ("unknown token", "\x00\n" + "y" * 300),
        ("revoked", revoked),
        ("expired", expired),
        ("its user is inactive", inactive),
    ]


async def test_invalid_tokens_are_closed_with_4003_and_logged_once(
    guarded, node, users, caplog
):
    """Unknown, revoked or expired tokens, an inactive user's: 4003, logged once."""
    caplog.set_level(logging.INFO, logger="pubsub.auth")
    cases = await sync_to_async(refused_tokens)(users)

    for _, secret in cases * 2:
        client = await site(subprotocols=token_protocols(secret))
        assert await closed_with(client) == 4003

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == len(cases), warnings
    for (reason, secret), line in zip(cases, warnings):
        assert line.endswith(f": {reason}"), line
        assert secret[10:] not in line, "the log shows no more than a secret's start"
        assert "\n" not in line and "\x00" not in line
    assert not node.connections


async def test_revoking_a_token_closes_its_live_connections(
    guarded, node, users, settings
):
    """A revoked token's connections close with 4003 within the check interval."""
    settings.VANILLA = {**settings.VANILLA, "TOKEN_CHECK_INTERVAL": 0.1}
    token, secret = await sync_to_async(issue)(users.plain)
    _, other_secret = await sync_to_async(issue)(users.plain)
    first = await site(subprotocols=token_protocols(secret))
    second = await site(subprotocols=token_protocols(secret))
    other = await site(subprotocols=token_protocols(other_secret))
    await subscribe(first, "m", source="members")

    await sync_to_async(AccessToken.objects.filter(pk=token.pk).revoke)()

    assert await closed_with(first) == 4003
    assert await closed_with(second) == 4003
    await send(other, {"op": "ping"})
    assert await receive(other) == {"op": "pong"}
    await other.disconnect()


async def test_a_token_that_expires_closes_its_connection(
    guarded, node, users, settings
):
    """Expiry is checked on live connections too."""
    settings.VANILLA = {**settings.VANILLA, "TOKEN_CHECK_INTERVAL": 0.1}
    soon = timezone.now() + datetime.timedelta(seconds=0.5)
    _, secret = await sync_to_async(issue)(users.plain, expires=soon)

    client = await site(subprotocols=token_protocols(secret))

    assert await closed_with(client, timeout=5) == 4003


# --- issuing and revoking ---------------------------------------------------------


def test_the_admin_shows_a_new_secret_once_and_keeps_only_its_digest(
    admin_client, users
):
    """Issuing in the admin shows the secret on an uncached page; the table has none."""
    response = admin_client.post(
        "/admin/pubsub/accesstoken/add/",
        {"user": users.plain.pk, "name": "dashboard", "expires_0": "", "expires_1": ""},
    )

    secret = response.context["secret"]
    token = AccessToken.objects.get(name="dashboard")
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert secret.startswith("vt_") and secret in response.content.decode()
    assert token.digest == digest_of(secret) and secret not in str(vars(token))
    assert AccessToken.objects.for_secret(secret) == token


def test_the_admin_action_revokes_tokens(admin_client, users):
    """The "revoke" action marks the selected tokens revoked, and says how many."""
    tokens = [issue(users.plain)[0] for _ in range(2)]

    response = admin_client.post(
        "/admin/pubsub/accesstoken/",
        {"action": "revoke_tokens", "_selected_action": [t.pk for t in tokens]},
        follow=True,
    )

    assert "Revoked 2 tokens." in response.content.decode()
    assert not AccessToken.objects.valid().exists()


def test_issue_token_prints_a_working_secret(users, capsys):
    """manage.py issue_token prints the secret of a new, valid token."""
    call_command("issue_token", "plain", "--name", "cron job", "--days", "30")

    secret = capsys.readouterr().out.strip()
    token = AccessToken.objects.for_secret(secret)
    assert token.name == "cron job" and token.user == users.plain
    assert token.refusal() is None and token.expires > timezone.now()


@pytest.mark.parametrize(
    "args, message",
    [
        (["nobody", "--name", "x"], "no user"),
        (["plain", "--name", "x", "--days", "0"], "positive"),
    ],
)
def test_issue_token_refuses_bad_arguments(users, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("issue_token", *args)
