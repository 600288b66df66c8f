"""Activation equalization: per-channel scale moved out of an activation into the weights
that read it, so that the one int8 range TFLite gives each tensor fits all its channels.

An int8 activation has one scale for every channel. Where one channel of a tensor reaches
20 and most reach 1, most channels live on a few of the 256 steps. For a convolution A
whose ReLU output is read only by convolutions (directly or through a max pool, as inside
InceptionV3's branches and stem), dividing A's output channel c by s_c and multiplying the
readers' weights for input channel c by s_c computes the same function: ReLU and max pool
commute with a positive scale. With s_c = a_c^alpha / w_c^(1 - alpha), a_c channel c's
largest activation on calibration images and w_c the readers' largest weight for it,
alpha = 0.5 leaves both at sqrt(a_c * w_c): SmoothQuant's rule for matrix products,
applied to convolutions (alpha = 0 is the weight-only cross-layer equalization of
data-free quantization, which per-channel weights do not need).

Batch norm stays in the graph (TFLite folds it when it converts): A's output is scaled
through the batch norm's variance and offset. Tensors that feed a concatenation are left
alone (every branch of a concat shares its range).
"""
from __future__ import annotations

import numpy as np

from build.keras_env import keras
from runtime.preprocessing import normalize

ALPHA = 0.5
MAX_SCALE = 100.0  # s_c within [1/100, 100]: a dead or huge channel moves nothing far
layers = keras.layers


def _readers(layer) -> list:
    return [node.outbound_layer for node in layer._outbound_nodes]


def _conv_readers(relu) -> list | None:
    """The convolutions that read `relu`'s output, or None if anything else does."""
    found = []
    for reader in _readers(relu):
        inner = _readers(reader) if isinstance(reader, layers.MaxPooling2D) else [reader]
        if not inner or not all(isinstance(x, layers.Conv2D) for x in inner):
            return None
        found += inner
    return found or None


def chains(model: keras.Model) -> list[tuple[object, object, list]]:
    """(the layer that sets the channel scale: a conv with bias or its batch norm, the ReLU,
    the convolutions that read it) for every ReLU output that only convolutions read."""
    found = []
    for relu in model.layers:
        if not isinstance(relu, layers.ReLU) or len(relu._inbound_nodes) != 1:
            continue
        source = relu._inbound_nodes[0].inbound_layers
        scalable = isinstance(source, layers.BatchNormalization) and not source.scale or \
            isinstance(source, layers.Conv2D) and source.use_bias
        readers = _conv_readers(relu)
        if scalable and readers:
            found.append((source, relu, readers))
    return found


def _scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    usable = (activation_max > 0) & (weight_max > 0)
    s = np.where(usable, np.maximum(activation_max, 1e-12) ** alpha /
                 np.maximum(weight_max, 1e-12) ** (1 - alpha), 1.0)
    s = s / np.exp(np.mean(np.log(s)))  # a geometric mean of 1: the tensor's scale stays put
    return np.clip(s, 1 / MAX_SCALE, MAX_SCALE)


def _feasible(source, s: np.ndarray) -> np.ndarray:
    """A batch norm divides by sqrt(var + eps), so it cannot shrink a channel's output
    below that of var = 0: scales under that bound are raised to it."""
    if isinstance(source, layers.Conv2D):
        return s
    variance = source.get_weights()[2]
    floor = np.sqrt(source.epsilon / (variance + source.epsilon)) * (1 + 1e-6)
    return np.maximum(s, floor).astype(np.float32)


def _divide_output(source, s: np.ndarray) -> None:
    """Channel c of `source`'s output divided by s_c, exactly."""
    if isinstance(source, layers.Conv2D):
        kernel, bias = source.get_weights()
        source.set_weights([kernel / s, bias / s])
        return
    # (x - mean) / sqrt(var + eps) + beta, divided by s: sqrt(var' + eps) = s sqrt(var + eps)
    beta, mean, variance = source.get_weights()
    source.set_weights([beta / s, mean, s ** 2 * (variance + source.epsilon) - source.epsilon])


def equalize(model: keras.Model, pixels: np.ndarray, alpha: float = ALPHA
             ) -> tuple[keras.Model, int]:
    """A copy of `model` with every equalizable activation equalized on `pixels` (uint8
    calibration images), and how many activations that was. The copy's outputs equal
    `model`'s up to float rounding."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    found = chains(copy)
    if not found:
        return copy, 0
    probe = keras.Model(copy.inputs, [relu.output for _, relu, _ in found])
    outputs = probe.predict(normalize(pixels), batch_size=16, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for (source, _, readers), values in zip(found, outputs):
        weight_max = np.max([np.abs(r.get_weights()[0]).max(axis=(0, 1, 3)) for r in readers],
                            axis=0)
        rescale(source, readers, _scales(values.max(axis=(0, 1, 2)), weight_max, alpha))
    return copy, len(found)


def rescale(source, readers: list, s: np.ndarray) -> np.ndarray:
    """Divide channel c of `source`'s output by s_c and multiply the readers' weights for
    it by s_c: the same function. Returns the scales applied (see _feasible)."""
    s = _feasible(source, np.asarray(s, np.float32))
    _divide_output(source, s)
    for reader in readers:
        weights = reader.get_weights()
        weights[0] = weights[0] * s[None, None, :, None]
        reader.set_weights(weights)
    return s
