"""Bias correction of the quantized convolutions (as NNCF's fast bias correction and
Nagel et al.'s data-free quantization do).

Rounding a convolution's weights to int8 changes the mean of its outputs: with float
weights W and their int8 rounding W_q, E[W x] - E[W_q x] = (W - W_q) E[x], a shift per
output channel that passes into every later layer. The float graph's channel means E[x]
of each convolution's input (quantize/activation_stats.py) give that shift, and adding it
to the int32 bias (in the bias's own scale) cancels it. The shift is computed from the
float model's statistics, so corrections do not compound.

Channel means assume every tap of a kernel sees its channel's mean; a tap that reads
padding sees zeros. Where GPTQ's pass measured each tap's own mean input
(quantize/weight_rounding.py) that is used instead: exact at the border, where GPTQ may
move a weight far.
"""
from __future__ import annotations

import numpy as np

from quantize.activation_stats import TensorStats
from runtime import tflite_graph as tg

_WEIGHTED = {tg.OP.CONV_2D, tg.OP.DEPTHWISE_CONV_2D, tg.OP.FULLY_CONNECTED}


def weight_error(m_float, float_op, m_quant, quant_op) -> np.ndarray:
    """W - W_q in the weights' own layout: the float weights less the int8 ones dequantized
    on their per-channel scales."""
    graph_f, graph_q = m_float.subgraphs[0], m_quant.subgraphs[0]
    weights = tg.buffer_array(m_float, graph_f.tensors[float_op.inputs[1]]).astype(np.float64)
    return weights - tg.dequantized(m_quant, graph_q.tensors[quant_op.inputs[1]])


def weight_error_shift(m_float, float_op, m_quant, quant_op, input_mean: np.ndarray
                       ) -> np.ndarray:
    """(W - W_q) E[x] per output channel: what the rounded weights take off the mean."""
    error = weight_error(m_float, float_op, m_quant, quant_op)
    builtin = tg.code(m_quant, quant_op)
    if builtin == tg.OP.DEPTHWISE_CONV_2D:  # [1, KH, KW, C * multiplier]
        per_channel = error.sum(axis=(0, 1, 2))
        multiplier = per_channel.size // input_mean.size
        return per_channel * np.repeat(input_mean, multiplier)
    if builtin == tg.OP.CONV_2D:            # [O, KH, KW, I]
        error = error.sum(axis=(1, 2))
    return error @ input_mean               # [O, I]


def tap_shift(m_float, float_op, m_quant, quant_op, tap_mean: np.ndarray) -> np.ndarray:
    """(W - W_q) E[x] per output channel of a CONV_2D, E[x] each tap's own mean: exact at
    the border, where a tap that reads padding sees zeros, not its channel's mean."""
    error = weight_error(m_float, float_op, m_quant, quant_op)  # [O, KH, KW, I]
    return error.reshape(len(error), -1) @ tap_mean


def mean_shift(m_quant, op, m_float, float_ops: dict, stats: dict[str, TensorStats]
               ) -> np.ndarray | None:
    """(W - W_q) E[x] of one quantized op, from its float twin in `float_ops`
    (tg.ops_by_output of the calibrated graph) and the mean of that twin's input; None
    when either is missing."""
    float_op = float_ops.get(tg.tensor_name(m_quant.subgraphs[0].tensors[op.outputs[0]]))
    if float_op is None:
        return None
    source = stats.get(tg.tensor_name(m_float.subgraphs[0].tensors[float_op.inputs[0]]))
    if source is None or source.channel_sum is None:
        return None
    return weight_error_shift(m_float, float_op, m_quant, op, source.channel_mean)


def correct(quantized: bytes, calibrated: bytes, stats: dict[str, TensorStats],
            tap_means: dict[str, np.ndarray] | None = None) -> tuple[bytes, dict]:
    """`quantized` with every int8 convolution's bias corrected; and what changed.
    `tap_means`, by the op's output name: the mean input of each of its weights' taps
    ([KH * KW * C], quantize/weight_rounding.py), used instead of the channel means."""
    m_quant, m_float = tg.load(quantized), tg.load(calibrated)
    graph_q = m_quant.subgraphs[0]
    float_ops = tg.ops_by_output(m_float, _WEIGHTED)
    corrected, largest = 0, 0.0
    for op in graph_q.operators:
        if tg.code(m_quant, op) not in _WEIGHTED or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        weights, bias = graph_q.tensors[op.inputs[1]], graph_q.tensors[op.inputs[2]]
        if weights.type != tg.TYPE.INT8 or bias.type != tg.TYPE.INT32:
            continue
        name = tg.tensor_name(graph_q.tensors[op.outputs[0]])
        if tap_means and name in tap_means and tg.code(m_quant, op) == tg.OP.CONV_2D:
            shift = tap_shift(m_float, float_ops[name], m_quant, op, tap_means[name])
        else:
            shift = mean_shift(m_quant, op, m_float, float_ops, stats)
        if shift is None:
            continue
        bias_scale = np.asarray(bias.quantization.scale, dtype=np.float64)
        steps = np.rint(shift / bias_scale)
        values = tg.buffer_array(m_quant, bias).astype(np.int64) + steps.astype(np.int64)
        tg.set_buffer(m_quant, bias, np.clip(values, -2**31, 2**31 - 1))
        corrected += 1
        largest = max(largest, float(np.max(np.abs(shift))))
    return tg.pack(m_quant), {"layers": corrected, "largest_shift": largest}
