"""Initialisation time and peak memory of one candidate, alone in a fresh process.

A device process holds one model, so that is what is measured: the peak resident memory
(VmHWM) of a process that imports the candidate's framework, loads the model and runs
it three times, and how much of it the framework's import alone took.

    python -m benchmarks.memory --spec '{"name": ..., "kind": "tflite", ...}' --threads 1
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK = {"tflite": "runtime.classify", "tflite_tensor": "runtime.interpreter",
             "keras": "build.float_model",
             "onnxruntime": "onnxruntime", "openvino": "openvino"}


def peak_rss_mb() -> float:
    """This process's high-water mark: VmHWM (ru_maxrss would carry over the parent's
    peak through fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(spec, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--spec",
                           json.dumps(spec.as_dict()), "--threads", str(threads)],
                          check=True, cwd=ROOT, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    p.add_argument("--spec", required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    spec = json.loads(args.spec)
    import importlib
    importlib.import_module(FRAMEWORK[spec["kind"]])
    from benchmarks.candidates import Spec, open_candidate, set_tf_threads
    if spec["kind"] == "keras":
        set_tf_threads(args.threads)
    after_import = peak_rss_mb()
    start = time.perf_counter()
    candidate = open_candidate(Spec(**spec), args.threads)
    x = candidate.tensor(np.random.default_rng(0).integers(0, 256, (*candidate.size, 3),
                                                          np.uint8))
    init_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    candidate.invoke(x)
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(2):
        candidate.invoke(x)
    print(json.dumps({"init_ms": round(init_ms, 1), "first_invoke_ms": round(first_ms, 1),
                      "peak_rss_mb": peak_rss_mb(), "import_rss_mb": after_import}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
