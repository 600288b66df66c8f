"""Latency of one model on this device: initialisation, warm-up, then timed invokes."""
from __future__ import annotations

import os
import resource
import time

import numpy as np

from runtime.classify import Classifier


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1000, 3)


def bench(model_path: str | os.PathLike, num_threads: int | None = None, runs: int = 50,
          warmup: int = 5, edgetpu: bool | None = None, device: str | None = None) -> dict:
    start = time.perf_counter()
    classifier = Classifier(model_path, num_threads=num_threads, edgetpu=edgetpu,
                            device=device)
    init_s = time.perf_counter() - start
    pixels = np.random.default_rng(0).integers(0, 256, (*classifier.size, 3), dtype=np.uint8)
    tensor = classifier.input_tensor(pixels)
    for _ in range(warmup):
        classifier.run(tensor)
    times = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        classifier.run(tensor)
        times.append(time.perf_counter() - t)
    # CPU time over wall time: about 1 with one thread, up to N with N busy threads.
    cpu_per_wall = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    return {"model": str(model_path), "bytes": os.path.getsize(model_path),
            "runs": runs, "warmup": warmup,
            "init_ms": round(init_s * 1000, 1), "mean_ms": round(np.mean(times) * 1000, 3),
            "p50_ms": percentile_ms(times, 50), "p90_ms": percentile_ms(times, 90),
            "p99_ms": percentile_ms(times, 99), "cpu_per_wall": round(cpu_per_wall, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **{k: v for k, v in classifier.describe().items() if k != "model"}}
