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

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

_OP = schema.BuiltinOperator
_DEQUANTIZED = "/dequantized"
_FLOAT = "/float"


def _code(code: schema.OperatorCodeT) -> int:
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _opcode_index(model: schema.ModelT, builtin: int, version: int) -> int:
    for index, code in enumerate(model.operatorCodes):
        if _code(code) == builtin:
            code.version = max(code.version, version)
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _load(model: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromPackedBuf(bytearray(model), 0)


def _pack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def integer_pools_of(model: bytes) -> list[int]:
    """Indices (in execution order) of the int8 average pools XNNPACK leaves to LiteRT."""
    return _integer_pools(_load(model))


def _integer_pools(m: schema.ModelT) -> list[int]:
    graph = m.subgraphs[0]
    return [i for i, op in enumerate(graph.operators)
            if _code(m.operatorCodes[op.opcodeIndex]) == _OP.AVERAGE_POOL_2D
            and graph.tensors[op.inputs[0]].type == schema.TensorType.INT8]


def float_pools(model: bytes, keep: tuple[int, ...] = ()) -> bytes:
    """Every int8 AVERAGE_POOL_2D wrapped as a float island; `keep` lists pools (0 = first
    int8 pool) to leave integer, which is how `make bench` prices each split."""
    m = _load(model)
    graph = m.subgraphs[0]
    dequantize = _opcode_index(m, _OP.DEQUANTIZE, 2)   # version 2: int8 input
    quantize = _opcode_index(m, _OP.QUANTIZE, 1)

    def float_twin(tensor_index: int, suffix: str) -> int:
        source = graph.tensors[tensor_index]
        twin = schema.TensorT()
        twin.shape = np.array(source.shape, dtype=np.int32)
        twin.type = schema.TensorType.FLOAT32
        twin.name = (source.name.decode() if isinstance(source.name, bytes)
                     else source.name) + suffix
        m.buffers.append(schema.BufferT())
        twin.buffer = len(m.buffers) - 1
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

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
        to_float = schema.OperatorT()
        to_float.opcodeIndex, to_float.inputs, to_float.outputs = \
            dequantize, [op.inputs[0]], [float_in]
        to_float.builtinOptionsType = schema.BuiltinOptions.DequantizeOptions
        to_float.builtinOptions = schema.DequantizeOptionsT()
        to_int8 = schema.OperatorT()
        to_int8.opcodeIndex, to_int8.inputs, to_int8.outputs = \
            quantize, [float_out], [op.outputs[0]]
        to_int8.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
        to_int8.builtinOptions = schema.QuantizeOptionsT()
        op.inputs, op.outputs = [float_in], [float_out]
        operators += [to_float, op, to_int8]
    graph.operators = operators
    return _pack(m)


def integer_pools(model: bytes) -> bytes:
    """The inverse of float_pools: the all-integer graph the converter made."""
    m = _load(model)
    graph = m.subgraphs[0]
    ops = graph.operators
    produced_by = {out: op for op in ops for out in op.outputs}
    removed: set[int] = set()
    for op in ops:
        if _code(m.operatorCodes[op.opcodeIndex]) != _OP.QUANTIZE:
            continue
        pool = produced_by.get(op.inputs[0])
        if pool is None or _code(m.operatorCodes[pool.opcodeIndex]) != _OP.AVERAGE_POOL_2D:
            continue
        to_float = produced_by.get(pool.inputs[0])
        if to_float is None or _code(m.operatorCodes[to_float.opcodeIndex]) != _OP.DEQUANTIZE:
            continue
        pool.inputs, pool.outputs = [to_float.inputs[0]], [op.outputs[0]]
        removed.update((id(op), id(to_float)))
    graph.operators = [op for op in ops if id(op) not in removed]
    # The float twins are left unused in the tensor table: harmless, and it keeps indices.
    return _pack(m)
