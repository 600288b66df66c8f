"""Reading and editing `.tflite` graphs: the one module that touches the flatbuffer.

It stands on the schema `ai_edge_litert` ships (`schema_py_generated`), so reading a
graph needs no TensorFlow: the Edge TPU check, the pool islands, the accuracy-first
edits (float logits, bias correction) and the tests all go through here.
"""
from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

OP = schema.BuiltinOperator
TYPE = schema.TensorType
PADDING = schema.Padding
OP_NAMES = {v: k for k, v in vars(OP).items() if not k.startswith("_")}
TYPE_NAMES = {v: k.lower() for k, v in vars(TYPE).items() if not k.startswith("_")}
NUMPY_TYPES = {TYPE.FLOAT32: np.float32, TYPE.INT8: np.int8, TYPE.UINT8: np.uint8,
               TYPE.INT16: np.int16, TYPE.INT32: np.int32, TYPE.INT64: np.int64,
               TYPE.FLOAT16: np.float16}


def load(model: bytes) -> schema.ModelT:
    """The whole model as mutable Python objects."""
    return schema.ModelT.InitFromPackedBuf(bytearray(model), 0)


def pack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def code(model: schema.ModelT, op: schema.OperatorT) -> int:
    """An op's builtin code (the larger of the two fields, as the schema asks)."""
    opcode = model.operatorCodes[op.opcodeIndex]
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def op_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    builtin = code(model, op)
    if builtin == OP.CUSTOM:
        custom = model.operatorCodes[op.opcodeIndex].customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return OP_NAMES.get(builtin, str(builtin))


def op_names(model: bytes) -> list[str]:
    """The main subgraph's op names in execution order."""
    m = load(model)
    return [op_name(m, op) for op in m.subgraphs[0].operators]


def tensor_name(tensor: schema.TensorT) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def opcode_index(model: schema.ModelT, builtin: int, version: int) -> int:
    """The index of `builtin` in the model's opcode table (added, or raised to `version`)."""
    for index, opcode in enumerate(model.operatorCodes):
        if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == builtin:
            opcode.version = max(opcode.version, version)
            return index
    opcode = schema.OperatorCodeT()
    opcode.builtinCode, opcode.deprecatedBuiltinCode = builtin, min(builtin, 127)
    opcode.version = version
    model.operatorCodes.append(opcode)
    return len(model.operatorCodes) - 1


def buffer_array(model: schema.ModelT, tensor: schema.TensorT) -> np.ndarray | None:
    """A constant tensor's values (a view of its buffer), or None for activations."""
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    if data is None or len(data) == 0:
        return None
    raw = np.asarray(data, dtype=np.uint8)
    return raw.view(NUMPY_TYPES[tensor.type]).reshape(tensor.shape)


def set_buffer(model: schema.ModelT, tensor: schema.TensorT, values: np.ndarray) -> None:
    """Give a constant tensor new values (same dtype and shape) in a buffer of its own:
    the converter shares one buffer between identical constants (all-zero biases)."""
    values = np.ascontiguousarray(values, dtype=NUMPY_TYPES[tensor.type])
    data = np.frombuffer(values.tobytes(), dtype=np.uint8)
    shared = sum(t.buffer == tensor.buffer for g in model.subgraphs for t in g.tensors) > 1
    if shared:
        model.buffers.append(schema.BufferT())
        tensor.buffer = len(model.buffers) - 1
    model.buffers[tensor.buffer].data = data


def dequantized(model: schema.ModelT, tensor: schema.TensorT) -> np.ndarray:
    """A quantized constant's values as the floats they stand for (float64): each code
    times its channel's scale along `quantizedDimension` (one scale: the tensor's)."""
    codes = buffer_array(model, tensor).astype(np.float64)
    scales = np.asarray(tensor.quantization.scale, dtype=np.float64)
    if scales.size == 1:
        return codes * scales[0]
    shape = [1] * codes.ndim
    shape[tensor.quantization.quantizedDimension] = -1
    return codes * scales.reshape(shape)


