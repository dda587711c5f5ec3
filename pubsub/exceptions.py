"""Failures Pub-Sub reports to clients and to the code that calls it."""
from .protocol import ErrorCode


class ProtocolError(Exception):
    """A client frame breaks the protocol; answered with an error frame."""

    code = ErrorCode.BAD_FRAME

    def __init__(self, message, *, code=None, id=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.id = id


class SourceDoesNotExist(KeyError):
    """No data source is registered under the name."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name

    def __str__(self):
        return f"no data source is named {self.name!r}"


class PublicationTooLarge(ValueError):
    """A publication, encoded, is over ``MAX_PUBLICATION_BYTES``."""


class InvalidParams(ValueError):
    """A subscription's params do not validate against its source's schema."""


class SubscriptionForbidden(PermissionError):
    """The connection's user may not subscribe to the source."""
