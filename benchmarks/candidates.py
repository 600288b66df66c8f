"""What `make bench` runs: one way to open each kind of model, the same calls for all.

A candidate is a kind (tflite, keras, onnxruntime, openvino; with `_tensor` for models that
take any tensor, not an image: the peak models), a file and a thread count.
`open_candidate` loads it and returns a `Loaded` with the same three calls for every kind,
so timing, memory and drift code never asks which framework it holds. Each kind imports
its own framework only when opened: the memory a process needs for a TFLite model is then
the runtime's alone (see memory.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from runtime import preprocessing

@dataclass(frozen=True)
class Spec:
    """Everything needed to open a candidate again, in this process or another."""
    name: str          # as the results show it: "int8", "onnxruntime int8", ...
    kind: str
    path: str          # .tflite, float model folder, .onnx or OpenVINO .xml
    family: str        # "ours", "keras", "onnxruntime", "openvino": a colour in the chart
    precision: str     # "float32", "int8", ...
    options: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Loaded:
    tensor: Callable[[np.ndarray], object]      # uint8 pixels (H, W, 3) -> model input
    invoke: Callable[[object], np.ndarray]      # model input -> logits, shape (classes,)
    size: tuple[int, int]                       # (height, width) the model takes
    ceiling: float | None = None                # an 8-bit output's largest value


def model_bytes(spec: Spec) -> int:
    """Bytes on disk a device would carry (OpenVINO: the .xml and its .bin)."""
    path = Path(spec.path)
    if spec.kind == "openvino":
        return path.stat().st_size + path.with_suffix(".bin").stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".keras")
    return path.stat().st_size


def _normalized(pixels: np.ndarray) -> np.ndarray:
    return preprocessing.normalize(pixels)[np.newaxis].astype(np.float32)


def _open_tflite(spec: Spec, threads: int) -> Loaded:
    from runtime.classify import Classifier
    classifier = Classifier(spec.path, num_threads=threads,
                            kernels=spec.options.get("kernels", "default"))
    return Loaded(classifier.input_tensor, classifier.run, classifier.size,
                  classifier.output_ceiling)


def _fixed_tensor(shape, dtype=np.float32) -> np.ndarray:
    """The one input a `_tensor` candidate gets: uniform over its type's range."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    return np.random.default_rng(0).uniform(info.min if info else -1,
                                            info.max if info else 1, shape).astype(dtype)


def _open_tflite_tensor(spec: Spec, threads: int) -> Loaded:
    from runtime.interpreter import make_interpreter
    interpreter = make_interpreter(spec.path, num_threads=threads)
    given, wanted = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    tensor = _fixed_tensor(given["shape"], given["dtype"])

    def invoke(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(given["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(wanted["index"]).reshape(-1)
    return Loaded(lambda pixels: tensor, invoke, tuple(given["shape"][1:3]))


def _open_keras(spec: Spec, threads: int) -> Loaded:
    # TF sizes its thread pools once per process: the caller sets them (set_tf_threads).
    from build import float_model
    from build.keras_env import tf
    model, card = float_model.load(spec.path)
    function, _ = float_model.logits_function(model)
    return Loaded(lambda pixels: tf.constant(_normalized(pixels)),
                  lambda x: function(x).numpy().reshape(-1), tuple(card["input_size"]))


def set_tf_threads(threads: int) -> None:
    from build.keras_env import tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _open_onnxruntime(spec: Spec, threads: int) -> Loaded:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(spec.path, options, providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    fixed = {name: _fixed_tensor(shape)} if spec.kind.endswith("_tensor") else None
    return Loaded(lambda pixels: fixed or {name: _normalized(pixels)},
                  lambda feed: session.run(None, feed)[0].reshape(-1), tuple(shape[1:3]))


def _open_openvino(spec: Spec, threads: int) -> Loaded:
    import openvino as ov
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1, **spec.options}
    compiled = ov.Core().compile_model(spec.path, "CPU", config)
    shape = list(compiled.input(0).get_shape())
    request = compiled.create_infer_request()
    fixed = _fixed_tensor(shape) if spec.kind.endswith("_tensor") else None
    return Loaded((lambda pixels: fixed) if fixed is not None else _normalized,
                  lambda x: request.infer([x])[compiled.output(0)].reshape(-1),
                  (int(shape[1]), int(shape[2])))


_OPENERS = {"tflite": _open_tflite, "tflite_tensor": _open_tflite_tensor,
            "keras": _open_keras, "onnxruntime": _open_onnxruntime,
            "onnxruntime_tensor": _open_onnxruntime, "openvino": _open_openvino,
            "openvino_tensor": _open_openvino}


def open_candidate(spec: Spec, threads: int) -> Loaded:
    if spec.kind not in _OPENERS:
        raise ValueError(f"Unknown candidate kind {spec.kind!r}; one of "
                         f"{', '.join(_OPENERS)}.")
    return _OPENERS[spec.kind](spec, threads)
