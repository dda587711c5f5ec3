"""Publishing in batches (``prepare`` then ``publish_all``) against real Redis."""
import json

import pytest

from pubsub.connection import Keys, sync_client
from pubsub.exceptions import PublicationTooLarge
from pubsub.publishing import prepare, publish, publish_all
from pubsub.topics import Topic

pytestmark = pytest.mark.integration


def history(topic):
    entries = sync_client().xrange(Keys().history(topic.key))
    return [(json.loads(fields["m"])["seq"], json.loads(fields["m"])["data"])
            for _, fields in entries]


def test_a_batch_is_published_in_order_with_each_topic_s_seqs(vanilla_settings):
    a = Topic.of("chat", {"room": "a"})
    b = Topic.of("chat", {"room": "b"})
    assert publish(a, "before") == 1

    seqs = publish_all([prepare(a, 1), prepare(b, "x"), prepare(a, 2)])

    assert seqs == [2, 1, 3]
    assert history(a) == [(1, "before"), (2, 1), (3, 2)]
    assert history(b) == [(1, "x")]
    assert publish_all([]) == []


def test_what_cannot_be_published_is_refused_when_prepared(settings, vanilla_settings):
    settings.VANILLA = {**settings.VANILLA, "MAX_PUBLICATION_BYTES": 1000}
    topic = Topic.of("chat", {"room": "refused"})

    with pytest.raises(PublicationTooLarge):
        prepare(topic, "x" * 2000)
    with pytest.raises(TypeError):
        prepare(topic, {"not JSON": object()})
    assert history(topic) == []
