"""Selective float fallback: the worst int8 layers back to float, until the model agrees.

Like NNCF's accuracy-control mode: the quantization debugger ranks the layers of the
int8 graph by their error (RMS over scale, quantize/layer_errors.py); the worst go back
to float one at a time (DEQUANTIZE, float op, QUANTIZE, all of which XNNPACK runs) until
the top-1 agreement with the float model on the held-out images reaches the target, or
the layer budget is spent. Each float layer runs its multiply-adds in float: the report
lists them per layer, `make bench` measures what they cost.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from quantize import layer_errors
from quantize.variants import Variant, graph_inputs
from runtime import tflite_graph as tg

_WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def multiply_adds(calibrated: bytes) -> dict[str, int]:
    """Multiply-adds of each weighted op, by its output tensor name."""
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


def search(ranged: bytes, quantize_with: Callable[[list[str]], bytes], start: bytes,
           start_score: dict, recipe, debug_pixels: np.ndarray, variant: Variant,
           score: Callable[[bytes], dict]) -> tuple[bytes, list[dict]]:
    """(model, float layers with their multiply-adds) reaching `recipe.fallback_target`."""
    inputs = graph_inputs(debug_pixels, variant)
    macs = multiply_adds(ranged)
    ranked = [row for row in layer_errors.worst_first(
        layer_errors.layer_statistics(ranged, inputs)) if row["node"] in macs]
    best, best_key, best_count = start, _key(start_score), 0
    tried: list[dict] = []
    for row in ranked[:recipe.fallback_max_layers]:
        if best_key[0] >= recipe.fallback_target:
            break
        tried.append({"layer": row["tensor"], "node": row["node"],
                      "rmse_over_scale": row["rmse_over_scale"],
                      "multiply_adds": macs[row["node"]]})
        candidate = quantize_with([entry["node"] for entry in tried])
        result = score(candidate)
        tried[-1].update(result)  # the whole model's agreement with this layer in float
        if _key(result) > best_key:
            best, best_key, best_count = candidate, _key(result), len(tried)
    return best, tried[:best_count]


def _key(result: dict) -> tuple[float, float]:
    return result["top1_agreement"], result["sqnr_db"]
