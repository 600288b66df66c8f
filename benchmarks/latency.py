"""Latency of many candidates at one thread count, interleaved, in a process of its own.

Every candidate is loaded, warmed up, then invoked in rounds (A B C ... A B C ...), so a
slow minute on a shared machine slows every candidate alike and ratios measured in the same
run stay meaningful. One process per thread count because TensorFlow (the Keras baseline)
sizes its thread pools once per process.

    python -m benchmarks.latency --specs specs.json --threads 1 --runs 30 --out t1.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.candidates import Spec, open_candidate, set_tf_threads
from runtime.bench import percentile_ms

ROOT = Path(__file__).resolve().parents[1]


def percentiles_ms(seconds: list[float]) -> dict:
    return {"p50_ms": percentile_ms(seconds, 50), "p90_ms": percentile_ms(seconds, 90),
            "mean_ms": round(float(np.mean(seconds)) * 1000, 3), "runs": len(seconds)}


def interleaved(specs: list[Spec], threads: int, runs: int, warmup: int) -> dict[str, dict]:
    if any(s.kind == "keras" for s in specs):
        set_tf_threads(threads)
    loaded, inputs = [], []
    for spec in specs:
        candidate = open_candidate(spec, threads)
        image = np.random.default_rng(0).integers(0, 256, (*candidate.size, 3), np.uint8)
        loaded.append(candidate)
        inputs.append(candidate.tensor(image))
    for candidate, x in zip(loaded, inputs):
        for _ in range(warmup):
            candidate.invoke(x)
    times: list[list[float]] = [[] for _ in specs]
    cpu: list[float] = [0.0 for _ in specs]
    for _ in range(runs):
        for i, (candidate, x) in enumerate(zip(loaded, inputs)):
            cpu_start, start = time.process_time(), time.perf_counter()
            candidate.invoke(x)
            times[i].append(time.perf_counter() - start)
            cpu[i] += time.process_time() - cpu_start
    return {spec.name: {**percentiles_ms(t), "warmup": warmup, "threads": threads,
                        # CPU time over wall time: how many cores the candidate kept busy.
                        "cpu_per_wall": round(c / sum(t), 2)}
            for spec, t, c in zip(specs, times, cpu)}


def measure(specs: list[Spec], threads: int, runs: int, warmup: int, work: Path) -> dict:
    """Run `interleaved` in a fresh process (see the module docstring)."""
    spec_file = work / f"specs_t{threads}.json"
    out = work / f"latency_t{threads}.json"
    spec_file.write_text(json.dumps([s.as_dict() for s in specs]))
    subprocess.run([sys.executable, "-m", "benchmarks.latency", "--specs", str(spec_file),
                    "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup),
                    "--out", str(out)], check=True, cwd=ROOT)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__)
    p.add_argument("--specs", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    specs = [Spec(**s) for s in json.loads(Path(args.specs).read_text())]
    print(f"[latency] {len(specs)} candidates, {args.threads} thread(s), {args.runs} rounds",
          flush=True)
    result = interleaved(specs, args.threads, args.runs, args.warmup)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
