"""
Who may open a websocket, and as whom.

The websocket stack (``vanilla_site/asgi.py``) is, from the outside in:

- ``OriginValidator``: a browser page from a foreign site may not open a
  websocket with its visitor's cookies (cross-site websocket hijacking). A
  foreign ``Origin`` is refused after the handshake with close code 4003, so
  that the client can tell why; each refused Origin is logged once. A
  handshake without ``Origin`` does not come from a browser and passes.
- ``SignInMiddleware``: programmatic clients present an access token
  (``pubsub.models.AccessToken``) as the subprotocol ``vanilla.token.SECRET``
  or, as a fallback, the query parameter ``token``; an unknown, revoked or
  expired one closes with 4003. Browsers sign in with their Django session
  cookie. Either sets ``scope["user"]``.
- ``TokenWatch`` then closes live connections whose token is revoked or
  expires, within ``VANILLA["TOKEN_CHECK_INTERVAL"]`` seconds.

Refusals happen after the handshake because a refused handshake reaches a
browser only as close code 1006, without a reason.
"""
import asyncio
import logging
import weakref
from collections import OrderedDict
from importlib import import_module
from itertools import chain
from urllib.parse import parse_qs, urlparse

from asgiref.sync import markcoroutinefunction
from channels.db import database_sync_to_async
from channels.security import websocket as channels_websocket
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.http import parse_cookie
from django.utils.crypto import constant_time_compare

from .conf import option
from .models import AccessToken
from .protocol import CloseCode

logger = logging.getLogger(__name__)

#: The subprotocol a client may offer; the server then selects it.
SUBPROTOCOL = "vanilla"
#: An offered subprotocol ``vanilla.token.SECRET`` carries an access token.
TOKEN_SUBPROTOCOL = "vanilla.token."
#: The scope key that holds the id of the access token a connection used.
GRANT_KEY = "vanilla.token"
#: The user of every connection signed in by neither token nor session: it
#: holds no state, so all of them share it.
ANONYMOUS = AnonymousUser()


class TokenRefused(Exception):
    """An access token is unknown, revoked or expired; ``reason`` says which."""

    def __init__(self, reason, token=None):
        super().__init__(reason)
        self.reason = reason
        self.token = token


class RefusalLog:
    """
    Logs a refusal once per key (an Origin, a token), not once per attempt,
    remembering at most ``size`` keys so that random keys cannot grow memory.
    """

    def __init__(self, size=1024):
        self.size = size
        self.seen = OrderedDict()

    def warning(self, key, message, *args):
        if key in self.seen:
            self.seen.move_to_end(key)
            logger.debug(message, *args)
            return
        self.seen[key] = True
        if len(self.seen) > self.size:
            self.seen.popitem(last=False)
        logger.warning(message, *args)

    def clear(self):
        self.seen.clear()


origin_refusals = RefusalLog()
token_refusals = RefusalLog()


def chosen_subprotocol(scope):
    """The subprotocol to accept with: ``vanilla`` if offered, never a token."""
    return SUBPROTOCOL if SUBPROTOCOL in (scope.get("subprotocols") or ()) else None


async def refuse(scope, receive, send, code):
    """Complete the handshake, then close with ``code``, and wait for the end."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    subprotocol = chosen_subprotocol(scope)
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    # A plain int: autobahn refuses an IntEnum (see SubscriptionConsumer.close).
    await send({"type": "websocket.close", "code": int(code)})
    while message["type"] != "websocket.disconnect":
        message = await receive()


# --- Origin -------------------------------------------------------------------


class OriginValidator(channels_websocket.OriginValidator):
    """channels' Origin check, with a reason in the log and close code 4003."""

    @classmethod
    def for_allowed_hosts(cls, application):
        """Allow the Origins of ``ALLOWED_HOSTS``, like channels' own factory."""
        allowed = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed:
            allowed = ["localhost", "127.0.0.1", "[::1]"]
        return cls(application, allowed)

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        # Returns a coroutine without a frame of its own (see SignInMiddleware).
        if scope["type"] != "websocket":
            raise ValueError("OriginValidator guards websockets only")
        origins = [
            value.decode("latin1")
            for name, value in scope.get("headers", [])
            if name == b"origin"
        ]
        reason = self.refusal(origins)
        if reason is None:
            return self.application(scope, receive, send)
        origin_refusals.warning(
            tuple(origins),
            "refused a websocket from Origin %r: %s",
            origins[0] if len(origins) == 1 else origins,
            reason,
        )
        return refuse(scope, receive, send, CloseCode.FORBIDDEN)

    def refusal(self, origins):
        """Why these Origin headers are refused, or None."""
        if not origins:
            return None
        if len(origins) > 1:
            return "several Origin headers"
        try:
            allowed = self.valid_origin(urlparse(origins[0]))
        except ValueError:
            return "not a valid URL"
        return None if allowed else "not in ALLOWED_HOSTS"


# --- access tokens --------------------------------------------------------------


def token_from_scope(scope):
    """The access token secret a client presented, or None."""
    for subprotocol in scope.get("subprotocols") or ():
        if subprotocol.startswith(TOKEN_SUBPROTOCOL):
            return subprotocol[len(TOKEN_SUBPROTOCOL) :]
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    values = query.get("token")
    return values[0] if values else None


