"""Selective float fallback: the first layers of an int8 file back to float, within a
budget of multiply-adds, as far as each buys a smaller error.

Where the int8's error is decides which layers. Its 8-bit activations carry most of it
(on the reference model four fifths of the squared change of the top-two gap), and of
those the stem's most: the first, high-resolution activations hold many values, each
rounded. Weighted by the float model's gradient of the top-two gap, the first three
carry about a third of the rounding error (benchmarks/imagenette.md). An activation
leaves the int8 graph only where the op that writes it and every op that reads it are
float, so the candidates are the network's first layers: the chain of ops from the
input up to the k-th weighted one (the stem, before the first Mixed block forks) in
float, a DEQUANTIZE of the exact int8 pixels in front and one QUANTIZE behind. A layer
put back in float on its own, between int8 neighbours (the quantization debugger's
worst), keeps the rounding of its input and of its output and removes only its
weights' error: on the reference model it added no layer.

The float layers keep the int8 file's weights (its codes times their scales) and
biases, so the edit removes exactly the activations' rounding and clipping, and works on
any int8 file the same way: the post-training one (`int8-fallback`) and the trained one
(`qat-fallback`, whose weights are what training learned; it has no calibrated float
graph to convert again). Measured on the reference model's int8 with its first two
layers so: median top-two gap change 0.0245, where the converter's float graph for
those layers (float weights) gave 0.0248.

Each candidate is measured on the calibration and held-out images by the median change
of the float model's top-two gap (quantize/drift.py: what flips near-ties); the one with
the lowest is kept if it is lower than the all-int8 file's. A float multiply-add costs
about three int8 ones on a CPU with int8 dot products (fewer on one without), so the
default budget, 6 % of the multiply-adds, keeps the file within about a tenth of the
int8's latency at 299x299 (README); the report lists each float layer's multiply-adds,
`make bench` measures the latency.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from quantize import layer_errors
from runtime import tflite_graph as tg

_WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
_CHAIN = _WEIGHTED | {"MAX_POOL_2D", "AVERAGE_POOL_2D"}  # what a float prefix may hold


def multiply_adds(model: bytes) -> dict[str, int]:
    """Multiply-adds of each weighted op, by its output tensor name, in graph order."""
    m = tg.load(model)
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


def prefixes(model: bytes) -> list[tuple[str, list[str]]]:
    """For each weighted op of the chain the graph starts with (each op reading the one
    before, its output read by the next alone): its output name, and the output names of
    every op up to and including it (the stem's pools too, so no activation inside the
    prefix is rounded). The chain ends where the graph first forks."""
    m = tg.load(model)
    graph = m.subgraphs[0]
    readers = tg.readers(graph)
    names: list[str] = []
    found = []
    previous = graph.inputs[0]
    for op in graph.operators:
        if tg.op_name(m, op) not in _CHAIN or op.inputs[0] != previous:
            break
        names.append(tg.tensor_name(graph.tensors[op.outputs[0]]))
        if tg.op_name(m, op) in _WEIGHTED:
            found.append((names[-1], list(names)))
        previous = op.outputs[0]
        if len(readers.get(previous, [])) != 1:
            break
    return found


def float_prefix(model: bytes, nodes: Sequence[str]) -> bytes:
    """`model` with the ops writing `nodes` (one of `prefixes(model)`) in float: their
    weights and biases dequantized, a DEQUANTIZE of the input in front, a QUANTIZE onto
    the last one's int8 output behind."""
    m = tg.load(model)
    graph = m.subgraphs[0]
    count = len(nodes)
    prefix = graph.operators[:count]
    if [tg.tensor_name(graph.tensors[op.outputs[0]]) for op in prefix] != list(nodes):
        raise ValueError("a float prefix must be the ops the graph starts with")
    source = graph.tensors[prefix[0].inputs[0]]
    current = tg.new_tensor(m, source, tg.TYPE.FLOAT32, tg.tensor_name(source) + "/float")
    head = tg.new_op(m, tg.OP.DEQUANTIZE, 2, [prefix[0].inputs[0]], [current])
    for op in prefix:
        op.inputs[0] = current
        if tg.op_name(m, op) in _WEIGHTED:
            _dequantize_constants(m, op)
        written = op.outputs[0]
        out = graph.tensors[written]
        current = tg.new_tensor(m, out, tg.TYPE.FLOAT32, tg.tensor_name(out) + "/float")
        op.outputs[0] = current
    tail = tg.new_op(m, tg.OP.QUANTIZE, 2, [current], [written])
    graph.operators = [head, *prefix, tail, *graph.operators[count:]]
    return tg.pack(m)


def _dequantize_constants(m: tg.schema.ModelT, op: tg.schema.OperatorT) -> None:
    """A weighted op's int8 weights and int32 bias as the float values they stand for.
    An op whose int8 output starts at zero clamps there, which float does as a ReLU."""
    graph = m.subgraphs[0]
    for index in op.inputs[1:]:
        if index >= 0:
            tg.to_float(m, graph.tensors[index])
    out = graph.tensors[op.outputs[0]].quantization
    options = op.builtinOptions
    if options.fusedActivationFunction == tg.schema.ActivationFunctionType.NONE \
            and int(out.zeroPoint[0]) == -128:
        options.fusedActivationFunction = tg.schema.ActivationFunctionType.RELU


def search(model: bytes, score: Callable[[bytes], dict], budget: float, max_layers: int
           ) -> tuple[bytes, list[dict]]:
    """(model, its float layers): `model` with the prefix whose measured top-two gap
    change (`score(model)["gap_change"]`) is lowest, within `budget` (share of the
    multiply-adds) and `max_layers`; `model` itself and no layer when none is lower than
    its own."""
    macs = multiply_adds(model)
    allowed = budget * sum(macs.values())
    best, best_error, kept = model, score(model)["gap_change"], []
    tried: list[dict] = []
    spent = 0
    for layer, nodes in prefixes(model)[:max_layers]:
        spent += macs[layer]
        if spent > allowed:
            break
        candidate = float_prefix(model, nodes)
        tried.append({"layer": layer_errors.layer_name(layer), "node": layer,
                      "multiply_adds": macs[layer], **score(candidate)})
        if tried[-1]["gap_change"] < best_error:
            best, best_error, kept = candidate, tried[-1]["gap_change"], list(tried)
    return best, kept
