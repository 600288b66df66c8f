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

The Edge TPU and integer-only accelerators want the all-integer graph, so the pipeline
checks and compiles that one and writes this one for the CPU.
"""
from __future__ import annotations

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
    int8 pool) to leave integer, which is how `make bench` prices each split."""
    m = tg.load(model)
    graph = m.subgraphs[0]

    def float_twin(tensor_index: int, suffix: str) -> int:
        source = graph.tensors[tensor_index]
        return tg.new_tensor(m, source, tg.TYPE.FLOAT32, tg.tensor_name(source) + suffix)

    pools = set(_integer_pools(m))
    operators, pool_number = [], -1
    for index, op in enumerate(graph.operators):
        if index not in pools:
            operators.append(op)
            continue
        pool_number += 1
        if pool_number in keep:
            operators.append(op)
            continue
        float_in = float_twin(op.inputs[0], _DEQUANTIZED)
        float_out = float_twin(op.outputs[0], _FLOAT)
        to_float = tg.new_op(m, tg.OP.DEQUANTIZE, 2, [op.inputs[0]], [float_in])  # v2: int8
        to_int8 = tg.new_op(m, tg.OP.QUANTIZE, 1, [float_out], [op.outputs[0]])
        op.inputs, op.outputs = [float_in], [float_out]
        operators += [to_float, op, to_int8]
    graph.operators = operators
    return tg.pack(m)


def integer_pools(model: bytes) -> bytes:
    """The inverse of float_pools: the all-integer graph the converter made."""
    m = tg.load(model)
    graph = m.subgraphs[0]
    ops = graph.operators
    produced_by = tg.producers(graph)
    removed: set[int] = set()
    for op in ops:
        if tg.code(m, op) != tg.OP.QUANTIZE:
            continue
        pool = produced_by.get(op.inputs[0])
        if pool is None or tg.code(m, pool) != tg.OP.AVERAGE_POOL_2D:
            continue
        to_float = produced_by.get(pool.inputs[0])
        if to_float is None or tg.code(m, to_float) != tg.OP.DEQUANTIZE:
            continue
        pool.inputs, pool.outputs = [to_float.inputs[0]], [op.outputs[0]]
        removed.update((id(op), id(to_float)))
    graph.operators = [op for op in ops if id(op) not in removed]
    # The float twins are left unused in the tensor table: harmless, and it keeps indices.
    return tg.pack(m)
