"""Celery tasks of scheduled sources. Thin: look the source up, delegate."""
import logging

from celery import shared_task

from pubsub.connection import Keys, sync_client
from pubsub.exceptions import InvalidParams, SourceDoesNotExist
from pubsub.protocol import SourceState
from pubsub.publishing import set_state
from pubsub.topics import Topic

from .registry import registry

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=3, default_retry_delay=2, ignore_result=True)
def refresh_source(self, source, params):
    """Fetch ``source`` for ``params`` once and publish the result."""
    try:
        data_source = registry.get(source)
        topic = Topic.of(data_source.name, data_source.clean_params(params))
    except (SourceDoesNotExist, InvalidParams):
        logger.error("refresh of %s %r refused", source, params, exc_info=True)
        return None
    if not sync_client().hexists(Keys().states, topic.key):
        # Stopped since beat sent this: nobody watches, so do nothing.
        logger.debug("skipped %s: not watched", topic.key)
        return None
    try:
        return data_source.refresh(topic)
    except Exception as exc:
        logger.warning("refresh of %s failed; retrying", topic.key, exc_info=True)
        set_state(topic.key, SourceState.ERROR, f"refresh failed: {exc}")
        raise self.retry(exc=exc)
