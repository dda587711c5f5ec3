"""
From one Kafka record to the publications of a stream source, or to the
dead-letter topic.

A record is poison when its value is missing, larger than the topology's
``max_record_bytes``, not UTF-8, not JSON, refused by the source's ``route()``
or routed to params the source refuses. ``publications()`` raises
``PoisonRecord`` for those, with a short ``reason`` that the dead letter
carries in its ``vanilla.reason`` header.
"""
import json
import logging

from confluent_kafka import Producer

from pubsub.exceptions import InvalidParams
from pubsub.topics import Topic

logger = logging.getLogger(__name__)


class PoisonRecord(Exception):
    """A record that can never be published; ``reason`` is a short code."""

    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RecordMapping:
    """
    A topology's own mapping of a record to one publication, used instead of
    the source's ``route()``: each param is a field of the record's value (a
    dotted path into nested objects) or its key (``@key``); the payload is the
    value, or only the listed fields of it.
    """

    KEY = "@key"

    def __init__(self, params, fields=()):
        self.params = dict(params)
        self.fields = tuple(fields)

    def route(self, value, key):
        if not isinstance(value, dict):
            raise ValueError("the record's value is not a JSON object")
        params = {
            name: key if path == self.KEY else _field(value, path)
            for name, path in self.params.items()
        }
        payload = value
        if self.fields:
            payload = {name: value.get(name) for name in self.fields}
        return [(params, payload)]


def _field(value, path):
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"the record has no field {path!r}")
        value = value[part]
    return value


def publications(source, message, max_bytes, mapping=None):
    """
    ``[(Topic, payload)]`` for one record, or PoisonRecord. ``mapping`` (a
    RecordMapping), when given, routes the record instead of the source.
    """
    value, key = decode(message, max_bytes)
    try:
        routes = (mapping or source).route(value, key)
    except ValueError as exc:
        raise PoisonRecord("unroutable", str(exc)) from None
    except Exception as exc:
        # A bug in route() more likely than bad data, but either way this
        # record cannot be published: say so loudly, and keep going.
        logger.error(
            "source %s: route() failed on %s",
            source.name,
            where(message),
            exc_info=True,
        )
        raise PoisonRecord("unroutable", f"{type(exc).__name__}: {exc}") from None
    try:
        return [
            (Topic.of(source.name, source.clean_params(params)), payload)
            for params, payload in routes
        ]
    except InvalidParams as exc:
        raise PoisonRecord("invalid_params", str(exc)) from None


def decode(message, max_bytes):
    """The record's value as JSON and its key as text, or PoisonRecord."""
    raw = message.value()
    if raw is None:
        raise PoisonRecord("not_json", "the record has no value")
    if len(raw) > max_bytes:
        raise PoisonRecord("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        text = raw.decode("utf-8")
        key = message.key().decode("utf-8") if message.key() is not None else None
    except UnicodeDecodeError as exc:
        raise PoisonRecord("not_utf8", str(exc)) from None
    try:
        return json.loads(text), key
    except ValueError as exc:
        raise PoisonRecord("not_json", str(exc)) from None


def coordinates(message):
    """Where a record is in Kafka, as a publication carries it."""
    return {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
    }


def where(message):
    return f"{message.topic()} [{message.partition()}] at offset {message.offset()}"


class DeadLetters:
    """
    Poison records of one topology, copied to its dead-letter topic with
    headers saying why. Offsets past a poison record are committed only once
    ``delivered()`` says its dead letter is in Kafka.
    """

    def __init__(self, topic, topology, bootstrap_servers, kafka_logger=None):
        self.topic = topic
        self.topology = topology
        config = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": f"vanilla-{topology}-dead-letters",
            "linger.ms": 5,
        }
        if kafka_logger is not None:
            config["logger"] = kafka_logger
        self.producer = Producer(config)

    def send(self, message, poison):
        headers = list(message.headers() or []) + [
            ("vanilla.reason", poison.reason),
            ("vanilla.error", poison.detail[:1000]),
            ("vanilla.topology", self.topology),
            ("vanilla.topic", message.topic()),
            ("vanilla.partition", str(message.partition())),
            ("vanilla.offset", str(message.offset())),
        ]
        self.producer.produce(
            self.topic,
            value=message.value(),
            key=message.key(),
            headers=headers,
            on_delivery=self._on_delivery,
        )
        self.producer.poll(0)

    def delivered(self, wait=0.0):
        """True once every dead letter sent is in Kafka (or failed for good)."""
        self.producer.poll(0)
        if wait and len(self.producer):
            self.producer.flush(wait)
        return not len(self.producer)

    def close(self, timeout=1.0):
        left = self.producer.flush(timeout)
        if left:
            logger.warning(
                "topology %s: %d dead letters to %s were not delivered",
                self.topology,
                left,
                self.topic,
            )

    def _on_delivery(self, error, message):
        if error is not None:
            logger.error(
                "topology %s: a dead letter to %s failed: %s",
                self.topology,
                self.topic,
                error,
            )
