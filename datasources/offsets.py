"""
The offsets of one topology worker: the partitions it owns, how far it has
published in each without committing yet, and what its group has committed.

The worker records an offset with ``published()`` only once its record's
publications are in Redis; ``due()`` hands out what to commit and
``settled()`` takes the commit's answer. Nothing here talks to Kafka, so the
at-least-once bookkeeping is testable on its own.
"""
from confluent_kafka import TopicPartition


class Offsets:
    def __init__(self):
        self.assigned = set()
        # (topic, partition) -> next offset to commit, published but not committed.
        self.pending = {}
        # (topic, partition) -> the group's committed offset, as last known.
        self.committed = {}

    # --- ownership ----------------------------------------------------------------

    def assign(self, partitions):
        self.assigned |= _keys(partitions)

    def forget(self, partitions):
        """Partitions revoked or lost: what was not committed is not ours."""
        keys = _keys(partitions)
        self.assigned -= keys
        for key in keys:
            self.pending.pop(key, None)
            self.committed.pop(key, None)

    # --- commits --------------------------------------------------------------------

    def published(self, message):
        """Every publication of ``message`` is in Redis: it may be committed."""
        self.pending[(message.topic(), message.partition())] = message.offset() + 1

    def due(self, only=None):
        """Take the offsets to commit now, of every partition or ``only`` some."""
        wanted = None if only is None else _keys(only)
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self.pending.items()
            if wanted is None or (topic, partition) in wanted
        ]
        for part in offsets:
            del self.pending[(part.topic, part.partition)]
        return offsets

    def settled(self, error, partitions):
        """A commit's answer: remember what was committed, owe the rest again."""
        for part in partitions:
            key = (part.topic, part.partition)
            if error is None and part.error is None:
                self.committed[key] = part.offset
            elif key in self.assigned:
                # Unless a newer offset is already due, commit it next time.
                self.pending.setdefault(key, part.offset)

    # --- status -------------------------------------------------------------------

    def unknown(self):
        """Owned partitions whose committed offset this worker has not seen."""
        return [TopicPartition(*key) for key in self.assigned - set(self.committed)]

    def learn(self, partitions):
        """Committed offsets the group reported (negative: none yet)."""
        for part in partitions:
            self.committed.setdefault((part.topic, part.partition), part.offset)

    def table(self, high_watermark):
        """Committed offset, high watermark and lag by "topic/partition"."""
        table = {}
        for topic, partition in sorted(self.assigned):
            committed = _offset(self.committed.get((topic, partition)))
            high = _offset(high_watermark(topic, partition))
            known = committed is not None and high is not None
            table[f"{topic}/{partition}"] = {
                "committed": committed,
                "high": high,
                "lag": max(high - committed, 0) if known else None,
            }
        return table


def _keys(partitions):
    return {
        part if isinstance(part, tuple) else (part.topic, part.partition)
        for part in partitions
    }


def _offset(value):
    """An offset, or None for librdkafka's logical ones (unknown, invalid)."""
    return value if value is not None and value >= 0 else None
