"""
The websocket protocol between Vanilla and its clients, as constants.

Every frame is one JSON object with an ``op``. docs/protocol.md describes the
frames; this module is the table both the server and the JavaScript client
(``pubsub/static/pubsub/js/vanilla.js``) mirror.
"""
import enum


class ClientOp(enum.StrEnum):
    """Frames a client sends."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PING = "ping"


class ServerOp(enum.StrEnum):
    """Frames the server sends."""

    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    DATA = "data"
    STATUS = "status"
    PONG = "pong"
    ERROR = "error"


class ErrorCode(enum.StrEnum):
    """
    Stable values of an error frame's ``code``. None of them closes the
    connection by itself; clients may branch on them.
    """

    # The frame could not be read: not JSON, not an object, binary, no op.
    BAD_FRAME = "bad_frame"
    # The op is not one of ClientOp.
    UNKNOWN_OP = "unknown_op"
    # The subscription id is missing, not a string, empty or too long.
    INVALID_ID = "invalid_id"
    # A live subscription on this connection already uses the id.
    DUPLICATE_ID = "duplicate_id"
    # Unsubscribe named an id this connection does not hold.
    UNKNOWN_ID = "unknown_id"
    # No data source has that name.
    UNKNOWN_SOURCE = "unknown_source"
    # The params do not validate against the source's schema.
    INVALID_PARAMS = "invalid_params"
    # The connection holds the maximum number of subscriptions.
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    # The client sends faster than the connection's rate limit.
    RATE_LIMITED = "rate_limited"
    # The client may not subscribe to this source.
    FORBIDDEN = "forbidden"
    # The client read too slowly and publications were dropped for it.
    OVERFLOW = "overflow"
    # Something failed on the server; the frame may be retried.
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """
    Codes the server closes a websocket with.

    1000-2999 are the ones RFC 6455 defines. 4000-4099 are Vanilla's: 4000-4049
    mean "do not reconnect as you are" (fix something first), 4050-4099 mean
    "reconnect later, with backoff".
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    # Terminal: the Origin is not allowed, or the credentials are not valid.
    FORBIDDEN = 4003
    # Terminal: too many protocol violations. Reserved; not sent yet.
    PROTOCOL_VIOLATION = 4008
    # Retry: the client sent frames faster than allowed for too long.
    RATE_LIMITED = 4050
    # Retry: the client read too slowly and its outbox overflowed.
    SLOW_READER = 4051
    # Retry: this server process holds its maximum number of connections.
    SERVER_FULL = 4052


class SourceState(enum.StrEnum):
    """States of a data source that subscribers hear of in status frames."""

    # The source was started for this subscriber and has published nothing yet.
    STARTING = "starting"
    # Publications flow.
    LIVE = "live"
    # No publication for longer than the source's expected interval.
    STALE = "stale"
    # The source failed to start or to produce; it may recover by itself.
    ERROR = "error"
    # The source was stopped while subscribed (it is no longer produced).
    STOPPED = "stopped"