def to_float(model: schema.ModelT, tensor: schema.TensorT) -> None:
    """Make a quantized constant a float32 one holding the values it stands for."""
    values = dequantized(model, tensor)
    tensor.type, tensor.quantization = TYPE.FLOAT32, None
    set_buffer(model, tensor, values)


def ops_by_output(model: schema.ModelT, builtins: set[int]) -> dict[str, schema.OperatorT]:
    """The ops of those kinds by their output tensor's name, which the converter keeps from
    a calibrated float graph to its quantized one: how a graph edit finds an op's twin."""
    graph = model.subgraphs[0]
    return {tensor_name(graph.tensors[op.outputs[0]]): op for op in graph.operators
            if code(model, op) in builtins}


def producers(graph: schema.SubGraphT) -> dict[int, schema.OperatorT]:
    """Tensor index to the op that writes it."""
    return {out: op for op in graph.operators for out in op.outputs}


def readers(graph: schema.SubGraphT) -> dict[int, list[schema.OperatorT]]:
    """Tensor index to the ops that read it, in execution order."""
    found: dict[int, list[schema.OperatorT]] = {}
    for op in graph.operators:
        for tensor in op.inputs:
            found.setdefault(tensor, []).append(op)
    return found


def new_tensor(model: schema.ModelT, like: schema.TensorT, dtype: int, name: str) -> int:
    """Append an activation tensor shaped like `like` (no quantization); its index."""
    graph = model.subgraphs[0]
    tensor = schema.TensorT()
    tensor.shape = np.array(like.shape, dtype=np.int32)
    tensor.type = dtype
    tensor.name = name
    model.buffers.append(schema.BufferT())
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def new_op(model: schema.ModelT, builtin: int, version: int, inputs: list[int],
           outputs: list[int]) -> schema.OperatorT:
    """A DEQUANTIZE or QUANTIZE op (the only kinds the graph edits add)."""
    options = {OP.DEQUANTIZE: (schema.BuiltinOptions.DequantizeOptions,
                               schema.DequantizeOptionsT),
               OP.QUANTIZE: (schema.BuiltinOptions.QuantizeOptions,
                             schema.QuantizeOptionsT)}[builtin]
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index(model, builtin, version)
    op.inputs, op.outputs = list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options[0], options[1]()
    return op


def uint8_interface(model: bytes) -> bytes:
    """int8 inputs and outputs as uint8 (same scale, zero point + 128), each joined to the
    graph by a requantizing QUANTIZE: the interface the converter gives uint8 models."""
    m = load(model)
    graph = m.subgraphs[0]
    renamed: dict[int, int] = {}

    def twin(index: int) -> int:
        source = graph.tensors[index]
        name = tensor_name(source)
        source.name = name + "/int8"
        new = new_tensor(m, source, TYPE.UINT8, name)
        q = schema.QuantizationParametersT()
        q.scale = np.array(source.quantization.scale, dtype=np.float32)
        q.zeroPoint = np.array(source.quantization.zeroPoint, dtype=np.int64) + 128
        graph.tensors[new].quantization = q
        renamed[index] = new
        return new

    inputs = [i for i in graph.inputs if graph.tensors[i].type == TYPE.INT8]
    outputs = [i for i in graph.outputs if graph.tensors[i].type == TYPE.INT8]
    head = [new_op(m, OP.QUANTIZE, 2, [twin(i)], [i]) for i in inputs]
    tail = [new_op(m, OP.QUANTIZE, 2, [i], [twin(i)]) for i in outputs]
    graph.operators = head + list(graph.operators) + tail
    graph.inputs = [renamed.get(i, i) for i in graph.inputs]
    graph.outputs = [renamed.get(i, i) for i in graph.outputs]
    for signature in m.signatureDefs or []:
        for tensor_map in (signature.inputs or []) + (signature.outputs or []):
            tensor_map.tensorIndex = renamed.get(tensor_map.tensorIndex, tensor_map.tensorIndex)
    return pack(m)
