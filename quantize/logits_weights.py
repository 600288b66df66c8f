"""The float logits layer with int8 weights: its activations and output stay float.

The accuracy-first int8 keeps the logits layer in float, so that no 8-bit output caps the
largest logit or ties two classes one step apart (quantize/recipe.py). At ImageNet's 1000
classes its float32 weights are 8.2 MB of a 30.5 MB file at 299x299, read on every image.
Stored as int8 per output channel, with float input and output, the layer is what LiteRT
calls dynamic range (as the `dynamic` variant's convolutions): the interpreter quantizes
its input per image (XNNPACK's qd8 kernels), multiplies in int8 and returns float logits,
so there is still no cap and no tie. The weights are rounded as the recipe rounds the
int8 convolutions' (MSE scales, GPTQ: quantize/weight_rounding.py) where it gives them:
on the reference model, nearest rounding on max-abs scales here cost 6 % of the median
change of the float top-two logit gap (0.0286 against 0.0305, with the final pool's float
average read directly). Rounding shifts each logit's mean by (W - W_q) E[x]; the float
bias takes that back, from the float graph's input means as bias correction does for the
int8 convolutions (quantize/bias_correction.py).

Measured at 299x299 on an AMD EPYC with AVX-512 VNNI, 1 thread: 30.5 MB -> 24.4 MB,
13.25 ms -> 12.99 ms.
"""
from __future__ import annotations

import numpy as np

from quantize.activation_stats import TensorStats
from quantize.bias_correction import mean_shift
from quantize.weight_ranges import int8_codes, max_abs_scales
from runtime import tflite_graph as tg

# CONV_2D's version for float input with per-channel int8 weights (what the converter's
# dynamic-range quantization writes).
HYBRID_CONV_VERSION = 5


def int8_weights(model: bytes, calibrated: bytes, stats: dict[str, TensorStats],
                 scales: dict[str, np.ndarray] | None = None,
                 codes: dict[str, np.ndarray] | None = None) -> bytes:
    """`model` with its last convolution, when float (the logits layer), given int8
    per-channel weights and a bias corrected for their rounding. `scales`, `codes`: the
    recipe's, by the name of the op's output; without them max-abs scales, to nearest."""
    m, m_float = tg.load(model), tg.load(calibrated)
    graph = m.subgraphs[0]
    convs = [op for op in graph.operators if tg.code(m, op) == tg.OP.CONV_2D]
    if not convs or graph.tensors[convs[-1].inputs[1]].type != tg.TYPE.FLOAT32:
        return model
    op = convs[-1]
    weights = graph.tensors[op.inputs[1]]
    values = tg.buffer_array(m, weights).astype(np.float64)
    name = tg.tensor_name(graph.tensors[op.outputs[0]])
    scale = (scales or {}).get(name)
    scale = max_abs_scales(values) if scale is None else scale.astype(np.float64)
    rounded = (codes or {}).get(name)
    weights.type = tg.TYPE.INT8
    tg.set_buffer(m, weights, int8_codes(values, scale) if rounded is None else rounded)
    weights.quantization = tg.schema.QuantizationParametersT()
    weights.quantization.scale = scale.astype(np.float32).tolist()
    weights.quantization.zeroPoint = [0] * len(scale)
    weights.quantization.quantizedDimension = 0
    op.opcodeIndex = tg.opcode_index(m, tg.OP.CONV_2D, HYBRID_CONV_VERSION)
    _correct_bias(m, op, m_float, stats)
    return tg.pack(m)


def _correct_bias(m, op, m_float, stats: dict[str, TensorStats]) -> None:
    """Add (W - W_q) E[x] to the layer's float bias, E[x] from the float graph."""
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return
    shift = mean_shift(m, op, m_float, tg.ops_by_output(m_float, {tg.OP.CONV_2D}), stats)
    if shift is None:
        return
    bias = m.subgraphs[0].tensors[op.inputs[2]]
    tg.set_buffer(m, bias, tg.buffer_array(m, bias).astype(np.float64) + shift)


def float_output(model: bytes) -> bytes:
    """The all-integer graph's logits layer computed as the accuracy-first CPU file's is:
    its int8 weights kept, its input dequantized, its bias and output float (the `qat`
    file, whose logits layer the converter quantizes with the rest). No 8-bit output to
    cap the largest logit or tie two classes; a requantizing op in front of the layer is
    skipped, so with pool islands the final pool hands it its float average. Measured on
    the reference model's qat file: 29 flips (14 ties) -> 22 against the float `.tflite`."""
    m = tg.load(model)
    graph = m.subgraphs[0]
    convs = [op for op in graph.operators if tg.code(m, op) == tg.OP.CONV_2D]
    if not convs or graph.tensors[convs[-1].inputs[0]].type != tg.TYPE.INT8:
        return model
    op = convs[-1]
    requantize = tg.producers(graph).get(op.inputs[0])
    if requantize is not None and tg.code(m, requantize) == tg.OP.QUANTIZE \
            and graph.tensors[requantize.inputs[0]].type == tg.TYPE.INT8 \
            and len(tg.readers(graph)[op.inputs[0]]) == 1:
        graph.operators.remove(requantize)  # int8 -> int8 on another scale: not needed
        op.inputs[0] = requantize.inputs[0]
    source = graph.tensors[op.inputs[0]]
    dequantized = tg.new_tensor(m, source, tg.TYPE.FLOAT32,
                                tg.tensor_name(source) + "/dequantized")
    graph.operators.insert(graph.operators.index(op),
                           tg.new_op(m, tg.OP.DEQUANTIZE, 2, [op.inputs[0]], [dequantized]))
    op.inputs[0] = dequantized
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        tg.to_float(m, graph.tensors[op.inputs[2]])
    op.opcodeIndex = tg.opcode_index(m, tg.OP.CONV_2D, HYBRID_CONV_VERSION)
    _float_to_the_output(m, op.outputs[0])
    return tg.pack(m)


def _float_to_the_output(m, tensor: int) -> None:
    """`tensor` and what the ops after it (a reshape) make of it, to the graph's output,
    float."""
    graph = m.subgraphs[0]
    while True:
        graph.tensors[tensor].type, graph.tensors[tensor].quantization = tg.TYPE.FLOAT32, None
        readers = tg.readers(graph).get(tensor, [])
        if not readers:
            return
        if len(readers) > 1 or tg.code(m, readers[0]) != tg.OP.RESHAPE:
            raise ValueError(f"the logits reach the output through {tg.op_name(m, readers[0])}")
        tensor = readers[0].outputs[0]