def authenticate(secret):
    """The valid token whose secret this is; otherwise TokenRefused."""
    token = AccessToken.objects.for_secret(secret)
    if token is None:
        raise TokenRefused("unknown token")
    reason = token.refusal()
    if reason is not None:
        raise TokenRefused(reason, token)
    token.touch()
    return token


def session_key(scope):
    """The session key in the Cookie header of ``scope``, or None."""
    for name, value in scope.get("headers") or ():
        if name == b"cookie":
            cookies = parse_cookie(value.decode("latin1"))
            return cookies.get(settings.SESSION_COOKIE_NAME) or None
    return None


def session_user(key):
    """
    The user the session ``key`` is signed in as, or ANONYMOUS. Checks what
    Django's ``get_user`` checks, the password hash included, but writes
    nothing: where Django would cycle the key of a session signed with a
    fallback secret, or flush an invalid one, its response tells the browser.
    A websocket has no response, and the browser would be signed out.
    """
    session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return ANONYMOUS
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return ANONYMOUS
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return ANONYMOUS
    if hasattr(user, "get_session_auth_hash"):
        stored = session.get(HASH_SESSION_KEY)
        valid = chain(
            [user.get_session_auth_hash()], user.get_session_auth_fallback_hash()
        )
        if not stored or not any(constant_time_compare(stored, h) for h in valid):
            return ANONYMOUS
    return user


class SignInMiddleware:
    """
    Signs a connection in as ``scope["user"]``: as the user of the access
    token it presents, else of its Django session cookie, else anonymous. An
    invalid token is refused with 4003.

    One layer and one copy of the scope in place of channels' cookie, session
    and auth middlewares, which hold four copies, three coroutines and a
    session wrapper for the whole life of every connection: some 5 KB each
    (bench scenario 4). The session is read only when a cookie names one,
    and not at all when a token is presented; ``scope["session"]`` is not
    offered, as nothing on a websocket writes it.
    """

    def __init__(self, inner):
        self.inner = inner

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        # An anonymous connection needs nothing awaited here, so this returns
        # the inner application's coroutine instead of awaiting it. A
        # middleware's coroutine would otherwise stay suspended, frame and
        # all (some 300 bytes), for as long as the connection lives.
        secret = token_from_scope(scope)
        key = session_key(scope) if secret is None else None
        if secret is None and key is None:
            return self.inner(dict(scope, user=ANONYMOUS), receive, send)
        return self.sign_in(scope, receive, send, secret, key)

    async def sign_in(self, scope, receive, send, secret, key):
        if secret is not None:
            try:
                token = await database_sync_to_async(authenticate)(secret)
            except TokenRefused as refused:
                self.log_refusal(refused, secret)
                return await refuse(scope, receive, send, CloseCode.FORBIDDEN)
            scope = dict(scope, user=token.user, **{GRANT_KEY: token.pk})
        else:
            user = await database_sync_to_async(session_user)(key)
            scope = dict(scope, user=user)
        return await self.inner(scope, receive, send)

    def log_refusal(self, refused, secret):
        if refused.token is None:
            # Only the first characters: the rest may be someone's secret.
            key = secret[:10]
            name = f"{key!r}…"
        else:
            key = refused.token.pk
            name = f"#{refused.token.pk} {refused.token.name!r}"
        token_refusals.warning(
            (key, refused.reason),
            "refused a websocket with access token %s: %s",
            name,
            refused.reason,
        )


# --- revocation of live connections ---------------------------------------------


def valid_token_ids(ids):
    valid = AccessToken.objects.valid().filter(pk__in=ids)
    return set(valid.values_list("pk", flat=True))


class TokenWatch:
    """
    One per event loop: looks up the tokens of its live connections every few
    seconds, in one query, and closes (4003) the connections whose token was
    revoked, expired, or lost its user. Runs only while such connections exist.
    """

    def __init__(self):
        self.connections = {}
        self.task = None
        self.sleeping = False

    def add(self, token_id, connection):
        self.connections.setdefault(token_id, set()).add(connection)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name="vanilla-token-watch")

    def discard(self, token_id, connection):
        held = self.connections.get(token_id)
        if held is not None:
            held.discard(connection)
            if not held:
                del self.connections[token_id]
        # Stop between checks only: a check may be closing connections.
        if not self.connections and self.task is not None and self.sleeping:
            self.task.cancel()
            self.task = None

    async def run(self):
        while self.connections:
            self.sleeping = True
            try:
                await asyncio.sleep(option("TOKEN_CHECK_INTERVAL"))
            finally:
                self.sleeping = False
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("could not check access tokens; retrying", exc_info=True)

    async def check(self):
        ids = set(self.connections)
        if not ids:
            return
        valid = await database_sync_to_async(valid_token_ids)(ids)
        for token_id in ids - valid:
            connections = self.connections.pop(token_id, set())
            logger.info(
                "access token #%s is no longer valid: closing %d connections",
                token_id,
                len(connections),
            )
            for connection in connections:
                await self.close(connection, token_id)

    async def close(self, connection, token_id):
        try:
            await connection.revoke(f"access token #{token_id} is no longer valid")
        except Exception:
            logger.warning("could not close %r", connection, exc_info=True)


_watches = weakref.WeakKeyDictionary()


def token_watch():
    """The TokenWatch of the running event loop."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = TokenWatch()
    return watch
