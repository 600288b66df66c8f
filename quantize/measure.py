"""Wall time and peak resident memory of a step, sampled from /proc while it runs."""
from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from typing import Iterator


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process high-water mark is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def measured(interval: float = 0.02) -> Iterator[dict]:
    """Yields a dict that holds `seconds`, `peak_rss_mb` and `added_rss_mb` afterwards."""
    result: dict = {}
    start_rss = rss_bytes()
    peak = [start_rss]
    stop = threading.Event()

    def sample():
        while not stop.wait(interval):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = round(time.perf_counter() - start, 2)
        stop.set()
        thread.join()
        peak[0] = max(peak[0], rss_bytes())
        result["peak_rss_mb"] = round(peak[0] / 2 ** 20, 1)
        result["added_rss_mb"] = round((peak[0] - start_rss) / 2 ** 20, 1)
