"""The accuracy-first int8: post-training quantization that answers like the float model.

Same calibration images, no training. From one calibration pass of the variant's graph
(quantize/calibrated.py) it takes these steps, each measured on the held-out images
against the float model so the report says what each bought:

1. `converter`: the converter's own full-integer quantization of the same graph (the
   int8 graph takes raw pixels, int8 = pixel - 128 at scale 1: exact, where [-1, 1] at
   int8 puts two pixel values on one code);
2. `float logits`: the logits layer in float and a float output: no 8-bit cap on the
   largest logit, no two classes tied on one output step (under 0.1 % of the
   multiply-adds);
3. `equalization`: where a ReLU output or an Inception block's concatenation is read
   only by convolutions, its channels' scales move into the weights that read it, so one
   int8 range fits every channel and every branch of a block (quantize/equalization.py;
   the graph is calibrated again);
4. `ranges`: each activation's range chosen by its quantization error
   (quantize/ranges.py); the method (percentile or MSE) whose output is closest to float
   on the calibration and held-out images (lowest KL divergence of the softmax) is kept;
5. `weight ranges`: each output channel's int8 weight scale chosen by its rounding error
   (quantize/weight_ranges.py), not the converter's largest weight;
6. `weight rounding`: on those scales, each convolution's weights rounded by GPTQ, so that
   rounding errors cancel on the inputs the layer sees (quantize/weight_rounding.py);
7. `bias correction` of every int8 convolution, with each tap's own mean input where
   GPTQ's pass measured it (quantize/bias_correction.py);
8. `logits layer: int8 weights`: the float logits layer's weights stored as int8 (rounded
   as steps 5 and 6 round the convolutions'), its input quantized per image by the
   interpreter and its output still float (quantize/logits_weights.py): at 1000 classes a
   quarter smaller and a little faster.

None of them costs latency: the CPU file (`cpu`) is the same graph op for op. What does
(the first layers in float, `int8-fallback`) is made from that file by
quantize/fallback.py.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from build import float_model
from quantize import (activation_stats, bias_correction, calibrated, drift, equalization,
                      logits_weights, ranges, weight_ranges, weight_rounding)
from quantize.variants import Variant, graph_for, graph_inputs, representative_dataset
from runtime.classify import Classifier
from runtime import tflite_graph as tg

# Calibration images whose activations are histogrammed and equalized (all of them at the
# default CALIB_SAMPLES): on the reference model, three subsets of 64 of the same 200
# images gave 41, 54 and 38 flips on the val split; all 200, 41.
STATS_IMAGES = 200

# What `auto` chooses between. Min-max is not a candidate: its ranges are the calibration
# images' own extremes, so scored on those images it never clips and looks better than it
# is. On the reference model with four calibration samples, auto among all three flipped
# 41, 37, 57 and 41 val answers (min-max chosen for the 57), among these two 41, 37, 45
# and 41.
AUTO_METHODS = ("percentile", "mse")


@dataclass
class Recipe:
    float_logits: bool = True
    equalization: bool = True
    range_method: str = "auto"      # one of ranges.METHODS, or auto: the best measured
    weight_ranges: bool = True      # per-channel weight scales by MSE, not max-abs
    weight_rounding: bool = True    # GPTQ on those scales, not round-to-nearest
    bias_correction: bool = True
    int8_logits_weights: bool = True  # the float logits layer's weights as int8


@dataclass
class Int8Model:
    cpu: bytes                      # float logits: for CPUs
    integer: bytes                  # all-integer: Edge TPU and integer-only accelerators
    calibrated: bytes               # the calibrated float graph with the chosen ranges
    steps: list[dict] = field(default_factory=list)  # through `cpu`
    range_method: str = "minmax"


def held_out_drift(model: bytes, pixels: np.ndarray, reference: np.ndarray,
                   num_threads: int | None = None) -> dict:
    """Agreement and SQNR of a graph in memory against the float logits."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "candidate.tflite"
        path.write_bytes(model)
        logits = drift.tflite_logits(Classifier(path, num_threads=num_threads), pixels)
    result = drift.compare(reference, logits)
    return {"top1_agreement": result["top1_agreement"], "sqnr_db": result["sqnr_db"],
            "kl": drift.kl_divergence(reference, logits),
            "gap_change": drift.gap_change(reference, logits),
            "flips": len(result["flipped"]), "images": result["images"]}


