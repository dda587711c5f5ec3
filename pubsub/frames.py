"""
What a client's frames must be before the consumer reads them as protocol:
JSON objects of bounded size and nesting, with ids a log can show safely, at
a bounded rate. Everything here answers a bad frame with ``ProtocolError``
(``bad_frame``) and never with an exception the consumer did not expect.
"""
import json
import math
import re
import time

from .conf import option
from .exceptions import ProtocolError

#: Subscription ids: 1 to 128 characters, none of them a control character.
MAX_ID_LENGTH = 128
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Longer source names are refused without a lookup.
MAX_SOURCE_LENGTH = 100
#: How deeply lists and objects may nest in a frame (the frame is level 1).
MAX_DEPTH = 32


def parse(text):
    """A client's text frame as a dict, or ProtocolError saying why not."""
    try:
        frame = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ProtocolError("the frame is nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(f"the frame is not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError(
            f"a frame must be a JSON object, got {type(frame).__name__}"
        )
    if _depth(frame) > MAX_DEPTH:
        raise ProtocolError(f"the frame is nested deeper than {MAX_DEPTH} levels")
    try:
        # Strings are echoed back and written to Redis as UTF-8.
        json.dumps(frame, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ProtocolError(
            "the frame has an unpaired surrogate (\\ud800-\\udfff)"
        ) from None
    return frame


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def _depth(value):
    """How deeply lists and objects nest in ``value`` (stops past MAX_DEPTH)."""
    deepest = 0
    stack = [(value, 1)]
    while stack and deepest <= MAX_DEPTH:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((item, depth + 1) for item in value)
    return deepest


def frame_size(text, data):
    """
    A frame's size in bytes, as far as comparing it with
    ``VANILLA["MAX_FRAME_BYTES"]`` needs: text short enough to be under the
    limit in any encoding is not encoded to find out.
    """
    if data is not None:
        return len(data)
    if len(text) * 4 <= option("MAX_FRAME_BYTES"):
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def usable_id(value):
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and not CONTROL_CHARACTERS.search(value)
    )


def shown(value):
    """``value`` for an error message or a log line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


class RateLimiter:
    """A token bucket: ``rate`` frames a second, bursts of ``burst``."""

    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def allow(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
