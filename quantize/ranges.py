"""A quantization range for each activation, chosen by the error it causes.

Calibration records each tensor's min and max; one rare large value then stretches the
range, and every other value of that tensor is rounded to coarser steps. The methods:

- `minmax`: the calibration's own range (what the converter does);
- `percentile`: the 0.001 % tails cut off;
- `mse`: the range that minimises the expected squared error of the tensor's values over
  the calibration images: rounding noise (step^2 / 12) inside it, the clipping error
  outside. It searches ranges shrunk from min-max towards zero.

The recipe (quantize/recipe.py) measures percentile and MSE on the model's output and
keeps the better (min-max, fitted to the very images it would be scored on, is kept for
the converter's baseline); the report says what each step bought.
"""
from __future__ import annotations

import numpy as np

from quantize.activation_stats import TensorStats

METHODS = ("minmax", "percentile", "mse")
LEVELS = 255            # steps of an 8-bit range
# The share of values the percentile method lets clip. Measured on the reference model
# (flips against float on 3,925 validation images, after bias correction): a tail of 1e-3
# flips 235, 1e-4 88; tails from 2e-6 to 3e-5 flip 61-71, and 1e-5 (61) has the KL
# divergence of mse (70 flips): the same model within the noise of near-ties. Min-max: 130.
PERCENTILE_TAIL = 1e-5
SHRINK = np.linspace(0.05, 1.0, 96)  # the fractions of the min-max range mse tries


def expected_error(stats: TensorStats, low: float, high: float) -> float:
    """Mean squared quantization error of the histogrammed values in [low, high]."""
    edges = stats.edges
    centres = (edges[:-1] + edges[1:]) / 2
    step = max(high - low, 1e-12) / LEVELS
    clipped = np.clip(centres, low, high)
    error = np.where(centres == clipped, step * step / 12, (centres - clipped) ** 2)
    return float(np.sum(stats.counts * error) / max(stats.counts.sum(), 1))


def mse_range(stats: TensorStats) -> tuple[float, float]:
    candidates = [(stats.low * f, stats.high * f) for f in SHRINK]
    errors = [expected_error(stats, *c) for c in candidates]
    return candidates[int(np.argmin(errors))]


def percentile_range(stats: TensorStats) -> tuple[float, float]:
    cumulative = np.cumsum(stats.counts) / max(stats.counts.sum(), 1)
    edges = stats.edges
    low = edges[int(np.searchsorted(cumulative, PERCENTILE_TAIL))]
    high = edges[int(np.searchsorted(cumulative, 1 - PERCENTILE_TAIL)) + 1]
    return (min(float(low), 0.0) if stats.low < 0 else stats.low,
            max(float(high), 1e-6))


def choose(stats: dict[str, TensorStats], method: str,
           keep: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """(min, max) per tensor by `method`; tensors in `keep` (the input) keep min-max."""
    if method not in METHODS:
        raise ValueError(f"Unknown range method {method!r}; choose from {', '.join(METHODS)}.")
    chosen = {}
    for name, s in stats.items():
        if method == "minmax" or name in keep or s.counts.sum() == 0:
            chosen[name] = (s.low, s.high)
        elif method == "mse":
            chosen[name] = mse_range(s)
        else:
            chosen[name] = percentile_range(s)
    return chosen


def answer_range(logits: np.ndarray, top_k: int = 5, top_quantile: float = 0.99
                 ) -> tuple[float, float]:
    """The range of an 8-bit logits output that spends its steps on what decides the
    answer: from the lowest k-th best logit of the calibration images (or 0) to the 99th
    percentile of their highest logits. Two classes within one step tie, so the narrower
    the range the fewer ties. A logit below it clips to the bottom, where no calibration
    image's top k was; a highest logit above it saturates, and stays the answer unless
    its runner-up saturates too. The highest logit itself is at the mercy of one image:
    on the reference model 67.8 for 200 validation images, 33.7 for 200 calibration
    images; their 99th percentiles 20.4 and 19.8."""
    k = min(top_k, logits.shape[1])
    ordered = -np.sort(-logits, axis=1)
    high = float(np.quantile(ordered[:, 0], top_quantile))
    return min(float(ordered[:, k - 1].min()), 0.0), max(high, 1e-6)
