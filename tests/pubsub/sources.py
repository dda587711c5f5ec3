"""
A source registry of test doubles: Pub-Sub needs only ``get(name)`` and the
few attributes below, so its tests need no real data source.
"""
from pubsub.exceptions import InvalidParams, SourceDoesNotExist, SubscriptionForbidden


class TrackingSource:
    """Records the topics it is started and stopped for."""

    history_size = 100
    stale_after = None
    overflow = "latest"

    def __init__(self, name, fail_start=False, members_only=False):
        self.name = name
        self.fail_start = fail_start
        self.members_only = members_only
        self.started = []
        self.stopped = []

    def clean_params(self, params):
        unknown = set(params) - {"room", "size"}
        if unknown:
            raise InvalidParams(f"unknown params {sorted(unknown)}")
        if not isinstance(params.get("room", ""), str):
            raise InvalidParams("room: must be a string")
        return {"room": params.get("room", "lobby").lower(), "size": params.get("size", 1)}

    def check_access(self, user):
        if self.members_only and not (user and user.is_authenticated):
            raise SubscriptionForbidden(f"{self.name} needs a signed-in user")

    def start(self, topic):
        if self.fail_start:
            raise RuntimeError("upstream refused")
        self.started.append(topic.key)

    def stop(self, topic):
        self.stopped.append(topic.key)


class Registry:
    def __init__(self):
        self.sources = {}

    def add(self, source):
        self.sources[source.name] = source
        return source

    def get(self, name):
        try:
            return self.sources[name]
        except (KeyError, TypeError):
            raise SourceDoesNotExist(name) from None


registry = Registry()
