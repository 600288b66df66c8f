"""What every activation of the float graph looks like on the calibration images.

The calibrated graph (quantize/calibrated.py) runs on LiteRT's built-in kernels with all
intermediate tensors kept (XNNPACK would fuse them away), and for each activation that
calibration gave a range we keep a histogram over that range (to choose a better range,
quantize/ranges.py) and its per-channel mean (for bias correction). Only sums are kept,
so memory does not grow with the number of images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantize.calibrated import activation_ranges
from runtime.interpreter import interpreter_module

BINS = 2048


@dataclass
class TensorStats:
    low: float                      # the calibration range the histogram spans
    high: float
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    channel_sum: np.ndarray | None = None
    values_per_channel: int = 0

    def add(self, values: np.ndarray) -> None:
        flat = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values[None]
        span = max(self.high - self.low, 1e-12)
        index = np.clip(((values.ravel() - self.low) / span * BINS).astype(np.int64),
                        0, BINS - 1)
        self.counts += np.bincount(index, minlength=BINS)
        sums = flat.sum(axis=0, dtype=np.float64)
        self.channel_sum = sums if self.channel_sum is None else self.channel_sum + sums
        self.values_per_channel += flat.shape[0]

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, BINS + 1)

    @property
    def channel_mean(self) -> np.ndarray:
        return self.channel_sum / max(self.values_per_channel, 1)


def inspecting_interpreter(model: bytes, num_threads: int = 1):
    """An interpreter, tensors allocated, on LiteRT's built-in kernels with every
    intermediate tensor kept for reading (XNNPACK would fuse them away)."""
    module = interpreter_module()
    interpreter = module.Interpreter(
        model_content=model, num_threads=num_threads,
        experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def collect(calibrated: bytes, samples: np.ndarray, num_threads: int = 1
            ) -> dict[str, TensorStats]:
    """Statistics of every calibrated activation over `samples` (N x H x W x C inputs)."""
    interpreter = inspecting_interpreter(calibrated, num_threads)
    ranges = activation_ranges(calibrated)
    tensors = {d["name"]: d["index"] for d in interpreter.get_tensor_details()
               if d["name"] in ranges}
    stats = {name: TensorStats(*ranges[name]) for name in tensors}
    input_index = interpreter.get_input_details()[0]["index"]
    for sample in samples:
        interpreter.set_tensor(input_index, sample[np.newaxis].astype(np.float32))
        interpreter.invoke()
        for name, index in tensors.items():
            stats[name].add(interpreter.get_tensor(index))
    return stats
