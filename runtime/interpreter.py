"""Find a TFLite interpreter and load models and the Edge TPU delegate, with clear errors.

`ai-edge-litert` is preferred; `tflite-runtime` serves 32-bit Raspberry Pi OS and older
Pythons. Never TensorFlow: the device does not have it.
"""
from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

from runtime.errors import InputError
from runtime.fileio import regular_file

# The Edge TPU runtime library per platform, as pycoral names it.
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib",
                   "Windows": "edgetpu.dll"}
TFLITE_MAGIC = b"TFL3"
MAX_MODEL_BYTES = 2**31  # a flatbuffer's offsets are 32-bit: no model is larger


class RuntimeLoadError(InputError):
    """A model, interpreter or delegate could not be loaded; the message says what to do."""


def interpreter_module():
    """The interpreter package in use: ai_edge_litert, else tflite_runtime."""
    try:
        from ai_edge_litert import interpreter
        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter
        return interpreter
    except ImportError:
        raise RuntimeLoadError(
            "No TFLite interpreter: pip install ai-edge-litert (64-bit OS, Python 3.9+), "
            "or tflite-runtime with numpy<2 on 32-bit Raspberry Pi OS.") from None


def interpreter_name() -> str:
    module = interpreter_module()
    return module.__name__.split(".")[0]


def check_model_file(model_path: str | os.PathLike) -> Path:
    """A missing, empty, truncated or non-TFLite file is caught before the interpreter."""
    path = Path(model_path)
    try:
        regular_file(path, "model file")
    except InputError as error:
        raise RuntimeLoadError(str(error)) from None
    if path.stat().st_size >= MAX_MODEL_BYTES:
        raise RuntimeLoadError(f"{path} is {path.stat().st_size:,} bytes: a TFLite model is "
                               "under 2 GiB, so this is not one; give a .tflite file.")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_MAGIC:
        raise RuntimeLoadError(f"{path} is not a TFLite model (no TFL3 identifier); give a "
                               ".tflite file.")
    return path


def load_edgetpu_delegate(device: str | None = None):
    """The Edge TPU delegate (`device`: None for any, or usb, usb:N, pci, pci:N)."""
    library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
    try:  # checked first: a failed load_delegate also prints a traceback when collected
        ctypes.CDLL(library)
    except OSError:
        raise RuntimeLoadError(
            f"Cannot load the Edge TPU delegate: {library} is not installed; install the Edge "
            "TPU runtime (Debian package libedgetpu1-std from Coral's package repository), "
            "or run the model without --edgetpu.") from None
    options = {"device": device} if device else {}
    try:
        return interpreter_module().load_delegate(library, options)
    except (ValueError, OSError) as error:
        raise RuntimeLoadError(
            f"Cannot load the Edge TPU delegate ({error}): {library} is installed but no Edge "
            f"TPU{' ' + device if device else ''} answered; plug the accelerator in (a USB 3 "
            "port) or check the device name (usb, usb:0, pci, pci:0).") from None


def is_edgetpu_model(model_path: str | os.PathLike, chunk: int = 1 << 20) -> bool:
    """Models compiled by edgetpu_compiler hold a custom op named edgetpu-custom-op (read
    in chunks: a large file costs no memory)."""
    marker = b"edgetpu-custom-op"
    tail = b""
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            if marker in tail + block:
                return True
            tail = block[-len(marker):]
    return False


def xnnpack_partitions(interpreter) -> int:
    """How many pieces XNNPACK runs the graph in: one DELEGATE node per piece, the ops it
    does not take left between them on LiteRT's built-in kernels (0: none delegated)."""
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


# Which CPU kernels the interpreter runs, as its options allow: `default` is XNNPACK for
# what it takes and LiteRT's built-in kernels for the rest; `xnnpack-latest` adds
# XNNPACK's newest operators; `builtin` leaves XNNPACK out (LiteRT's own optimized kernels,
# ruy for matrix products); `reference` is the slow reference code, bit-exact across CPUs.
KERNELS = ("default", "xnnpack-latest", "builtin", "reference")


def _kernel_options(module, kernels: str) -> dict:
    if kernels not in KERNELS:
        raise ValueError(f"Unknown kernels {kernels!r}; one of {', '.join(KERNELS)}.")
    resolver = {"builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}
    if kernels in resolver:
        return {"experimental_op_resolver_type":
                getattr(module.OpResolverType, resolver[kernels])}
    return {"experimental_default_delegate_latest_features": True} \
        if kernels == "xnnpack-latest" else {}


def make_interpreter(model_path: str | os.PathLike, num_threads: int | None = None,
                     edgetpu: bool | None = None, device: str | None = None,
                     kernels: str = "default"):
    """An allocated interpreter for `model_path`.

    `edgetpu=None` loads the delegate only for a model compiled for the Edge TPU.
    `kernels`: one of KERNELS.
    """
    path = check_model_file(model_path)
    module = interpreter_module()
    compiled = is_edgetpu_model(path)
    use_tpu = compiled if edgetpu is None else edgetpu
    delegates = [load_edgetpu_delegate(device)] if use_tpu else []
    kwargs = {"model_path": str(path), "num_threads": num_threads,
              "experimental_delegates": delegates or None,
              **_kernel_options(module, kernels)}
    try:
        interpreter = module.Interpreter(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        text = str(error)
        if compiled and not use_tpu or "edgetpu-custom-op" in text:
            raise RuntimeLoadError(
                f"{path.name} is compiled for the Edge TPU and needs its delegate; run with "
                "--edgetpu on a machine with a Coral device, or use the uncompiled model.") \
                from None
        if "Didn't find op for builtin opcode" in text or "version" in text.lower():
            raise RuntimeLoadError(
                f"{interpreter_name()} cannot run {path.name}: it uses an op version newer "
                "than this interpreter knows; install ai-edge-litert (pip install "
                "ai-edge-litert), or convert with an older TensorFlow.") from None
        raise RuntimeLoadError(f"Cannot load {path}: {text.strip().splitlines()[-1]}; the file "
                               "is damaged or not a TFLite model: copy or convert it again.") \
            from None
    return interpreter
