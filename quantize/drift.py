"""How far a quantized model's outputs are from the float model's, from actual outputs.

Every figure is computed from logits the models produced on the same images: a model
that computes something else shows up here, whatever its file looks like.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm import tqdm

from runtime.classify import Classifier


def tflite_logits(classifier: Classifier, pixels: np.ndarray, desc: str = "") -> np.ndarray:
    """The model's dequantized outputs, one device-style invoke per image."""
    rows = [classifier.run(classifier.input_tensor(p))
            for p in tqdm(pixels, desc=desc or "Running", unit="img", file=sys.stderr,
                          disable=len(pixels) < 50)]
    return np.stack(rows)


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL divergence of the candidate's softmax from the reference's (nats per image).

    Smooth where agreement is not: on 100 held-out images agreement moves in steps of a
    whole image, while this ranks quantization choices as the 3,925-image validation
    split's flips do (quantize/ranges.py has the figures)."""
    def log_softmax(logits: np.ndarray) -> np.ndarray:
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def gap_change(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The median change, over images, of the gap between the reference's two best logits.

    What flips a near-tie is the typical image's change of that gap, not the logits' RMS
    error (a few outlier images' on the reference model: benchmarks/imagenette.md)."""
    best = top_k_indices(reference, 2)
    error = candidate.astype(np.float64) - reference
    rows = np.arange(len(reference))
    return float(np.median(np.abs(error[rows, best[:, 0]] - error[rows, best[:, 1]])))


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


@dataclass(frozen=True)
class ImageDrift:
    """One image's share of the drift figures: what folds into a DriftAccumulator.

    Kept per image so that any split of the images (chunks in one process, workers of a
    Beam pipeline) folds back, in image order, into the same sums to the last bit."""
    agree: bool
    overlap: float                 # share of the top-k classes both models name
    cosine: float
    signal: float                  # sum of squared reference logits
    noise: float                   # sum of squared differences
    max_abs: float
    kind: str | None               # why the top-1 flipped (flip_kind), None if it agreed
    answer: int                    # the candidate's top-1 class
    float_answer: int
    float_hits: tuple[bool, bool] | None = None      # label in float's top-1, top-k
    quantized_hits: tuple[bool, bool] | None = None


def image_drift(reference: np.ndarray, candidate: np.ndarray,
                labels: Sequence[int] | None = None, saturation: float | None = None
                ) -> list[ImageDrift]:
    """Per-image drift of `candidate` logits against `reference` logits (N x classes)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"Output shapes differ: {reference.shape} vs {candidate.shape}")
    k = min(5, reference.shape[1])
    top_ref, top_cand = top_k_indices(reference, k), top_k_indices(candidate, k)
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    noise = ref - cand
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-30), 1.0)
    rows = []
    for i in range(len(ref)):
        agree = bool(top_ref[i, 0] == top_cand[i, 0])
        hits = None, None
        if labels is not None:
            hits = tuple((bool(top[i, 0] == labels[i]), bool(labels[i] in top[i]))
                         for top in (top_ref, top_cand))
        rows.append(ImageDrift(
            agree, len(set(top_ref[i]) & set(top_cand[i])) / k, float(cosine[i]),
            float(np.sum(ref[i] ** 2)), float(np.sum(noise[i] ** 2)),
            float(np.max(np.abs(noise[i]))),
            None if agree else flip_kind(candidate[i], saturation),
            int(top_cand[i, 0]), int(top_ref[i, 0]), *hits))
    return rows


class DriftAccumulator:
    """Running drift figures, folded from ImageDrift rows in image order.

    Only sums are kept (plus the indices that flipped), so memory does not grow with the
    number of images.
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

    def add(self, reference: np.ndarray, candidate: np.ndarray,
            labels: Sequence[int] | None = None) -> None:
        for row in image_drift(reference, candidate, labels, self.saturation):
            self.fold(row)

    def fold(self, row: ImageDrift) -> None:
        if not row.agree:
            self.flipped.append(self.n)
            self.kinds[row.kind] += 1
        self.n += 1
        self.agree += row.agree
        self.overlap += row.overlap
        self.cosine += row.cosine
        self.signal += row.signal
        self.noise += row.noise
        self.max_abs = max(self.max_abs, row.max_abs)
        if self.with_labels and row.float_hits is not None:
            for name, (top1, top5) in (("float", row.float_hits),
                                       ("quantized", row.quantized_hits)):
                self.correct[f"{name}_top1"] += top1
                self.correct[f"{name}_top5"] += top5
            self.gained += row.quantized_hits[0] and not row.float_hits[0]
            self.lost += row.float_hits[0] and not row.quantized_hits[0]

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
            # From the counts: a difference of two shares is not exact (3 of 300 lost would
            # be -1.0000000000000009 points, over a budget of 1).
            for k in ("top1", "top5"):
                out[f"{k}_change_points"] = 100 * (self.correct[f"quantized_{k}"] -
                                                   self.correct[f"float_{k}"]) / n
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
