"""
What operators configure (``Topology``) and what runners report back
(``TopologyStatus``).

A topology feeds one stream source from Kafka topics. Admins edit it and flip
its ``desired_state``; every ``run_topologies`` process notices within about a
second (see ``datasources.topology``) and writes one ``TopologyStatus`` row per
topology it runs, about once a second.
"""
import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from pubsub.exceptions import SourceDoesNotExist

from .registry import registry

#: What Kafka accepts as a topic name.
KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
#: Status rows older than this (seconds) belong to runners that are gone.
HEARTBEAT_TIMEOUT = 10
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024


def validate_kafka_topic(name):
    if not KAFKA_TOPIC.match(name) or name in (".", ".."):
        raise ValidationError(
            "%(name)r is not a Kafka topic name: use 1 to 249 letters, digits, "
            "dots, underscores or hyphens.",
            code="invalid_topic",
            params={"name": name},
        )


def split_topics(value):
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [name.strip() for name in value.split(",") if name.strip()]


def validate_kafka_topics(value):
    names = split_topics(value)
    if not names:
        raise ValidationError("Name at least one Kafka topic.", code="no_topics")
    for name in names:
        validate_kafka_topic(name)
    if len(set(names)) != len(names):
        raise ValidationError("A topic is listed twice.", code="duplicate_topic")


def stream_source_choices():
    """Registered stream sources, read when a form is built."""
    return [(source.name, source.name) for source in registry if _is_stream(source)]


def _is_stream(source):
    return getattr(source, "driver", None) == "topology"


class Topology(models.Model):
    """Kafka topics feeding one stream source, run by ``run_topologies``."""

    class StartFrom(models.TextChoices):
        LATEST = "latest", "latest (new records only)"
        EARLIEST = "earliest", "earliest (every retained record)"
        COMMITTED = "committed", "committed (resume only, never guess)"

    class Mode(models.TextChoices):
        ON_DEMAND = "on_demand", "on demand (while a topic is watched)"
        ALWAYS_ON = "always_on", "always on"

    class DesiredState(models.TextChoices):
        RUNNING = "running", "running"
        STOPPED = "stopped", "stopped"

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    topics = models.CharField(
        max_length=1000,
        validators=[validate_kafka_topics],
        help_text="Kafka topics to consume, separated by commas.",
    )
    group_id = models.CharField(
        "consumer group",
        max_length=255,
        blank=True,
        help_text="Kafka consumer group; vanilla-<name> when left empty.",
    )
    source = models.CharField(
        "data source",
        max_length=40,
        choices=stream_source_choices,
        help_text=(
            "The stream source fed; its route() maps each record to topics "
            "unless params from the record are set below."
        ),
    )
    start_from = models.CharField(
        max_length=10,
        choices=StartFrom.choices,
        default=StartFrom.LATEST,
        help_text=(
            "Where a partition starts when the group has no committed offset for "
            "it. With one, the group always resumes from it. 'committed' reports "
            "an error instead of guessing."
        ),
    )
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ON_DEMAND)
    params_map = models.JSONField(
        "params from the record",
        default=dict,
        blank=True,
        help_text=(
            'Each param of the source, as a field of the record\'s JSON value, '
            'e.g. {"airport": "origin"} or {"airport": "flight.origin"}; "@key" is '
            "the record's key. Empty: the source's route() maps each record."
        ),
    )
    payload_fields = models.JSONField(
        "payload fields",
        default=list,
        blank=True,
        help_text=(
            'With params from the record: the fields to publish, e.g. ["flight", '
            '"dest"]. Empty publishes the whole value.'
        ),
    )
    dead_letter_topic = models.CharField(
        max_length=249,
        blank=True,
        validators=[validate_kafka_topic],
        help_text="Where records that cannot be published go; empty to drop them.",
    )
    max_record_bytes = models.PositiveIntegerField(
        default=DEFAULT_MAX_RECORD_BYTES,
        help_text="Larger records are treated as poison.",
    )
    desired_state = models.CharField(
        max_length=10, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "topologies"

    def __str__(self):
        return self.name

    def clean(self):
        self.topics = ",".join(split_topics(self.topics))
        if not self.group_id and self.name:
            self.group_id = self.default_group_id()
        if self.source:
            self._clean_source()
        self._clean_mapping()

    def _clean_mapping(self):
        params, fields = self.params_map, self.payload_fields
        if not isinstance(params, dict) or not all(
            isinstance(name, str) and isinstance(path, str) and path
            for name, path in params.items()
        ):
            raise ValidationError(
                {"params_map": "An object of param names to field names."}
            )
        if not isinstance(fields, list) or not all(
            isinstance(name, str) and name for name in fields
        ):
            raise ValidationError({"payload_fields": "A list of field names."})
        if fields and not params:
            raise ValidationError(
                {"payload_fields": "Payload fields need params from the record."}
            )

    def _clean_source(self):
        try:
            source = registry.get(self.source)
        except SourceDoesNotExist:
            raise ValidationError(
                {"source": f"No data source is named {self.source!r}."}
            ) from None
        if not _is_stream(source):
            raise ValidationError(
                {"source": f"{self.source!r} is not a stream source."}
            )

    def save(self, *args, **kwargs):
        if not self.group_id:
            self.group_id = self.default_group_id()
        super().save(*args, **kwargs)

    def default_group_id(self):
        return f"vanilla-{self.name}"

    @property
    def topic_names(self):
        return split_topics(self.topics)

    @property
    def is_running(self):
        return self.desired_state == self.DesiredState.RUNNING


class TopologyStatus(models.Model):
    """
    What one runner process reports about one topology. Rows whose heartbeat
    is older than ``HEARTBEAT_TIMEOUT`` seconds belong to runners that died.
    """

    class State(models.TextChoices):
        STARTING = "starting", "starting"
        RUNNING = "running", "running"
        # On demand and none of the source's topics is watched.
        IDLE = "idle", "idle"
        ERROR = "error", "error"
        STOPPED = "stopped", "stopped"

    topology = models.ForeignKey(
        Topology, on_delete=models.CASCADE, related_name="statuses"
    )
    runner_id = models.CharField(max_length=200, help_text="host:pid of the runner.")
    state = models.CharField(max_length=10, choices=State.choices)
    partitions = models.JSONField(
        default=dict,
        blank=True,
        help_text='"topic/partition" -> {"committed", "high", "lag"}.',
    )
    records_per_second = models.FloatField(default=0.0)
    records = models.PositiveBigIntegerField(default=0, help_text="Records published.")
    last_record_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    error_count = models.PositiveIntegerField(default=0)
    poison_count = models.PositiveIntegerField(default=0)
    started = models.DateTimeField(default=timezone.now)
    heartbeat = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["topology", "runner_id"]
        verbose_name_plural = "topology statuses"
        constraints = [
            models.UniqueConstraint(
                fields=["topology", "runner_id"], name="one_status_per_runner"
            )
        ]

    def __str__(self):
        return f"{self.topology} on {self.runner_id}"

    @property
    def is_alive(self):
        age = (timezone.now() - self.heartbeat).total_seconds()
        return age <= HEARTBEAT_TIMEOUT

    @property
    def lag(self):
        return sum(part.get("lag") or 0 for part in self.partitions.values())
