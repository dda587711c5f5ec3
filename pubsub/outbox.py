"""
A connection's outbox: the frames on their way to one client's socket, in
order, at most ``VANILLA["OUTBOX_SIZE"]`` of them.

When the outbox is full, the overflow policy of the data source decides
(``DataSource.overflow``):

- ``"latest"``: queued publications of the subscription's source are dropped
  until only the newest of each subscription is left. Each subscription counts
  what it lost in ``dropped`` and remembers the seq just before its first lost
  publication in ``gap_after``; the connection tells the client in an
  ``overflow`` error, from which the client can resume.
- ``"close"``: the connection must close (4051) and the client resume.

Replies and status frames are never dropped: when the client leaves so many
unread that nothing can make room, the connection must close as well.
"""
from collections import deque

LATEST = "latest"
#: The frames of an outbox nothing was ever queued in: most connections write
#: straight to their socket, and an empty deque costs 0.6 KB each.
NO_FRAMES = ()


def keeps_latest(subscription):
    return getattr(subscription.source, "overflow", LATEST) == LATEST


class Outbox:
    """
    A bounded FIFO of ``(subscription or None, text, seq)``; ``seq`` is the
    publication's seq for a data frame and None for any other frame.
    """

    def __init__(self, limit):
        self.limit = limit
        self.frames = NO_FRAMES
        # Publications dropped over the connection's life, for its log line.
        self.dropped = 0
        # Subscriptions that lost publications the client was not told of.
        self.gaps = {}

    def __len__(self):
        return len(self.frames)

    def put(self, subscription, text, seq=None):
        """Queue a frame; False if it cannot be, and the connection must close."""
        if len(self.frames) < self.limit:
            self.append((subscription, text, seq))
            return True
        if seq is not None and not keeps_latest(subscription):
            return False
        self.squeeze()
        if len(self.frames) < self.limit:
            self.append((subscription, text, seq))
            return True
        if seq is None:
            return False
        # Only replies and one publication per subscription are left: this
        # publication replaces the one queued for its subscription, if any.
        self.drop_newest_of(subscription)
        if len(self.frames) < self.limit:
            self.append((subscription, text, seq))
        else:
            self.count_drop(subscription, seq)
        return True

    def append(self, entry):
        if self.frames is NO_FRAMES:
            self.frames = deque()
        self.frames.append(entry)

    def get(self):
        return self.frames.popleft()

    def clear(self):
        self.frames = NO_FRAMES
        self.gaps.clear()

    def take_gap(self, subscription):
        """
        ``(dropped, gap_after)`` of a subscription that lost publications since
        it was last asked, resetting both; None if it lost none.
        """
        if self.gaps.pop(subscription, None) is None:
            return None
        gap = (subscription.dropped, subscription.gap_after)
        subscription.dropped = 0
        subscription.gap_after = None
        return gap

    def squeeze(self):
        """Keep only the newest queued publication of each "latest" subscription."""
        newest = {}
        queued = 0
        for index, (subscription, _, seq) in enumerate(self.frames):
            if seq is not None and keeps_latest(subscription):
                newest[subscription] = index
                queued += 1
        if queued == len(newest):
            return
        kept = deque()
        for index, entry in enumerate(self.frames):
            subscription, _, seq = entry
            if seq is not None and newest.get(subscription, index) != index:
                self.count_drop(subscription, seq)
            else:
                kept.append(entry)
        self.frames = kept

    def drop_newest_of(self, subscription):
        for index in range(len(self.frames) - 1, -1, -1):
            owner, _, seq = self.frames[index]
            if owner is subscription and seq is not None:
                del self.frames[index]
                self.count_drop(subscription, seq)
                return

    def count_drop(self, subscription, seq, count=1):
        """
        Count ``count`` publications lost from ``seq`` on. A subscription's
        queued seqs rise in queue order and whatever survives a drop is newer
        than what was dropped, so everything up to the lowest dropped seq
        minus one reached (or will reach) the client before the gap.
        """
        subscription.dropped += count
        if subscription.gap_after is None or seq - 1 < subscription.gap_after:
            subscription.gap_after = seq - 1
        self.gaps[subscription] = True
        self.dropped += count
