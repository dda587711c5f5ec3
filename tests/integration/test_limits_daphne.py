"""
Limits and access on a real daphne, where they depend on the server: frames
refused from their header, a client that stops reading its socket, the
connection maximum, Origins, sessions and tokens over real handshakes.
The daphne processes serve the sources of ``tests.guarded_sources``.
"""
import asyncio
import socket
import time

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client as Browser

from pubsub.auth import TOKEN_SUBPROTOCOL
from pubsub.models import AccessToken
from pubsub.publishing import apublish
from pubsub.topics import Topic

from .. import slow_sessions
from ..rawclient import BINARY, TEXT, RawClient, handshake
from ..wsclient import Client

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

OUTBOX_SIZE = 50
MAX_CONNECTIONS = 4


@pytest.fixture
def server(processes):
    """A daphne of the guarded sources; whatever the test did, nothing failed in it."""
    server = processes.daphne(
        extra_env={
            "DJANGO_SETTINGS_MODULE": "tests.guarded_settings",
            "VANILLA_OUTBOX_SIZE": str(OUTBOX_SIZE),
            "VANILLA_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "VANILLA_TOKEN_CHECK_INTERVAL": "0.2",
        }
    )
    yield server
    assert " ERROR " not in server.log() and "Traceback" not in server.log()


def close_code(connection):
    return connection.close_code


async def closed_with(connection, timeout=5):
    """The close code the server ends ``connection`` with, frames skipped."""
    try:
        while True:
            await asyncio.wait_for(connection.recv(), timeout)
    except websockets.ConnectionClosed:
        return close_code(connection)


def rss_kib(process):
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def subscribed_raw(server, source, **options):
    """A raw client subscribed to ``source``, its first frames read."""
    client = RawClient(server.port, **options)
    client.send_json({"op": "subscribe", "id": "r", "source": source, "params": {}})
    frames, _ = client.messages(quiet=0.5)
    assert [frame["op"] for frame in frames] == ["subscribed", "status"], frames
    return client


def check_gaps_are_reported(frames, newest):
    """
    Data seqs rise by one, except where overflow errors just before a frame
    account for every seq skipped; the newest publication arrives last.
    """
    last, told = 0, []
    for frame in frames:
        if frame["op"] == "error":
            assert frame["code"] == "overflow", frame
            told.append(frame)
        elif frame["op"] == "data":
            if frame["seq"] != last + 1:
                assert told, f"seqs {last} to {frame['seq']} without an overflow error"
                assert told[0]["last_seq"] == last
                assert sum(t["dropped"] for t in told) == frame["seq"] - last - 1
            last, told = frame["seq"], []
    assert last == newest


# --- frames ---------------------------------------------------------------------


def test_daphne_closes_a_frame_over_64_kib_with_1009_from_its_header(server):
    """64 KiB is answered; a header that announces more closes at once with 1009."""
    client = RawClient(server.port)
    head, tail = b'{"op":"ping","pad":"', b'"}'
    client.send_frame(TEXT, head + b"x" * (64 * 1024 - len(head) - len(tail)) + tail)
    assert client.messages(quiet=2) == ([{"op": "pong"}], None)

    # Only the header: daphne must not wait for (or buffer) a gigabyte.
    client.send_frame(TEXT, b"", announced=2**30)

    assert client.messages(quiet=5)[1] == 1009
    client.close()


def test_broken_websocket_frames_close_with_their_code(server):
    """
    Binary frames are answered (bad_frame); text that is not UTF-8 closes
    with 1007 and an unmasked frame with 1002, not by dropping the TCP
    connection.
    """
    client = RawClient(server.port)
    client.send_frame(BINARY, b"\x00\xff binary")
    frames, code = client.messages(quiet=1)
    assert code is None and frames[0]["code"] == "bad_frame"

    client.send_frame(TEXT, b'{"op":"ping","x":"\xff\xfe"}')
    assert client.messages(quiet=5)[1] == 1007

    unmasked = RawClient(server.port)
    unmasked.send_frame(TEXT, b'{"op":"ping"}', masked=False)
    assert unmasked.messages(quiet=5)[1] == 1002
    for each in (client, unmasked):
        each.close()


