"""
Latency histograms that load clients fill cheaply and the driver merges.

Buckets are 0.1 ms wide below 100 ms and 1 ms wide up to 10 s; anything slower
lands in the last bucket. The exact maximum is kept beside the buckets.
"""
FINE_LIMIT_US = 100_000
COARSE_LIMIT_US = 10_000_000
FINE_BUCKETS = FINE_LIMIT_US // 100
LAST_BUCKET = FINE_BUCKETS + (COARSE_LIMIT_US - FINE_LIMIT_US) // 1000


def bucket_of(seconds):
    us = int(seconds * 1_000_000)
    if us < FINE_LIMIT_US:
        return us // 100 if us > 0 else 0
    if us < COARSE_LIMIT_US:
        return FINE_BUCKETS + (us - FINE_LIMIT_US) // 1000
    return LAST_BUCKET


def upper_edge(bucket):
    """The latency (seconds) at the top of ``bucket``."""
    if bucket < FINE_BUCKETS:
        return (bucket + 1) * 100 / 1_000_000
    return (FINE_LIMIT_US + (bucket - FINE_BUCKETS + 1) * 1000) / 1_000_000


class Histogram:
    __slots__ = ("counts", "count", "max")

    def __init__(self):
        self.counts = {}
        self.count = 0
        self.max = 0.0

    def add(self, seconds):
        bucket = bucket_of(seconds)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        if seconds > self.max:
            self.max = seconds

    def merge(self, other):
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.count += other.count
        self.max = max(self.max, other.max)

    def percentile(self, fraction):
        """Upper edge of the bucket holding the ``fraction`` quantile, or None."""
        if not self.count:
            return None
        rank = fraction * self.count
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(upper_edge(bucket), self.max)
        return self.max

    def to_json(self):
        return {"counts": self.counts, "count": self.count, "max": self.max}

    @classmethod
    def from_json(cls, data):
        histogram = cls()
        histogram.counts = {int(bucket): n for bucket, n in data["counts"].items()}
        histogram.count = data["count"]
        histogram.max = data["max"]
        return histogram

