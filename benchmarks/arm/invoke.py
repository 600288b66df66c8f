"""Run one model a given number of times on one thread, as the device would: the guest
program of benchmarks/arm_cost.py (numpy and the runtime only, or onnxruntime for an
`.onnx` peer; no TensorFlow).

    python benchmarks/arm/invoke.py MODEL RUNS
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def tflite_runner(model: str):
    from runtime.classify import Classifier
    classifier = Classifier(model, num_threads=1)
    pixels = np.random.default_rng(0).integers(0, 256, (*classifier.size, 3), np.uint8)
    tensor = classifier.input_tensor(pixels)
    return lambda: classifier.run(tensor)


def onnx_runner(model: str):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in spec.shape]
    feed = {spec.name: np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
    return lambda: session.run(None, feed)


MARK = 0x5EED5EED  # benchmarks/arm/count_insns.c counts between two getpgid(MARK) calls


def mark() -> None:
    try:
        os.getpgid(MARK)
    except OSError:
        pass  # no such process: the call is only a mark for the counting plugin


def main() -> int:
    """One invoke to warm up, then RUNS invokes between two marks."""
    model, runs = sys.argv[1], int(sys.argv[2])
    run = onnx_runner(model) if model.endswith(".onnx") else tflite_runner(model)
    run()
    mark()
    for _ in range(runs):
        run()
    mark()
    return 0


if __name__ == "__main__":
    sys.exit(main())
