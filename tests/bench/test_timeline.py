"""bench.timeline's arithmetic: busy and iowait cores and disk rates per interval."""

from __future__ import annotations

from bench.timeline import Counters, rows


def test_rows_split_the_counters_into_intervals() -> None:
    # Two CPUs: 100 jiffies per 0.5 s interval in all. The first interval is half idle
    # (a quarter of it iowait), the second fully busy.
    samples = [Counters(10.0, 0, 0, 0, 0, 0),
               Counters(10.25, 50, 25, 10, 1_000_000, 0),
               Counters(10.5, 100, 50, 25, 2_000_000, 500_000),
               Counters(11.0, 200, 50, 25, 2_000_000, 1_500_000)]
    assert rows(samples, 0.5, 2) == [(0.0, 1.0, 0.5, 4.0, 1.0), (0.5, 2.0, 0.0, 0.0, 2.0)]