def test_a_flood_gets_rate_limited_errors_then_4050(server):
    """1000 pings at once: 200 answered, rate_limited errors, then 4050."""
    client = RawClient(server.port)
    for _ in range(1000):
        client.send_json({"op": "ping"})

    frames, code = client.messages(quiet=5)

    assert code == 4050
    codes = [frame.get("code") for frame in frames]
    assert codes.count("rate_limited") >= 1 and frames[-1]["code"] == "rate_limited"
    assert 200 <= codes.count(None) < 300
    assert server.log().count("client error rate_limited") == 1
    assert server.log().count("rate limited for too long") == 1
    client.close()


# --- slow readers ---------------------------------------------------------------


async def test_a_reader_that_stops_reading_gets_the_newest_and_every_gap_told(server):
    """
    A client stops reading while 2000 publications of 20 KB (40 MB) come:
    daphne's memory stays within the outbox, the client gets overflow errors
    that account for every skipped seq, then the newest, and stays connected.
    """
    client = await asyncio.to_thread(
        subscribed_raw, server, "ticker", receive_buffer=4096
    )
    topic = Topic.of("ticker", {})
    before = rss_kib(server)

    for _ in range(2000):
        await apublish(topic, "x" * 20_000)
    await asyncio.sleep(1)
    grown = rss_kib(server) - before
    frames, code = await asyncio.to_thread(client.messages, 2.0)

    assert code is None
    assert grown < 15 * 1024, f"daphne grew by {grown} KiB"
    assert any(frame.get("code") == "overflow" for frame in frames)
    check_gaps_are_reported(frames, newest=2000)
    client.send_json({"op": "ping"})
    assert (await asyncio.to_thread(client.messages, 1.0))[0] == [{"op": "pong"}]
    client.close()


async def test_a_publication_larger_than_the_frame_limit_reaches_the_client(server):
    """The 64 KiB limit is on what clients send, not on what they receive."""
    client = await Client.open(server)
    await client.subscribe("big", "ticker", {})
    await apublish(Topic.of("ticker", {}), "y" * 200_000)
    frame = await client.receive_op("data", id="big")
    assert frame["data"] == "y" * 200_000
    await client.close()


async def test_a_reader_that_stops_reading_a_close_source_is_closed_with_4051(server):
    """A source whose overflow policy is "close" ends the slow reader's connection."""
    client = await asyncio.to_thread(
        subscribed_raw, server, "ledger", receive_buffer=4096
    )
    topic = Topic.of("ledger", {})

    for _ in range(1000):
        await apublish(topic, "x" * 20_000)
    await asyncio.sleep(1)
    frames, code = await asyncio.to_thread(client.messages, 5.0)

    assert code == 4051
    seqs = [frame["seq"] for frame in frames if frame["op"] == "data"]
    assert seqs == list(range(1, len(seqs) + 1)), "no gap before the close"
    assert server.log().count("reads too slowly") == 1
    client.close()


# --- connections per process ------------------------------------------------------


async def test_connections_beyond_the_maximum_are_refused_with_4052(server):
    """The fifth connection of a process that holds four is closed with 4052."""
    held = [await Client.open(server) for _ in range(MAX_CONNECTIONS)]

    refused = [await Client.open(server) for _ in range(3)]
    codes = [await closed_with(client.connection) for client in refused]
    await held[0].close()
    await asyncio.sleep(0.2)
    again = await Client.open(server)
    await again.send({"op": "ping"})

    assert codes == [4052] * 3
    assert await again.receive() == {"op": "pong"}
    assert server.log().count("the maximum: refusing more") == 1
    for client in [*held[1:], again]:
        await client.close()


# --- access -------------------------------------------------------------------------


async def test_a_foreign_origin_is_refused_with_4003_and_logged(server):
    """A page of another site cannot open a websocket with its visitor's cookies."""
    for _ in range(3):
        connection = await websockets.connect(
            server.ws_url, origin="http://evil.example", open_timeout=10
        )
        assert await closed_with(connection) == 4003

    assert (
        server.log().count(
            "refused a websocket from Origin 'http://evil.example': "
            "not in ALLOWED_HOSTS"
        )
        == 1
    )


