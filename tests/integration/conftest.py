"""Fixtures shared by the integration tests."""
import pytest

from .topology_helpers import KafkaTopics


@pytest.fixture
def kafka_topics():
    """Creates Kafka topics with unique names; deletes them afterwards."""
    topics = KafkaTopics()
    yield topics
    topics.delete_all()
