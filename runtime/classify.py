"""Classify images with any image-classifier `.tflite`, reading what the model says
about itself (input size, dtype, quantization) instead of assuming it.

Inputs: float models get the project's preprocessing ([-1, 1]); integer models get it
quantized with their own scale and zero point, except models whose input quantization
spans pixel values (our `uint8` variant: scale 1, zero point 0), which get the resized
pixels as they are. Outputs are dequantized; softmax is applied unless the model already
outputs probabilities.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from runtime import preprocessing
from runtime import manifest
from runtime.fileio import read_labels_file
from runtime.interpreter import RuntimeLoadError, check_model_file, make_interpreter

LABELS_DIR = Path(__file__).resolve().parent / "labels"
_INTEGER_TYPES = (np.uint8, np.int8, np.int16)


class Class(NamedTuple):
    """One top-k entry, as pycoral's classify adapter returns it."""
    id: int
    score: float
    label: str | None = None


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int

    def quantize(self, real: np.ndarray, dtype) -> np.ndarray:
        info = np.iinfo(dtype)
        q = np.round(real / self.scale + self.zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)


def read_labels(path: str | os.PathLike | None, num_classes: int,
                model_path: Path | None = None) -> list[str] | None:
    """Labels from a file (one per line); else `labels.txt` beside the model (bundles);
    else ImageNet's shipped lists for 1000/1001 classes."""
    beside = model_path.parent / "labels.txt" if model_path is not None else None
    if path is None and beside is not None and beside.is_file():
        path = beside
    if path is None:
        shipped = LABELS_DIR / f"imagenet_{num_classes}.txt"
        return shipped.read_text().splitlines() if shipped.is_file() else None
    labels = read_labels_file(path)
    if len(labels) != num_classes:
        raise RuntimeLoadError(f"{path} has {len(labels)} labels but the model has "
                               f"{num_classes} classes; give the model's own labels file.")
    return labels


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int, labels: Sequence[str] | None = None) -> list[Class]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [Class(int(i), float(scores[i]), labels[i] if labels else None) for i in order]


