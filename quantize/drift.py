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


Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int) -> list[float]:
    """95 % Wilson score interval of a proportion (sound near 0 % and 100 %)."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def paired_change_interval(gained: int, lost: int, n: int) -> list[float]:
    """95 % interval of a paired accuracy change (points): images the quantized model
    got right and float wrong (`gained`), and the reverse (`lost`)."""
    if n == 0:
        return [0.0, 0.0]
    d = (gained - lost) / n
    var = max((gained + lost) / n - d * d, 0.0) / n
    return [float(100 * (d - Z95 * np.sqrt(var))), float(100 * (d + Z95 * np.sqrt(var)))]


def flip_kind(candidate_row: np.ndarray, saturation: float | None) -> str:
    """Why a top-1 flipped: `tie` (the candidate's two best classes on the same value,
    one 8-bit output step), `saturated` (its best logit at the output's largest
    representable value), else `other`."""
    top_two = np.sort(candidate_row)[-2:]
    if len(top_two) == 2 and top_two[0] == top_two[1]:
        return "tie"
    if saturation is not None and top_two[-1] >= saturation:
        return "saturated"
    return "other"


class DriftAccumulator:
    """Running drift figures of candidate logits against reference logits.

    Rows arrive in chunks and only sums are kept (plus the indices that flipped), so
    memory does not grow with the number of images.
    """

    def __init__(self, with_labels: bool = False, saturation: float | None = None):
        self.n = 0
        self.saturation = saturation  # the candidate output's largest value, if capped
        self.kinds = {"tie": 0, "saturated": 0, "other": 0}
        self.gained = self.lost = 0
        self.agree = 0
        self.overlap = 0.0
        self.cosine = 0.0
        self.signal = 0.0
        self.noise = 0.0
        self.max_abs = 0.0
        self.flipped: list[int] = []
        self.with_labels = with_labels
        self.correct = {"float_top1": 0, "float_top5": 0, "quantized_top1": 0,
                        "quantized_top5": 0}
        self.k = 5

    def add(self, reference: np.ndarray, candidate: np.ndarray,
            labels: Sequence[int] | None = None) -> None:
        if reference.shape != candidate.shape:
            raise ValueError(f"Output shapes differ: {reference.shape} vs {candidate.shape}")
        self.k = min(5, reference.shape[1])
        top_ref, top_cand = top_k_indices(reference, self.k), top_k_indices(candidate, self.k)
        ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
        noise = ref - cand
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
        cosine = np.where(norms > 0, np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-30), 1.0)
        same = top_ref[:, 0] == top_cand[:, 0]
        self.flipped += [self.n + int(i) for i in np.nonzero(~same)[0]]
        for i in np.nonzero(~same)[0]:
            self.kinds[flip_kind(candidate[i], self.saturation)] += 1
        self.n += len(ref)
        self.agree += int(np.sum(same))
        self.overlap += sum(len(set(a) & set(b)) / self.k for a, b in zip(top_ref, top_cand))
        self.cosine += float(np.sum(cosine))
        self.signal += float(np.sum(ref ** 2))
        self.noise += float(np.sum(noise ** 2))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(noise))))
        if labels is not None:
            y = np.asarray(labels)[:, None]
            for name, top in (("float", top_ref), ("quantized", top_cand)):
                self.correct[f"{name}_top1"] += int(np.sum(top[:, :1] == y))
                self.correct[f"{name}_top5"] += int(np.sum(np.any(top == y, axis=1)))
            float_right, quant_right = top_ref[:, 0] == y[:, 0], top_cand[:, 0] == y[:, 0]
            self.gained += int(np.sum(quant_right & ~float_right))
            self.lost += int(np.sum(float_right & ~quant_right))

    def result(self) -> dict:
        n = max(self.n, 1)
        out = {
            "images": self.n,
            "top1_agreement": self.agree / n,
            "top5_overlap": self.overlap / n,
            "cosine_similarity": self.cosine / n,
            "sqnr_db": float("inf") if self.noise == 0 else
            float(10 * np.log10(self.signal / self.noise)),
            "max_abs_error": self.max_abs,
            "flipped": list(self.flipped),
            "flips": dict(self.kinds),
            "top1_agreement_ci95": wilson_interval(self.agree, self.n),
        }
        if self.with_labels:
            out.update({k: v / n for k, v in self.correct.items()})
            out["top1_change_points"] = 100 * (out["quantized_top1"] - out["float_top1"])
            out["top5_change_points"] = 100 * (out["quantized_top5"] - out["float_top5"])
            out["quantized_top1_ci95"] = wilson_interval(self.correct["quantized_top1"], self.n)
            out["quantized_top5_ci95"] = wilson_interval(self.correct["quantized_top5"], self.n)
            out["top1_change_ci95"] = paired_change_interval(self.gained, self.lost, self.n)
        return out


def compare(reference: np.ndarray, candidate: np.ndarray,
            labels: Sequence[int] | None = None, saturation: float | None = None) -> dict:
    """Agreement and error of `candidate` logits against `reference` logits (N x classes);
    `saturation`: the candidate's largest representable output (8-bit outputs)."""
    accumulator = DriftAccumulator(with_labels=labels is not None, saturation=saturation)
    accumulator.add(reference, candidate, labels)
    return accumulator.result()
