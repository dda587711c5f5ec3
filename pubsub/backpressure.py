"""
Telling a connection when its socket cannot take more.

daphne's ASGI ``send`` never waits: whatever a consumer sends is buffered by
Twisted, without limit, however slowly the client reads. Twisted does report
a full write buffer to a registered streaming producer, though, and daphne's
websocket protocol is reachable from the ``send`` it hands to the
application. ``watch()`` registers such a producer, so that a consumer keeps
publications in its own bounded outbox while the socket is full, where its
source's overflow policy applies.
"""
import functools
import logging

logger = logging.getLogger(__name__)


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


def watch(send, on_resume):
    """
    Return a SocketPressure for the socket behind ``send``, or None when the
    server gives no way to see it (then the outbox drains at once).
    """
    if not isinstance(send, functools.partial) or not send.args:
        return None
    protocol = send.args[0]
    register = getattr(protocol, "registerProducer", None)
    if register is None or getattr(protocol, "transport", None) is None:
        return None
    pressure = SocketPressure(on_resume)
    try:
        register(pressure, True)
    except Exception:
        # A producer is registered already (not ours): do without.
        logger.debug("cannot watch the socket of %r", protocol, exc_info=True)
        return None
    return pressure