class Classifier:
    """A loaded `.tflite` image classifier (batch 1, NHWC RGB input)."""

    def __init__(self, model_path: str | os.PathLike, labels: str | os.PathLike | None = None,
                 num_threads: int | None = None, edgetpu: bool | None = None,
                 device: str | None = None, kernels: str = "default"):
        self.model_path = check_model_file(model_path)
        self.verified = manifest.verify(self.model_path)
        # The interpreter's own default is one thread: use every core unless told otherwise.
        self.num_threads = num_threads or os.cpu_count() or 1
        self.interpreter = make_interpreter(model_path, num_threads=self.num_threads,
                                            edgetpu=edgetpu, device=device,
                                            kernels=kernels)
        self._input, self._output = self._classifier_tensors()
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.size = (int(self._input["shape"][1]), int(self._input["shape"][2]))
        self.num_classes = int(self._output["shape"][-1])
        self.input_quantization = self._quantization(self._input)
        self.output_quantization = self._quantization(self._output)
        self.feeds_pixels = self._feeds_pixels()
        self.labels = read_labels(labels, self.num_classes, self.model_path)

    def _classifier_tensors(self) -> tuple[dict, dict]:
        """The one image input and the one class-score output, or an error saying which
        contract (batch 1, fixed H x W x 3 image in, [1, classes] out) the model breaks."""
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        name = self.model_path.name
        image = list(_signature(inputs[0])) if len(inputs) == 1 else []
        if len(image) != 4 or image[0] not in (-1, 1) or image[3] != 3 or min(image[1:]) < 1:
            shapes = [list(_signature(i)) for i in inputs]
            raise RuntimeLoadError(f"{name} is not an image classifier: its input is {shapes}, "
                                   "not one [1, H, W, 3] image of fixed size.")
        dtype = np.dtype(inputs[0]["dtype"])
        if dtype != np.float32 and self._quantization(inputs[0]) is None:
            raise RuntimeLoadError(f"{name} is not an image classifier this runtime feeds: its "
                                   f"input is {dtype.name} without a quantization scale; it "
                                   "takes float32 or quantized 8/16-bit images.")
        shape = list(_signature(outputs[0])) if len(outputs) == 1 else []
        if len(outputs) != 1 or len(shape) not in (2, 4) or shape[0] not in (-1, 1) or \
                any(s != 1 for s in shape[1:-1]) or shape[-1] < 2 or \
                np.dtype(outputs[0]["dtype"]) not in (np.float32, *map(np.dtype, _INTEGER_TYPES)):
            shapes = [list(_signature(o)) for o in outputs]
            raise RuntimeLoadError(f"{name} is not an image classifier: its output is "
                                   f"{shapes}, not one [1, classes] score vector.")
        return inputs[0], outputs[0]

    @staticmethod
    def _quantization(detail) -> Quantization | None:
        scale, zero_point = detail["quantization"]
        if np.dtype(detail["dtype"]) not in map(np.dtype, _INTEGER_TYPES) or scale == 0:
            return None
        return Quantization(float(scale), int(zero_point))

    @property
    def output_ceiling(self) -> float | None:
        """The largest value an integer output can hold: larger logits are capped there."""
        q = self.output_quantization
        if q is None:
            return None
        return float(q.dequantize(np.array(np.iinfo(self.output_dtype).max)))

    def _feeds_pixels(self) -> bool:
        """True when the input quantization's real range is pixel values, not [-1, 1]."""
        q = self.input_quantization
        if q is None:
            return False
        top = q.scale * (np.iinfo(self.input_dtype).max - q.zero_point)
        return top > 2.0

    def input_tensor(self, pixels: np.ndarray) -> np.ndarray:
        """Resized uint8 pixels (HxWx3) to the model's input tensor [1, H, W, 3]."""
        if self.feeds_pixels and self.input_dtype == np.uint8 and \
                self.input_quantization == Quantization(1.0, 0):
            tensor = pixels  # exact: the model's quantization is the identity on pixels
        elif self.feeds_pixels:
            tensor = self.input_quantization.quantize(pixels.astype(np.float32),
                                                      self.input_dtype)
        elif self.input_quantization is not None:
            tensor = self.input_quantization.quantize(preprocessing.normalize(pixels),
                                                      self.input_dtype)
        else:
            tensor = preprocessing.normalize(pixels).astype(self.input_dtype)
        return tensor[np.newaxis]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """One invoke on a prepared input tensor; returns float32 outputs (dequantized)."""
        self.interpreter.set_tensor(self._input["index"], tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._output["index"]).reshape(-1)
        if self.output_quantization is not None:
            return self.output_quantization.dequantize(raw)
        return raw.astype(np.float32)

    def outputs(self, image: preprocessing.ImageLike) -> np.ndarray:
        """The model's output vector for one image (logits for this project's models)."""
        return self.run(self.input_tensor(preprocessing.resize_pixels(image, self.size)))

    def classify(self, image: preprocessing.ImageLike, k: int = 5) -> list[Class]:
        scores = self.outputs(image)
        if not _looks_like_probabilities(scores):
            scores = softmax(scores)
        return top_k(scores, k, self.labels)

    def describe(self) -> dict:
        def q(quant):
            return None if quant is None else [quant.scale, quant.zero_point]
        return {"model": str(self.model_path), "threads": self.num_threads,
                "input_size": list(self.size),
                "input_dtype": self.input_dtype.name, "input_quantization":
                q(self.input_quantization), "feeds_raw_pixels": self.feeds_pixels,
                "output_dtype": self.output_dtype.name,
                "output_quantization": q(self.output_quantization),
                "num_classes": self.num_classes}


def _signature(detail: dict) -> np.ndarray:
    """A tensor's declared shape, -1 where it is dynamic (a dynamic batch runs as 1)."""
    return [int(s) for s in detail.get("shape_signature", detail["shape"])]


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    return bool(np.all(scores >= 0) and abs(float(np.sum(scores)) - 1.0) < 0.05)
