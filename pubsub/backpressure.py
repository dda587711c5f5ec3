"""
What a connection can see and tune of the socket daphne serves it on.

daphne's ASGI ``send`` never waits: whatever a consumer sends is buffered by
Twisted, without limit, however slowly the client reads. Twisted does report a
full write buffer to a registered streaming producer, though. ``watch()``
registers such a producer, so that a consumer keeps publications in its own
bounded outbox while the socket is full, where its source's overflow policy
applies.

Two things stand between a consumer and daphne's websocket protocol:

- Middlewares may wrap ``send`` (channels' session middleware does), so only
  the outermost application surely sees daphne's own ``send``, a ``functools.partial``
  over the protocol. ``SocketMiddleware`` notes the protocol in the scope
  under ``SCOPE_KEY``; it must be the outermost websocket application.
  ``pubsub.server`` notes it as it makes the scope.
- daphne upgrades an HTTP connection to a websocket without unregistering
  Twisted's ``HTTPChannel``, the transport's producer until then, which would
  stop reading from a client that reads slowly (so its pongs go unread). The
  stale channel is replaced; any other producer is left alone.

Under another server (or Channels' test communicator) nothing is found and the
outbox drains at once.
"""
import functools
import logging

from asgiref.sync import markcoroutinefunction
from twisted.internet import tcp
from twisted.web.http import HTTPChannel

logger = logging.getLogger(__name__)

SCOPE_KEY = "vanilla.socket"


class SocketMiddleware:
    """Outermost ASGI middleware: puts daphne's websocket protocol in the scope."""

    def __init__(self, inner):
        self.inner = inner

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        # Returns the inner coroutine, holding no frame of its own for the
        # connection's life (see pubsub.auth.SignInMiddleware).
        # pubsub.server puts the protocol there itself, sparing a copy.
        if SCOPE_KEY not in scope:
            protocol = _protocol_of(send)
            if protocol is not None:
                scope = dict(scope, **{SCOPE_KEY: protocol})
        return self.inner(scope, receive, send)


def _protocol_of(send):
    if not isinstance(send, functools.partial) or not send.args:
        return None
    protocol = send.args[0]
    if getattr(protocol, "transport", None) is None:
        return None
    return protocol


class SocketPressure:
    """A Twisted push producer that mirrors pause/resume into a flag."""

    def __init__(self, on_resume):
        self.paused = False
        self._on_resume = on_resume

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._on_resume()

    def stopProducing(self):
        self.paused = False


def watch(scope, on_resume):
    """
    Return a SocketPressure for the socket of ``scope``, or None when the
    server gives no way to see it.
    """
    protocol = scope.get(SCOPE_KEY)
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "registerProducer"):
        return None
    if isinstance(getattr(transport, "producer", None), HTTPChannel):
        transport.unregisterProducer()
    pressure = SocketPressure(on_resume)
    try:
        transport.registerProducer(pressure, True)
    except Exception:
        # A producer that is not daphne's stale HTTP channel: do without.
        logger.warning("cannot watch the socket of %r", protocol, exc_info=True)
        return None
    return pressure


def limit_message_size(scope, limit):
    """
    Make daphne refuse frames over ``limit`` bytes as soon as their header
    announces them, instead of after buffering up to its own limit (1 MiB by
    default). True if the server could be told.

    autobahn applies its message limit to what is sent as well, so that limit
    stays daphne's: publications may be larger than what clients may send. A
    message fragmented into small frames is buffered up to daphne's limit,
    then refused by the consumer (1009 too).

    autobahn, daphne's websocket library, drops the TCP connection on such a
    violation by default, which a client sees as 1006, not knowing why; it
    is told to close with the code instead (1009 here, 1007 for text that is
    not UTF-8, 1002 for broken framing), after which it waits at most its
    close handshake timeout for the client.
    """
    protocol = scope.get(SCOPE_KEY)
    if protocol is None or not hasattr(protocol, "maxFramePayloadSize"):
        return False
    protocol.maxFramePayloadSize = limit
    protocol.failByDrop = False
    return True


def socket_open(scope):
    """False once daphne's websocket is closing or closed; True if unseen."""
    protocol = scope.get(SCOPE_KEY)
    state = getattr(protocol, "state", None)
    return state is None or state == getattr(protocol, "STATE_OPEN", state)


def linger_on_close(scope, seconds):
    """
    Give the client ``seconds`` to read up to the close frame of a close the
    server starts. autobahn waits 1 s for the close handshake, then aborts
    the TCP connection; a client still reading what was sent before the close
    then loses it and the close code alike, and sees 1006.
    """
    protocol = scope.get(SCOPE_KEY)
    if protocol is not None and hasattr(protocol, "closeHandshakeTimeout"):
        protocol.closeHandshakeTimeout = seconds


class DirectWriter:
    """
    Sends text frames of daphne's websocket straight to its socket.

    A frame sent through ASGI passes daphne, autobahn's framing and Twisted's
    write buffer, which waits for the reactor's next turn: about 50 µs a
    frame on our machines, against some 15 µs for building the frame and
    sending it at once. A publication goes to every subscriber, so this is
    where a server's time goes. The direct path is taken only while it cannot
    reorder or garble anything: the websocket is open, frames are not
    compressed, the transport is plain TCP (TLS needs Twisted), and Twisted
    holds nothing unsent for the socket. What the socket does not take goes
    to Twisted's buffer, and later frames take the usual path behind it.
    """

    def __init__(self, protocol):
        self.protocol = protocol
        self.transport = protocol.transport
        self.socket = protocol.transport.socket

    def write(self, text, shared=None):
        """
        Send ``text`` as one frame; False if the caller must send it.
        ``shared`` is a ``[text, bytes]`` list that writers of the same text
        share: the frame's bytes are kept there once built.
        """
        protocol, transport = self.protocol, self.transport
        if (
            protocol.state != protocol.STATE_OPEN
            or protocol._perMessageCompress is not None
            or transport.disconnecting
            or transport._tempDataBuffer
            or transport.offset < len(transport.dataBuffer)
        ):
            return False
        if shared is None:
            frame = text_frame(text)
        else:
            frame = shared[1]
            if frame is None:
                frame = shared[1] = text_frame(text)
        try:
            sent = self.socket.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Nothing went out; Twisted will meet the same error and close.
            return False
        if sent < len(frame):
            transport.write(frame[sent:])
        return True


def text_frame(text):
    """``text`` as a final, unmasked text frame (RFC 6455, section 5.2)."""
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


def direct_writer(scope):
    """A DirectWriter for the socket of ``scope``, or None where there is none."""
    protocol = scope.get(SCOPE_KEY)
    transport = getattr(protocol, "transport", None)
    if not isinstance(transport, tcp.Server) or not hasattr(
        protocol, "_perMessageCompress"
    ):
        return None
    if getattr(transport, "socket", None) is None:
        # The client left before its consumer started: Twisted has let go of
        # the socket, and the disconnect is on its way.
        return None
    return DirectWriter(protocol)
