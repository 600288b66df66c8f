"""How far a quantized model's outputs are from the float model's, from actual outputs.

Every figure is computed from logits the models produced on the same images: a model
that computes something else shows up here, whatever its file looks like.
"""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
from tqdm import tqdm

from build.keras_env import keras
from runtime import preprocessing
from runtime.classify import Classifier


def keras_logits(model: keras.Model, pixels: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The float reference, on the same preprocessing as the device."""
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = preprocessing.normalize(pixels[start:start + batch_size])
        out = model(batch, training=False)
        outputs.append(np.asarray(out[0] if isinstance(out, list) else out))
    return np.concatenate(outputs).astype(np.float32)


def tflite_logits(classifier: Classifier, pixels: np.ndarray, desc: str = "") -> np.ndarray:
    """The model's dequantized outputs, one device-style invoke per image."""
    rows = [classifier.run(classifier.input_tensor(p))
            for p in tqdm(pixels, desc=desc or "Running", unit="img", file=sys.stderr,
                          disable=len(pixels) < 50)]
    return np.stack(rows)


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def accuracy(logits: np.ndarray, labels: Sequence[int], k: int) -> float:
    labels = np.asarray(labels)[:, None]
    return float(np.mean(np.any(top_k_indices(logits, k) == labels, axis=1)))


def compare(reference: np.ndarray, candidate: np.ndarray,
            labels: Sequence[int] | None = None) -> dict:
    """Agreement and error of `candidate` logits against `reference` logits (N x classes)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"Output shapes differ: {reference.shape} vs {candidate.shape}")
    k = min(5, reference.shape[1])
    top_ref, top_cand = top_k_indices(reference, k), top_k_indices(candidate, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand)]
    ref64, cand64 = reference.astype(np.float64), candidate.astype(np.float64)
    noise = ref64 - cand64
    dot = np.sum(ref64 * cand64, axis=1)
    norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(cand64, axis=1)
    cosine = np.where(norms > 0, dot / np.maximum(norms, 1e-30), 1.0)
    noise_power = float(np.sum(noise ** 2))
    result = {
        "images": int(len(reference)),
        "top1_agreement": float(np.mean(top_ref[:, 0] == top_cand[:, 0])),
        "top5_overlap": float(np.mean(overlap)),
        "cosine_similarity": float(np.mean(cosine)),
        "sqnr_db": float("inf") if noise_power == 0 else
        float(10 * np.log10(np.sum(ref64 ** 2) / noise_power)),
        "max_abs_error": float(np.max(np.abs(noise))),
        "flipped": [int(i) for i in np.nonzero(top_ref[:, 0] != top_cand[:, 0])[0]],
    }
    if labels is not None:
        for name, logits in (("float", reference), ("quantized", candidate)):
            result[f"{name}_top1"] = accuracy(logits, labels, 1)
            result[f"{name}_top5"] = accuracy(logits, labels, k)
        result["top1_change_points"] = 100 * (result["quantized_top1"] - result["float_top1"])
        result["top5_change_points"] = 100 * (result["quantized_top5"] - result["float_top5"])
    return result
