"""
A connection's outbox: the frames on their way to one client's socket, in
order, at most ``VANILLA["OUTBOX_SIZE"]`` of them.

When the outbox is full, the overflow policy of the data source decides
(``DataSource.overflow``):

- ``"latest"``: queued publications of the subscription's source are dropped
  until only the newest of each subscription is left. Each subscription counts
  what it lost in ``dropped``; the connection tells the client just before
  that subscription's next publication.
- ``"close"``: the connection must close (4051) and the client resume.

Replies and status frames are never dropped: when the client leaves so many
unread that nothing can make room, the connection must close as well.
"""
from collections import deque

LATEST = "latest"


def keeps_latest(subscription):
    return getattr(subscription.source, "overflow", LATEST) == LATEST


class Outbox:
    """A bounded FIFO of ``(subscription or None, text, is_data)``."""

    def __init__(self, limit):
        self.limit = limit
        self.frames = deque()
        # Publications dropped over the connection's life, for its log line.
        self.dropped = 0

    def __len__(self):
        return len(self.frames)

    def put(self, subscription, text, is_data=False):
        """Queue a frame; False when it cannot be queued and the connection must close."""
        if len(self.frames) < self.limit:
            self.frames.append((subscription, text, is_data))
            return True
        if is_data and not keeps_latest(subscription):
            return False
        self.squeeze()
        if len(self.frames) < self.limit:
            self.frames.append((subscription, text, is_data))
            return True
        if not is_data:
            return False
        # Only replies and one publication per subscription are left: this
        # publication replaces the one queued for its subscription, if any.
        self.drop_newest_of(subscription)
        if len(self.frames) < self.limit:
            self.frames.append((subscription, text, is_data))
        else:
            self.count_drop(subscription)
        return True

    def get(self):
        return self.frames.popleft()

    def clear(self):
        self.frames.clear()

    def squeeze(self):
        """Keep only the newest queued publication of each "latest" subscription."""
        newest = {}
        queued = 0
        for index, (subscription, _, is_data) in enumerate(self.frames):
            if is_data and keeps_latest(subscription):
                newest[subscription] = index
                queued += 1
        if queued == len(newest):
            return
        kept = deque()
        for index, entry in enumerate(self.frames):
            subscription, _, is_data = entry
            if subscription in newest and is_data and newest[subscription] != index:
                self.count_drop(subscription)
            else:
                kept.append(entry)
        self.frames = kept

    def drop_newest_of(self, subscription):
        for index in range(len(self.frames) - 1, -1, -1):
            owner, _, is_data = self.frames[index]
            if owner is subscription and is_data:
                del self.frames[index]
                self.count_drop(subscription)
                return

    def count_drop(self, subscription):
        subscription.dropped += 1
        self.dropped += 1