def make_users():
    User = get_user_model()
    plain = User.objects.create_user("plain")
    staff = User.objects.create_user("staff")
    staff.user_permissions.add(Permission.objects.get(codename="view_accesstoken"))
    return plain, staff


def session_cookie(user):
    browser = Browser()
    browser.force_login(user)
    return f"sessionid={browser.cookies['sessionid'].value}"


async def first_reply(client, source):
    """The subscribed or error frame that answers a subscribe to ``source``."""
    await client.send({"op": "subscribe", "id": source, "source": source, "params": {}})
    while True:
        frame = await client.receive()
        if frame["op"] in ("subscribed", "error") and frame["id"] == source:
            return frame


async def test_a_browser_session_signs_the_websocket_in(server):
    """The session cookie of a signed-in browser is the connection's user."""
    plain, _ = await sync_to_async(make_users)()
    cookie = await sync_to_async(session_cookie)(plain)

    signed_in = await Client.open(server, additional_headers={"Cookie": cookie})
    anonymous = await Client.open(server)

    assert (await first_reply(signed_in, "members"))["op"] == "subscribed"
    assert (await first_reply(signed_in, "staff"))["code"] == "forbidden"
    assert (await first_reply(anonymous, "members"))["code"] == "forbidden"
    for client in (signed_in, anonymous):
        await client.close()


def test_plain_daphne_serves_vanilla_too(processes):
    """
    Vanilla's daphne only saves memory: stock daphne serves the same, socket
    probe included (it is what refuses a large frame from its header).
    """
    server = processes.daphne(
        extra_env={"DJANGO_SETTINGS_MODULE": "tests.guarded_settings"},
        server="daphne",
    )

    client = subscribed_raw(server, "ticker")
    client.send_frame(TEXT, b"", announced=2**30)
    assert client.messages(quiet=5)[1] == 1009
    client.close()
    assert "Traceback" not in server.log() and " ERROR " not in server.log()


def test_a_client_that_leaves_while_being_signed_in_leaves_no_error(processes):
    """
    The connection is gone, socket and all, by the time its consumer starts:
    each client here leaves while its session (a slow one) is read.
    """
    server = processes.daphne(
        extra_env={
            "DJANGO_SETTINGS_MODULE": "tests.guarded_settings",
            "VANILLA_TEST_SLOW_SESSIONS": "1",
        }
    )
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as leaving:
            leaving.sendall(handshake(server.port, "Cookie: sessionid=" + "a" * 32))
            time.sleep(0.1)
    time.sleep(3 * slow_sessions.DELAY + 0.5)

    client = subscribed_raw(server, "ticker")
    client.close()
    assert "Traceback" not in server.log() and " ERROR " not in server.log()


async def test_a_token_signs_in_and_revoking_it_closes_the_connection(server):
    """
    A token offered as a subprotocol signs the connection in; the server
    selects "vanilla", never the token; revoking it closes with 4003, and
    the revoked token cannot connect again.
    """
    _, staff = await sync_to_async(make_users)()
    token, secret = await sync_to_async(AccessToken.objects.issue)(staff, "robot")
    protocols = ["vanilla", TOKEN_SUBPROTOCOL + secret]

    client = await Client.open(server, subprotocols=protocols)
    assert client.connection.subprotocol == "vanilla"
    assert (await first_reply(client, "staff"))["op"] == "subscribed"
    began = time.monotonic()
    await sync_to_async(AccessToken.objects.filter(pk=token.pk).revoke)()

    assert await closed_with(client.connection) == 4003
    assert time.monotonic() - began < 3
    again = await Client.open(server, subprotocols=protocols)
    assert await closed_with(again.connection) == 4003
    assert "access token #%d is no longer valid" % token.pk in server.log()
    assert secret not in server.log()


async def test_an_unknown_token_is_refused_with_4003(server):
    """A made-up token does not fall back to an anonymous connection."""
    client = await Client.open(
        server, subprotocols=["vanilla", TOKEN_SUBPROTOCOL + "vt_guess"]
    )

    assert await closed_with(client.connection) == 4003
    assert (
        "refused a websocket with access token 'vt_guess'…: unknown token"
        in server.log()
    )
