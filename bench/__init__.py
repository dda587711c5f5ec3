"""
Vanilla's benchmark suite: one publication pushed to many websockets, measured
against three baselines on the same machine in the same run.

Run it with ``bench/run`` (``bench/run --quick`` for a two-minute pass); see
docs/performance.md for what each scenario measures and the latest table.
"""
