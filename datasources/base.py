"""
What a data source is.

A ``DataSource`` is a named producer of publications with validated params.
Every distinct set of params is its own topic: ``weather`` for JFK and
``weather`` for LGA are two topics of one source. Pub-Sub starts a topic's
source when its first subscriber arrives anywhere in the cluster and stops it
after the last one has left (see ``pubsub.subscriptions``).

Subclass ``ScheduledSource`` for data that is fetched on a schedule (Celery
beat runs it) or ``StreamSource`` for data that Kafka topologies push.
"""
import abc
import logging
from typing import Any, ClassVar, Literal

import pydantic

from pubsub.exceptions import InvalidParams, SubscriptionForbidden
from pubsub.publishing import prepare, publish
from pubsub.topics import Topic

logger = logging.getLogger(__name__)


class NoParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class DataSource(abc.ABC):
    """
    The base of every data source. Subclasses set ``name`` and ``Params``, and
    say what drives them by subclassing ``ScheduledSource`` or
    ``StreamSource``.
    """

    #: The name clients subscribe to: lower-case letters, digits, underscores.
    name: ClassVar[str]
    #: A pydantic model of the params; unknown keys are refused.
    Params: ClassVar[type[pydantic.BaseModel]] = NoParams
    #: Who may subscribe: None for anyone, "authenticated", or a permission
    #: such as "datasources.view_topology".
    permission: ClassVar[str | None] = None
    #: Publications kept per topic for resume (None: the site default).
    history_size: ClassVar[int | None] = None
    #: Seconds without a publication after which subscribers hear "stale".
    stale_after: ClassVar[float | None] = None
    #: What happens when a subscriber reads too slowly: keep only the latest
    #: publication per subscription ("latest"), or close its connection.
    overflow: ClassVar[Literal["latest", "close"]] = "latest"
    #: A line for the admin and the docs.
    description: ClassVar[str] = ""
    #: What drives the source: "schedule" or "topology".
    driver: ClassVar[str]

    def clean_params(self, params):
        """Validate ``params``; return them normalised, or raise InvalidParams."""
        if not isinstance(params, dict):
            raise InvalidParams("params must be a JSON object")
        try:
            model = self.Params.model_validate(params)
        except pydantic.ValidationError as exc:
            raise InvalidParams(_describe(exc)) from None
        return model.model_dump(mode="json")

    def check_access(self, user):
        """Raise SubscriptionForbidden unless ``user`` may subscribe."""
        if self.permission is None:
            return
        if user is None or not user.is_authenticated:
            raise SubscriptionForbidden(f"{self.name} needs a signed-in user")
        if self.permission != "authenticated" and not user.has_perm(self.permission):
            raise SubscriptionForbidden(
                f"{self.name} needs the permission {self.permission}"
            )

    def topic(self, **params):
        """The topic of these params (validated), for publishing from code."""
        return Topic.of(self.name, self.clean_params(params))

    def publish(self, topic, data, **extra):
        """Publish ``data`` to ``topic``'s subscribers; returns its seq."""
        return publish(topic, data, history_size=self.history_size, extra=extra)

    def prepare(self, topic, data, **extra):
        """``publish()``'s first half: ``pubsub.publishing.publish_all`` ends it."""
        return prepare(topic, data, history_size=self.history_size, extra=extra)

    @abc.abstractmethod
    def start(self, topic: Topic) -> None:
        """Begin producing ``topic``: its first subscriber has arrived."""

    @abc.abstractmethod
    def stop(self, topic: Topic) -> None:
        """Stop producing ``topic``: nobody has watched it for the grace period."""

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


class ScheduledSource(DataSource):
    """
    A source that Celery beat runs every ``interval`` seconds while watched.
    Subclasses implement ``fetch(params)``; its result is published.
    """

    driver = "schedule"
    #: Seconds between two fetches; admins may change it per topic.
    interval: ClassVar[float] = 10.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.stale_after is None and "interval" in cls.__dict__:
            cls.stale_after = cls.interval * 3

    @abc.abstractmethod
    def fetch(self, params: dict) -> Any:
        """Produce the current value for ``params`` (JSON-encodable)."""

    def refresh(self, topic):
        """Fetch and publish once; Celery's task calls this."""
        return self.publish(topic, self.fetch(topic.params))

    def start(self, topic):
        from . import schedules

        schedules.enable(self, topic)

    def stop(self, topic):
        from . import schedules

        schedules.disable(topic)


class StreamSource(DataSource):
    """
    A source fed by Kafka topologies (see ``datasources.topology``). Its
    ``route(record)`` turns one Kafka record into the topics it belongs to and
    their payload. Starting and stopping is up to the topologies: an on-demand
    topology consumes only while one of its source's topics is watched.
    """

    driver = "topology"

    @abc.abstractmethod
    def route(self, value: Any, key: str | None) -> list[tuple[dict, Any]]:
        """
        Map a decoded record value (and its key) to ``[(params, payload)]``.
        Raise ``ValueError`` for a record that cannot be mapped; the topology
        then treats it as poison.
        """

    def start(self, topic):
        logger.debug("stream source %s is watched on %s", self.name, topic.key)

    def stop(self, topic):
        logger.debug("stream source %s is no longer watched on %s", self.name, topic.key)


def _describe(error):
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "params"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
