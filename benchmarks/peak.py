"""What the runtime can reach on this CPU: a compute-bound model of 1x1 convolutions.

A 1x1 convolution over 512 channels is a plain matrix multiply with weights that stay in
cache, the best case for XNNPACK's GEMM kernels; multiply-adds per second on it, in float32
and in int8, is the "peak" that InceptionV3's own multiply-adds per second are compared
with. It is converted with the same converter settings as the float32 and int8 variants
and run by the same runtime, thread counts and interleaved loop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.candidates import Spec

SIZE, CHANNELS, LAYERS = 28, 512, 8
MULTIPLY_ADDS = SIZE * SIZE * CHANNELS * CHANNELS * LAYERS


def build_models(folder: Path) -> list[Spec]:
    """float32 and int8 TFLite files of the synthetic model (cached in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"peak_{name}.tflite" for name in ("float32", "int8")}
    if not all(p.is_file() for p in paths.values()):
        from build.keras_env import keras
        from quantize import variants
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, CHANNELS))
        x = inputs
        for i in range(LAYERS):
            x = keras.layers.Conv2D(CHANNELS, 1, activation="relu", name=f"conv{i}")(x)
        graph = keras.Model(inputs, x, name="peak")
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(8):
                yield [rng.uniform(-1, 1, (1, SIZE, SIZE, CHANNELS)).astype(np.float32)]

        for name, path in paths.items():
            converter = variants.make_converter(graph, variants.VARIANTS[name],
                                                representative)
            path.write_bytes(converter.convert())
    return [Spec(f"peak {name}", "tflite_tensor", str(path), "peak", name)
            for name, path in paths.items()]


def gmacs(multiply_adds: int, p50_ms: float) -> float:
    return multiply_adds / (p50_ms / 1000) / 1e9
