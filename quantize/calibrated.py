"""Calibrate once, quantize many ways: the converter's two halves, pulled apart.

`TFLiteConverter` quantizes in two steps: it runs the representative images through the
float graph and records each tensor's min and max (calibration), then its MLIR quantizer
turns those ranges into scales and zero points. Holding the calibrated graph in between
lets the accuracy-first recipe choose each tensor's range itself (quantize/ranges.py),
keep chosen layers in float (`float_nodes`: the logits, the fallback layers) and try
every combination from one calibration pass. `quantize(calibrated)` with no options
quantizes as the converter does (the same ops and ranges; the bytes differ in metadata).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from tensorflow.lite.python import convert as tflite_convert

from build.keras_env import keras, tf
from quantize.variants import Variant, make_converter
from runtime import tflite_graph as tg


def calibrate(graph: keras.Model, variant: Variant,
              representative: Callable[[], Iterable[list[np.ndarray]]]) -> bytes:
    """The float graph with the min and max of every activation on `representative`."""
    converter = make_converter(graph, variant, representative)
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    return converter.convert()


def quantize(calibrated: bytes, io_type=np.int8, float_nodes: Sequence[str] = (),
             float_output: bool = False) -> bytes:
    """The full-integer graph of `calibrated`, per-channel weights.

    `float_nodes`: names of op outputs to keep in float (DEQUANTIZE before, QUANTIZE
    after). `float_output`: the model returns the last op's float result, without the
    QUANTIZE to `io_type` the quantizer puts at the end (the logits then have neither an
    8-bit cap nor ties between classes one step apart).
    """
    model = tflite_convert.mlir_quantize(
        calibrated, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8,
        denylisted_nodes=list(float_nodes))
    if float_output:
        model = drop_output_quantize(model)
    # the quantizer makes int8 interfaces only (it ignores the types asked for)
    return tg.uint8_interface(model) if io_type == np.uint8 else model


def drop_output_quantize(model: bytes) -> bytes:
    """Outputs written by a QUANTIZE of a float tensor become that float tensor."""
    m = tg.load(model)
    graph = m.subgraphs[0]
    writers = tg.producers(graph)
    for position, output in enumerate(graph.outputs):
        op = writers.get(output)
        if op is None or tg.code(m, op) != tg.OP.QUANTIZE or \
                graph.tensors[op.inputs[0]].type != tg.TYPE.FLOAT32:
            continue
        source = op.inputs[0]
        graph.tensors[source].name = graph.tensors[output].name  # keep the output's name
        graph.outputs[position] = source
        graph.operators.remove(op)
        for signature in m.signatureDefs or []:
            for tensor_map in signature.outputs or []:
                if tensor_map.tensorIndex == output:
                    tensor_map.tensorIndex = source
    return tg.pack(m)


def activation_ranges(calibrated: bytes) -> dict[str, tuple[float, float]]:
    """Tensor name to the (min, max) calibration recorded, for every activation."""
    m = tg.load(calibrated)
    ranges = {}
    for tensor in m.subgraphs[0].tensors:
        q = tensor.quantization
        if q is not None and q.min is not None and len(q.min) == 1:
            ranges[tg.tensor_name(tensor)] = (float(q.min[0]), float(q.max[0]))
    return ranges


def with_ranges(calibrated: bytes, ranges: dict[str, tuple[float, float]]) -> bytes:
    """`calibrated` with the given tensors' (min, max) replaced; the quantizer takes them."""
    m = tg.load(calibrated)
    for tensor in m.subgraphs[0].tensors:
        chosen = ranges.get(tg.tensor_name(tensor))
        if chosen is not None and tensor.quantization is not None:
            tensor.quantization.min = np.array([chosen[0]], dtype=np.float32)
            tensor.quantization.max = np.array([chosen[1]], dtype=np.float32)
    return tg.pack(m)


def logits_nodes(calibrated: bytes) -> list[str]:
    """The op outputs from the last convolution (the logits layer) to the model output."""
    m = tg.load(calibrated)
    graph = m.subgraphs[0]
    last_conv = max(i for i, op in enumerate(graph.operators)
                    if tg.code(m, op) in (tg.OP.CONV_2D, tg.OP.FULLY_CONNECTED))
    return [tg.tensor_name(graph.tensors[op.outputs[0]])
            for op in graph.operators[last_conv:]]
