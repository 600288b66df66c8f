"""What the runtimes can reach on this CPU: a compute-bound model of 1x1 convolutions.

A 1x1 convolution over 512 channels is a plain matrix multiply with weights that stay in
cache, the best case for a runtime's GEMM kernels; multiply-adds per second on it, in
float32 and in int8, is the "peak" that InceptionV3's own multiply-adds per second are
compared with. It is converted with the same converter settings as the float32 and int8
variants and run by the same runtime, thread counts and interleaved loop.

The peers' int8 runs the same model too (`peer_models`): that compares the int8 kernels
themselves, without any graph around them. Where a peer's int8 InceptionV3 beats ours by
about the factor its kernels beat XNNPACK's here, the gap is the kernel library's (on x86
without VNNI: oneDNN and ONNX Runtime multiply u8 x s8 pairs with `vpmaddubsw`, XNNPACK
widens both to 16 bits first), not our graph's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.candidates import Spec

SIZE, CHANNELS, LAYERS = 28, 512, 8
MULTIPLY_ADDS = SIZE * SIZE * CHANNELS * CHANNELS * LAYERS
PREFIX = "peak "


def _graph():
    from build.keras_env import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, CHANNELS))
    x = inputs
    for i in range(LAYERS):
        x = keras.layers.Conv2D(CHANNELS, 1, activation="relu", name=f"conv{i}")(x)
    return keras.Model(inputs, x, name="peak")


def _samples() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (8, SIZE, SIZE, CHANNELS)) \
        .astype(np.float32)


def build_models(folder: Path) -> list[Spec]:
    """float32 and int8 TFLite files of the synthetic model (cached in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"peak_{name}.tflite" for name in ("float32", "int8")}
    if not all(p.is_file() for p in paths.values()):
        from quantize import variants
        graph = _graph()

        def representative():
            for x in _samples():
                yield [x[np.newaxis]]

        for name, path in paths.items():
            converter = variants.make_converter(graph, variants.VARIANTS[name],
                                                representative)
            path.write_bytes(converter.convert())
    return [Spec(f"{PREFIX}{name}", "tflite_tensor", str(path), "peak", name)
            for name, path in paths.items()]


def peer_models(folder: Path, peers_available: list[str]) -> list[Spec]:
    """The same model as each available peer's int8, quantized as `benchmarks.peers`
    quantizes InceptionV3 (cached in `folder`)."""
    if not peers_available:
        return []
    from benchmarks import peers
    folder.mkdir(parents=True, exist_ok=True)
    float_onnx = folder / "peak_float32.onnx"
    if not float_onnx.is_file():
        peers.onnx_of(_graph(), float_onnx)
    specs = []
    if "onnxruntime" in peers_available:
        path = folder / "peak_onnxruntime_int8.onnx"
        if not path.is_file():
            peers.quantize_onnx(float_onnx, _samples(), path)
        specs.append(Spec(f"{PREFIX}onnxruntime int8", "onnxruntime_tensor", str(path),
                          "onnxruntime", "int8"))
    if "openvino" in peers_available:
        path = folder / "peak_openvino_int8.xml"
        if not path.is_file():
            import openvino as ov
            peers.nncf_int8(ov.convert_model(str(float_onnx)), _samples(), path)
        specs.append(Spec(f"{PREFIX}openvino int8", "openvino_tensor", str(path), "openvino",
                          "int8"))
    return specs


def label(spec: Spec) -> str:
    """`float32`, `int8` (ours), `onnxruntime int8`, `openvino int8`."""
    return spec.name.removeprefix(PREFIX)


def gmacs(multiply_adds: int, p50_ms: float) -> float:
    return multiply_adds / (p50_ms / 1000) / 1e9
