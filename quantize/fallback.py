"""Selective float fallback: the first layers of the network back to float, within a
budget of multiply-adds, as far as each buys a smaller error.

Where the int8's error is decides which layers. Its 8-bit activations carry most of it
(on the reference model four fifths of the squared change of the top-two gap), and of
those the stem's most: the first, high-resolution activations hold many values, each
rounded. Weighted by the float model's gradient of the top-two gap, the first three
carry about a third of the rounding error (benchmarks/imagenette.md). An activation
leaves the int8 graph only where the op that writes it and every op that reads it are
float, so the candidates are the network's prefixes: every op up to the k-th weighted
one in float (a DEQUANTIZE of the exact int8 pixels, float ops, one QUANTIZE after).
A layer put back in float on its own, between int8 neighbours (the quantization
debugger's worst, as before), keeps the rounding of its input and of its output and
removes only its weights' error: on the reference model it added no layer.

Each prefix is measured on the calibration and held-out images by the median change of
the float model's top-two gap (quantize/drift.py: what flips near-ties); the one with
the lowest is kept if it is lower than the all-int8 graph's. A float multiply-add costs
about three int8 ones on a CPU with int8 dot products (fewer on one without), so the
default budget, 6 % of the multiply-adds, keeps the file within about a tenth of the
int8's latency at 299x299 (README); the report lists each float layer's multiply-adds,
`make bench` measures the latency.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from quantize import layer_errors
from runtime import tflite_graph as tg

_WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def multiply_adds(calibrated: bytes) -> dict[str, int]:
    """Multiply-adds of each weighted op, by its output tensor name, in graph order."""
    m = tg.load(calibrated)
    graph = m.subgraphs[0]
    found = {}
    for op in graph.operators:
        if tg.op_name(m, op) not in _WEIGHTED:
            continue
        out = graph.tensors[op.outputs[0]]
        weights = graph.tensors[op.inputs[1]].shape
        per_output = int(np.prod(weights)) // int(out.shape[-1]) * \
            (weights[-1] if tg.op_name(m, op) == "DEPTHWISE_CONV_2D" else 1)
        found[tg.tensor_name(out)] = int(np.prod(out.shape)) * per_output
    return found


def prefixes(calibrated: bytes) -> list[tuple[str, list[str]]]:
    """For each weighted op in graph order: its output name, and the output names of every
    op up to and including it (the pools between the stem's convolutions too, so no
    activation inside the prefix is rounded)."""
    m = tg.load(calibrated)
    graph = m.subgraphs[0]
    names: list[str] = []
    found = []
    for op in graph.operators:
        names.append(tg.tensor_name(graph.tensors[op.outputs[0]]))
        if tg.op_name(m, op) in _WEIGHTED:
            found.append((names[-1], list(names)))
    return found


def search(calibrated: bytes, quantize_with: Callable[[list[str]], bytes], start: bytes,
           recipe, score: Callable[[bytes], dict]) -> tuple[bytes, list[dict]]:
    """(model, its float layers): the prefix of `calibrated` with the lowest measured
    top-two gap change (`score(model)["gap_change"]`), within `recipe.fallback_budget`
    (share of the multiply-adds) and `recipe.fallback_max_layers`; `start` and no layer
    when none is lower than its own."""
    macs = multiply_adds(calibrated)
    budget = recipe.fallback_budget * sum(macs.values())
    best, best_error, kept = start, score(start)["gap_change"], []
    tried: list[dict] = []
    spent = 0
    for layer, nodes in prefixes(calibrated)[:recipe.fallback_max_layers]:
        spent += macs[layer]
        if spent > budget:
            break
        candidate = quantize_with(nodes)
        tried.append({"layer": layer_errors.layer_name(layer), "node": layer,
                      "multiply_adds": macs[layer], **score(candidate)})
        if tried[-1]["gap_change"] < best_error:
            best, best_error, kept = candidate, tried[-1]["gap_change"], list(tried)
    return best, kept
