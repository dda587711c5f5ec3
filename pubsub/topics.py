"""
Topics: one per (data source, canonical params).

A topic's ``key`` is a valid Channels group name whatever the params: at most
100 characters of ``[A-Za-z0-9_.-]``. It keeps a readable slug of the params
for logs and a digest of their canonical JSON for uniqueness.
"""
import hashlib
import json
import re
from dataclasses import dataclass, field

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
SLUG_LENGTH = 32
DIGEST_BYTES = 10


def canonical_json(params):
    """The one JSON spelling of ``params``: sorted keys, no spaces."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _slug(text, length):
    return _UNSAFE.sub("_", text).strip("_")[:length]


@dataclass(frozen=True)
class Topic:
    source: str
    params: dict = field(hash=False, compare=False)
    key: str

    @classmethod
    def of(cls, source, params):
        canonical = canonical_json(params)
        digest = hashlib.blake2b(canonical.encode(), digest_size=DIGEST_BYTES)
        slug = _slug("_".join(str(v) for v in _leaves(params)), SLUG_LENGTH)
        parts = [_slug(source, 40), slug, digest.hexdigest()]
        return cls(source, params, ".".join(part for part in parts if part))


def _leaves(value):
    """The scalar values in ``value``, in canonical order, for the slug."""
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _leaves(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value