def closeness(model: bytes, pixels: np.ndarray, reference: np.ndarray,
              num_threads: int | None = None) -> tuple[float, float]:
    """How close a candidate file answers to float, lowest first: the KL divergence of its
    softmax, then agreement (a few hundred images are too coarse to rank by agreement
    alone, and SQNR favours min-max ranges that flip more answers)."""
    score = held_out_drift(model, pixels, reference, num_threads)
    return score["kl"], -score["top1_agreement"]


def build(model, variant: Variant, calibration: np.ndarray, held_out: np.ndarray,
          reference: np.ndarray, recipe: Recipe = Recipe(), num_threads: int | None = None,
          calibration_reference: np.ndarray | None = None) -> Int8Model:
    """The accuracy-first int8 (or uint8) graphs of `model`, with what each step bought.
    `reference`, `calibration_reference`: the float logits on the held-out and the
    calibration images (the latter computed here when not given)."""
    io_type = np.dtype(variant.integer_io).type
    steps = _Steps(held_out, reference, num_threads)
    calibrated_graph = _calibrated(model, variant, calibration, recipe, io_type, steps)
    quantize = _quantizer(calibrated_graph, io_type, recipe)
    stats = activation_stats.collect(
        calibrated_graph, graph_inputs(calibration[:STATS_IMAGES], variant), num_threads or 1)
    fix = _corrections(calibrated_graph, calibration, variant, recipe, stats, num_threads or 1)
    if calibration_reference is None:
        calibration_reference = float_model.keras_logits(model, calibration)
    # Choices are made on the calibration images too: three hundred images rank the range
    # methods as the validation split does where the hundred held out alone do not.
    choice_pixels = np.concatenate([calibration, held_out])
    choice_reference = np.concatenate([calibration_reference, reference])
    method, ranged, cpu = _choose_ranges(calibrated_graph, stats, recipe, quantize, fix,
                                         choice_pixels, choice_reference, num_threads)
    steps.measure(f"ranges ({method})", cpu)
    cpu = fix.measured(cpu, ranged, steps)
    integer = _integer_graph(ranged, calibration_reference, io_type, fix)

    if recipe.float_logits and recipe.int8_logits_weights:  # step 8
        cpu = logits_weights.int8_weights(cpu, ranged, stats, fix.scales, fix.codes)
        steps.measure("logits layer: int8 weights", cpu)
    return Int8Model(cpu, integer, ranged, steps.rows, method)


@dataclass
class _Steps:
    """The recipe's table: each step's model scored on the held-out images."""
    held_out: np.ndarray
    reference: np.ndarray
    num_threads: int | None
    rows: list[dict] = field(default_factory=list)

    def score(self, candidate: bytes) -> dict:
        return held_out_drift(candidate, self.held_out, self.reference, self.num_threads)

    def measure(self, step: str, candidate: bytes, **extra) -> None:
        self.rows.append({"step": step, **self.score(candidate), **extra})


def _quantizer(calibrated_graph: bytes, io_type, recipe: Recipe):
    """quantize(graph, extra float nodes): the recipe's quantization of a graph calibrated
    as `calibrated_graph` (its logits layer float when the recipe says so)."""
    logits = calibrated.logits_nodes(calibrated_graph) if recipe.float_logits else []

    def quantize(source: bytes, extra_float: Sequence[str] = ()) -> bytes:
        return calibrated.quantize(source, io_type, [*logits, *extra_float],
                                   float_output=recipe.float_logits)
    return quantize


def _calibrated(model, variant: Variant, calibration: np.ndarray, recipe: Recipe, io_type,
                steps: _Steps) -> bytes:
    """Steps 1-3: the calibrated graph the later steps start from (equalized when the
    recipe says so), each step's model measured on the way."""
    representative = representative_dataset(calibration, variant)
    graph = calibrated.calibrate(graph_for(model, variant), variant, representative)
    steps.measure("converter", calibrated.quantize(graph, io_type))
    if recipe.float_logits:
        steps.measure("float logits", _quantizer(graph, io_type, recipe)(graph))
    if recipe.equalization:
        equalized, count = equalization.equalize(model, calibration[:STATS_IMAGES])
        graph = calibrated.calibrate(graph_for(equalized, variant), variant, representative)
        steps.measure(f"equalization ({count} tensors)", _quantizer(graph, io_type, recipe)(graph))
    return graph


