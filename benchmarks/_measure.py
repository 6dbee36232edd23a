"""Wall time and peak resident memory of a call, for the benchmarks that time one function in-process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def rss() -> int:
    """Resident memory of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall time (s) and its peak resident memory above the start (MiB, sampled every 5 ms)."""
    base = peak = rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    done.set()
    t.join()
    return out, wall, (max(peak, rss()) - base) / 2**20
