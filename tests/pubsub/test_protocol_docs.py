"""docs/protocol.md lists every error code, close code and limit there is."""
import re
from pathlib import Path

from pubsub.conf import DEFAULTS
from pubsub.protocol import CloseCode, ErrorCode

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
LIMITS = (
    "MAX_FRAME_BYTES",
    "MAX_PARAMS_BYTES",
    "MAX_PUBLICATION_BYTES",
    "MAX_SUBSCRIPTIONS",
    "MAX_CONNECTIONS",
    "RATE_LIMIT",
    "RATE_BURST",
    "OUTBOX_SIZE",
    "TOKEN_CHECK_INTERVAL",
    "HISTORY_SIZE",
)


def first_cells(heading):
    """The first cell of each row of the table under ``## heading``."""
    text = PROTOCOL_MD.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|", section, re.MULTILINE)
    return {first: second for first, second in rows[2:] if not set(first) <= {"-", " "}}


def test_every_error_code_is_documented():
    documented = first_cells("Error codes")

    assert set(documented) == {f"`{code.value}`" for code in ErrorCode}


def test_every_close_code_is_documented():
    documented = first_cells("Close codes")

    assert {int(code) for code in CloseCode} <= {int(code) for code in documented}


def test_every_limit_is_documented_with_its_default():
    documented = first_cells("Limits")

    for name in LIMITS:
        default = documented[f"`{name}`"]
        number = re.match(r"[\d.]+", default).group()
        assert float(number) == DEFAULTS[name], (name, default)