@dataclass
class _Corrections:
    """Steps 5-7, weight ranges, weight rounding and bias correction, as every graph the
    recipe ships (or tries) gets them after the converter has quantized it."""
    scales: dict[str, np.ndarray]   # per-channel weight scales; {}: the converter's
    stats: dict
    bias_correction: bool
    codes: dict[str, np.ndarray] | None = None  # GPTQ's rounding; None: to nearest
    mse_scales: bool = True
    tap_means: dict[str, np.ndarray] | None = None  # each tap's mean input, from GPTQ's pass

    def weighted(self, quantized: bytes, ranged: bytes, gptq: bool = True) -> bytes:
        if not self.scales:
            return quantized
        return weight_ranges.apply(quantized, ranged, self.scales,
                                   self.codes if gptq else None)

    def bias_corrected(self, quantized: bytes, ranged: bytes) -> tuple[bytes, int]:
        """With each tap's own mean where GPTQ's pass measured it: the channel mean is
        wrong at taps that read padding, where GPTQ may move a weight far."""
        if not self.bias_correction:
            return quantized, 0
        corrected, info = bias_correction.correct(quantized, ranged, self.stats,
                                                  self.tap_means)
        return corrected, info["layers"]

    def __call__(self, quantized: bytes, ranged: bytes) -> bytes:
        return self.bias_corrected(self.weighted(quantized, ranged), ranged)[0]

    def measured(self, quantized: bytes, ranged: bytes, steps: _Steps) -> bytes:
        """The same steps, each measured."""
        if self.scales and self.mse_scales:
            steps.measure("weight ranges (MSE)", self.weighted(quantized, ranged, gptq=False))
        quantized = self.weighted(quantized, ranged)
        if self.scales and self.codes is not None:
            steps.measure("weight rounding (GPTQ)", quantized)
        quantized, corrected = self.bias_corrected(quantized, ranged)
        if corrected:
            steps.measure(f"bias correction ({corrected} layers)", quantized)
        return quantized


def _corrections(calibrated_graph: bytes, calibration: np.ndarray, variant: Variant,
                 recipe: Recipe, stats: dict, num_threads: int) -> _Corrections:
    """Steps 5-7 as the recipe asks for them: scales and GPTQ codes from `calibrated_graph`
    and its inputs on the calibration images (statistics: `stats`)."""
    rounding = recipe.weight_rounding
    scales = weight_ranges.choose(calibrated_graph, mse=recipe.weight_ranges) \
        if recipe.weight_ranges or rounding else {}
    codes, tap_means = None, None
    if rounding:
        inputs = weight_rounding.input_correlations(
            calibrated_graph, graph_inputs(calibration[:STATS_IMAGES], variant), num_threads)
        codes = weight_rounding.rounded(calibrated_graph, scales, inputs)
        tap_means = {name: correlation.mean() for name, correlation in inputs.items()}
    return _Corrections(scales, stats, recipe.bias_correction, codes, recipe.weight_ranges,
                        tap_means)


def _integer_graph(ranged: bytes, calibration_reference: np.ndarray, io_type,
                   fix: _Corrections) -> bytes:
    """The all-integer graph (Edge TPU, integer-only accelerators). Its 8-bit logits get
    their steps spent on the classes that decide the answer (fewer ties between the two
    best)."""
    answer = ranges.answer_range(calibration_reference)
    integer_ranged = calibrated.with_ranges(
        ranged, {name: answer for name in calibrated.logits_nodes(ranged)})
    return fix(calibrated.quantize(integer_ranged, io_type), integer_ranged)


def _choose_ranges(calibrated_graph: bytes, stats, recipe: Recipe, quantize, correct,
                   pixels: np.ndarray, reference: np.ndarray, num_threads
                   ) -> tuple[str, bytes, bytes]:
    """The range method whose model, bias-corrected as it will ship, answers closest to
    float on `pixels` (`closeness`): (method, the calibrated graph with its ranges, that
    graph quantized)."""
    graph = tg.load(calibrated_graph).subgraphs[0]
    inputs = tuple(tg.tensor_name(graph.tensors[i]) for i in graph.inputs)
    methods = AUTO_METHODS if recipe.range_method == "auto" else (recipe.range_method,)
    best = None
    for method in methods:
        ranged = calibrated.with_ranges(calibrated_graph,
                                        ranges.choose(stats, method, keep=inputs))
        quantized = quantize(ranged)
        if len(methods) == 1:
            return method, ranged, quantized
        key = closeness(correct(quantized, ranged), pixels, reference, num_threads)
        if best is None or key < best[0]:
            best = (key, method, ranged, quantized)
    return best[1:]
