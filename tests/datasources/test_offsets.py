"""A worker's offsets: only published records are committed, none is lost."""
from confluent_kafka import KafkaError, TopicPartition

from datasources.offsets import Offsets


class Record:
    def __init__(self, partition, offset):
        self._partition, self._offset = partition, offset

    def topic(self):
        return "flights"

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset


def parts(*numbers, offset=-1001):
    return [TopicPartition("flights", number, offset) for number in numbers]


def test_what_is_due_is_the_offset_after_the_last_published_record():
    offsets = Offsets()
    offsets.assign(parts(0, 1))
    for offset in (4, 5, 6):
        offsets.published(Record(0, offset))
    offsets.published(Record(1, 0))
    due = {(part.partition, part.offset) for part in offsets.due()}
    assert due == {(0, 7), (1, 1)}
    assert offsets.due() == []


def test_a_failed_commit_is_owed_again_unless_a_newer_one_is_due():
    offsets = Offsets()
    offsets.assign(parts(0, 1))
    offsets.published(Record(0, 9))
    offsets.published(Record(1, 9))
    failed = offsets.due()
    offsets.published(Record(1, 20))
    offsets.settled(KafkaError(KafkaError._TRANSPORT), failed)
    assert offsets.pending == {("flights", 0): 10, ("flights", 1): 21}


def test_a_commit_of_a_partition_no_longer_owned_is_not_retried():
    offsets = Offsets()
    offsets.assign(parts(0))
    offsets.published(Record(0, 3))
    failed = offsets.due()
    offsets.forget(parts(0))
    offsets.settled(KafkaError(KafkaError._TRANSPORT), failed)
    assert offsets.pending == {}


def test_revoking_some_partitions_commits_only_those():
    offsets = Offsets()
    offsets.assign(parts(0, 1, 2))
    for partition in (0, 1, 2):
        offsets.published(Record(partition, 5))
    due = offsets.due(only=parts(1))
    assert [(part.partition, part.offset) for part in due] == [(1, 6)]
    offsets.forget(parts(1))
    assert set(offsets.pending) == {("flights", 0), ("flights", 2)}
    assert offsets.assigned == {("flights", 0), ("flights", 2)}


def test_table_shows_committed_high_watermark_and_lag():
    offsets = Offsets()
    offsets.assign(parts(0, 1, 2))
    offsets.settled(None, parts(0, offset=40))
    offsets.learn(parts(1, offset=-1001) + parts(2, offset=7))
    highs = {0: 42, 1: 3, 2: -1001}
    table = offsets.table(lambda topic, partition: highs[partition])
    assert table == {
        "flights/0": {"committed": 40, "high": 42, "lag": 2},
        "flights/1": {"committed": None, "high": 3, "lag": None},
        "flights/2": {"committed": 7, "high": None, "lag": None},
    }
    assert offsets.unknown() == []
