"""Average pools as float islands, so XNNPACK runs the whole int8 graph in one piece.

XNNPACK (LiteRT's CPU delegate) takes int8 convolutions, max pools and concatenations, but
not int8 AVERAGE_POOL_2D. InceptionV3 has ten of them (one per Mixed_5b..7c branch pool,
plus the final pool), so the converter's int8 graph runs as eleven XNNPACK pieces with the
pools in between on LiteRT's single-threaded built-in kernel; each hand-over costs about a
millisecond at 299 x 299 (`make bench` measures it). Wrapping each pool as DEQUANTIZE ->
float AVERAGE_POOL_2D -> QUANTIZE (same output scale and zero point) gives XNNPACK every
op. It computes the same average, rounded once at the end instead of inside the integer
kernel: outputs differ from the all-integer graph by a step or two of the output scale.
The drift report measures this graph against float; `make bench` measures both.

The final pool, when the logits layer reading it is float (the accuracy-first CPU file),
hands its float average straight over instead of rounding it to int8 for a DEQUANTIZE to
undo: measured on the reference model (3,925 Imagenette val images), the median change of
the float top-two logit gap falls 6 % (0.0325 -> 0.0306).

The Edge TPU and integer-only accelerators want the all-integer graph, so the pipeline
checks and compiles that one and writes this one for the CPU.
"""
from __future__ import annotations

import copy

from runtime import tflite_graph as tg

_DEQUANTIZED = "/dequantized"
_FLOAT = "/float"


def integer_pools_of(model: bytes) -> list[int]:
    """Indices (in execution order) of the int8 average pools XNNPACK leaves to LiteRT."""
    return _integer_pools(tg.load(model))


def _integer_pools(m: tg.schema.ModelT) -> list[int]:
    graph = m.subgraphs[0]
    return [i for i, op in enumerate(graph.operators)
            if tg.code(m, op) == tg.OP.AVERAGE_POOL_2D
            and graph.tensors[op.inputs[0]].type == tg.TYPE.INT8]


def float_pools(model: bytes, keep: tuple[int, ...] = ()) -> bytes:
    """Every int8 AVERAGE_POOL_2D wrapped as a float island; `keep` lists pools (0 = first
    int8 pool) to leave integer, which is how `make bench` prices each split. A pool whose
    int8 output is only dequantized again (the final pool, read by a float logits layer)
    hands its float average straight over: not rounded to int8 and back."""
    m = tg.load(model)
    graph = m.subgraphs[0]

    def float_twin(tensor_index: int, suffix: str) -> int:
        source = graph.tensors[tensor_index]
        return tg.new_tensor(m, source, tg.TYPE.FLOAT32, tg.tensor_name(source) + suffix)

    pools = set(_integer_pools(m))
    dequantized_only = _dequantized_only(m)
    operators, pool_number, dropped = [], -1, set()
    for index, op in enumerate(graph.operators):
        if id(op) in dropped:
            continue
        if index not in pools:
            operators.append(op)
            continue
        pool_number += 1
        if pool_number in keep:
            operators.append(op)
            continue
        float_in = float_twin(op.inputs[0], _DEQUANTIZED)
        operators.append(tg.new_op(m, tg.OP.DEQUANTIZE, 2, [op.inputs[0]], [float_in]))  # v2: int8
        handover = dequantized_only.get(op.outputs[0])
        if handover is not None:
            op.inputs, op.outputs = [float_in], list(handover.outputs)
            dropped.add(id(handover))
            operators.append(op)
            continue
        float_out = float_twin(op.outputs[0], _FLOAT)
        to_int8 = tg.new_op(m, tg.OP.QUANTIZE, 1, [float_out], [op.outputs[0]])
        op.inputs, op.outputs = [float_in], [float_out]
        operators += [op, to_int8]
    graph.operators = operators
    return tg.pack(m)


def _dequantized_only(m: tg.schema.ModelT) -> dict[int, tg.schema.OperatorT]:
    """Tensor index to the DEQUANTIZE that is its only reader (graph outputs left out)."""
    graph = m.subgraphs[0]
    readers = tg.readers(graph)
    return {tensor: ops[0] for tensor, ops in readers.items()
            if len(ops) == 1 and tg.code(m, ops[0]) == tg.OP.DEQUANTIZE
            and tensor not in graph.outputs}


def integer_pools(model: bytes) -> bytes:
    """The inverse of float_pools: the all-integer graph the converter made."""
    m = tg.load(model)
    graph = m.subgraphs[0]
    produced_by, readers = tg.producers(graph), tg.readers(graph)
    operators, removed = [], set()
    for op in graph.operators:
        to_float = _island_input(m, op, produced_by, readers)
        if to_float is None:
            operators.append(op)
            continue
        operators.remove(to_float)
        op.inputs = [to_float.inputs[0]]
        to_int8 = [r for r in readers.get(op.outputs[0], []) if tg.code(m, r) == tg.OP.QUANTIZE]
        if to_int8:
            op.outputs = list(to_int8[0].outputs)
            removed.add(id(to_int8[0]))
            operators.append(op)
            continue
        # Handed over as float: the pool writes int8 again (on its input's scale, as
        # TFLite's int8 average pool does) and the DEQUANTIZE follows it.
        float_out = graph.tensors[op.outputs[0]]
        int8_out = tg.new_tensor(m, float_out, tg.TYPE.INT8, tg.tensor_name(float_out) + "/int8")
        graph.tensors[int8_out].quantization = copy.deepcopy(
            graph.tensors[op.inputs[0]].quantization)
        to_float.inputs, to_float.outputs = [int8_out], list(op.outputs)
        op.outputs = [int8_out]
        operators += [op, to_float]
    graph.operators = [op for op in operators if id(op) not in removed]
    # The float twins are left unused in the tensor table: harmless, and it keeps indices.
    return tg.pack(m)


def _island_input(m, op, produced_by: dict, readers: dict):
    """The DEQUANTIZE that alone feeds `op` if `op` is a float average pool of int8 values
    (an island), else None."""
    if tg.code(m, op) != tg.OP.AVERAGE_POOL_2D:
        return None
    to_float = produced_by.get(op.inputs[0])
    if to_float is None or tg.code(m, to_float) != tg.OP.DEQUANTIZE \
            or len(readers.get(op.inputs[0], [])) != 1:
        return None
    return to_float
