"""
The Redis connection a server process's hub receives publications on.

redis-py's PubSub reads each message through asyncio streams and several
layers of calls, and wakes a task for it: on this project's two-core machines
about 0.2 ms of CPU per publication, paid once per process however few
clients watch. The listener is an asyncio protocol instead: hiredis (the
parser redis-py itself uses when installed) parses the bytes as they arrive
and each message goes to the hub from the same callback.

It speaks just what a subscriber needs: AUTH, SUBSCRIBE, UNSUBSCRIBE and
PING, over TCP, TLS (``rediss://``) or a Unix socket, from the same
``REDIS_URL`` as every other client.
"""
import asyncio
import logging
import socket
import ssl

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

logger = logging.getLogger(__name__)

#: Seconds without a byte from Redis before the listener pings it; after
#: twice as long, the connection counts as dead and is dropped.
HEALTH_INTERVAL = 15.0
CONNECT_TIMEOUT = 10.0


def command(*args):
    """One command in RESP, Redis's wire format."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Listener(asyncio.Protocol):
    """
    One subscriber connection. ``on_message(channel, data)`` gets every
    publication, ``on_subscribed(channel)`` every confirmed subscription and
    ``on_lost(listener, exc)`` the end of the connection, once.
    """

    def __init__(self, on_message, on_subscribed, on_lost):
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.transport = None
        self.ready = asyncio.get_running_loop().create_future()
        self.last_heard = 0.0
        self.health = None

    # --- opening ----------------------------------------------------------------

    @classmethod
    async def open(cls, url, on_message, on_subscribed, on_lost):
        """Connect to the Redis of ``url``, authenticate, and return when ready."""
        options = parse_url(url)
        loop = asyncio.get_running_loop()

        def protocol():
            return cls(on_message, on_subscribed, on_lost)

        if "path" in options:
            connecting = loop.create_unix_connection(protocol, options["path"])
        else:
            connecting = loop.create_connection(
                protocol,
                options.get("host", "localhost"),
                options.get("port", 6379),
                ssl=tls_context(options),
            )
        _, listener = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
        listener.greet(options.get("username"), options.get("password"))
        try:
            await asyncio.wait_for(asyncio.shield(listener.ready), CONNECT_TIMEOUT)
        except BaseException:
            listener.close()
            raise
        return listener

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        loop = asyncio.get_running_loop()
        self.last_heard = loop.time()
        self.health = loop.call_later(HEALTH_INTERVAL, self.check_health)

    def greet(self, username, password):
        """AUTH when the URL has a password, then a PING that marks it ready."""
        if password is not None:
            args = ("AUTH", username, password) if username else ("AUTH", password)
            self.transport.write(command(*args))
        self.transport.write(command("PING"))

    # --- commands ---------------------------------------------------------------

    def subscribe(self, *channels):
        self.transport.write(command("SUBSCRIBE", *channels))

    def unsubscribe(self, *channels):
        self.transport.write(command("UNSUBSCRIBE", *channels))

    def close(self):
        if self.transport is not None:
            self.transport.close()

    # --- replies ----------------------------------------------------------------

    def data_received(self, data):
        self.last_heard = asyncio.get_running_loop().time()
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError:
                logger.error("unreadable reply from Redis; reconnecting")
                self.transport.abort()
                return
            if reply is False:
                return
            self.handle(reply)

    def handle(self, reply):
        if isinstance(reply, list) and len(reply) == 3:
            kind, channel, data = reply
            if kind == "message":
                self.on_message(channel, data)
            elif kind == "subscribe":
                self.on_subscribed(channel)
        elif isinstance(reply, hiredis.ReplyError):
            self.refused(reply)
        elif not self.ready.done() and reply == "PONG":
            self.ready.set_result(None)

    def refused(self, error):
        """An error reply: wrong credentials, or a command Redis refused."""
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"Redis refused: {error}"))
        else:
            logger.error("Redis refused a subscriber command: %s", error)
        self.transport.abort()

    # --- health -----------------------------------------------------------------

    def check_health(self):
        """PING a quiet connection; drop one that stays silent (a dead peer)."""
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self.last_heard
        if quiet >= 2 * HEALTH_INTERVAL:
            logger.warning("Redis said nothing for %.0f s; reconnecting", quiet)
            self.transport.abort()
            return
        if quiet >= HEALTH_INTERVAL:
            self.transport.write(command("PING"))
        self.health = loop.call_later(HEALTH_INTERVAL, self.check_health)

    def connection_lost(self, exc):
        if self.health is not None:
            self.health.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"Redis closed: {exc}"))
        self.on_lost(self, exc)


def tls_context(options):
    """The TLS context of a ``rediss://`` URL, or None for plain TCP."""
    if options.get("connection_class") is not SSLConnection:
        return None
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
