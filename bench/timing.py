"""Timing shared by the benchmarks: calls timed round-robin, so that load from other processes falls on all alike."""

from __future__ import annotations

import statistics
import time


def measure(calls: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument callable, timed round-robin after one warm-up call."""
    times = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
