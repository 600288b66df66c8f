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

Concatenations need it most. TFLite gives a concatenation's inputs and output one range,
so every branch of an Inception block is rounded on the steps of the widest channel of the
block: on the reference model Mixed_7c's widest channel reaches 87 where half its channels
stay under 0.7: two steps of 0.34. The same rule applies to the concatenated channels
(`concat_chains`): each branch's last batch norm scales its channels, the convolutions that
read the block (directly, or through average pools, max pools and dropout) take the
inverse. A reduction block's max-pool branch passes the previous block's channels through
unscaled by anything of its own: they keep the scales the previous block gave them, and
the readers of both blocks undo them.

Batch norm stays in the graph (TFLite folds it when it converts): A's output is scaled
through the batch norm's variance and offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from build.keras_env import keras
from runtime.preprocessing import normalize

ALPHA = 0.5
MAX_SCALE = 100.0  # s_c within [1/100, 100]: a dead or huge channel moves nothing far
layers = keras.layers


def readers_of(layer) -> list:
    """The layers that read `layer`'s output."""
    return [node.outbound_layer for node in layer._outbound_nodes]


def inputs_of(layer) -> list:
    """The layers whose outputs `layer` reads."""
    inbound = layer._inbound_nodes[0].inbound_layers
    return inbound if isinstance(inbound, list) else [inbound]


def _conv_readers(relu) -> list | None:
    """The convolutions that read `relu`'s output, or None if anything else does."""
    found = []
    for reader in readers_of(relu):
        inner = readers_of(reader) if isinstance(reader, layers.MaxPooling2D) else [reader]
        if not inner or not all(isinstance(x, layers.Conv2D) for x in inner):
            return None
        found += inner
    return found or None


def _scalable_source(relu):
    """What sets the scale of `relu`'s channels: its batch norm (without gamma) or its conv
    with bias; None if it is not a ReLU or nothing can scale it."""
    if not isinstance(relu, layers.ReLU) or len(relu._inbound_nodes) != 1:
        return None
    source = relu._inbound_nodes[0].inbound_layers
    if isinstance(source, layers.BatchNormalization) and not source.scale or \
            isinstance(source, layers.Conv2D) and source.use_bias:
        return source
    return None


def chains(model: keras.Model) -> list[tuple[object, object, list]]:
    """(the layer that sets the channel scale: a conv with bias or its batch norm, the ReLU,
    the convolutions that read it) for every ReLU output that only convolutions read."""
    found = []
    for relu in model.layers:
        source = _scalable_source(relu)
        readers = _conv_readers(relu) if source is not None else None
        if readers:
            found.append((source, relu, readers))
    return found


@dataclass
class Segment:
    """A run of a concatenation's channels: set by `source` (a batch norm or a conv with
    bias), or passed through from `upstream` (another concatenation, through a max pool)
    or from elsewhere (`source` and `upstream` None): those are not rescaled here."""
    width: int
    source: object = None
    upstream: object = None


@dataclass
class ConcatChain:
    concat: object
    segments: list[Segment]
    readers: list[tuple[object, int]]  # (convolution, the channel at which it reads this)


def _segments(concat) -> list[Segment]:
    """What sets each run of `concat`'s channels. Only what `concat` alone reads may be
    rescaled for it: an input read elsewhere too is a fixed segment."""
    found = []
    for inbound in concat._inbound_nodes[0].inbound_layers:
        width, only_here = int(inbound.output.shape[-1]), readers_of(inbound) == [concat]
        if isinstance(inbound, layers.Concatenate) and only_here:
            found += _segments(inbound)
        elif isinstance(inbound, layers.MaxPooling2D):
            before = inbound._inbound_nodes[0].inbound_layers
            found.append(Segment(width, upstream=before if isinstance(
                before, layers.Concatenate) else None))
        else:
            found.append(Segment(width, source=_scalable_source(inbound) if only_here
                                 else None))
    return found


def _readers_at(layer, offset: int = 0) -> list[tuple[object, int]] | None:
    """The convolutions that read `layer`'s channels, with the channel at which each reads
    them; None if anything else reads them."""
    found = []
    for reader in readers_of(layer):
        if isinstance(reader, layers.Conv2D):
            inner = [(reader, offset)]
        elif isinstance(reader, (layers.AveragePooling2D, layers.MaxPooling2D,
                                 layers.Dropout)):
            inner = _readers_at(reader, offset)
        elif isinstance(reader, layers.Concatenate):
            inputs = reader._inbound_nodes[0].inbound_layers
            position = sum(int(x.output.shape[-1]) for x in inputs[:inputs.index(layer)])
            inner = _readers_at(reader, offset + position)
        else:
            return None
        if not inner:
            return None
        found += inner
    return found


def concat_chains(model: keras.Model) -> list[ConcatChain]:
    """Every outermost concatenation whose channels only convolutions read, in graph
    order, with what sets each of its channels."""
    found = []
    for layer in model.layers:
        if not isinstance(layer, layers.Concatenate) or \
                any(isinstance(r, layers.Concatenate) for r in readers_of(layer)):
            continue
        segments, readers = _segments(layer), _readers_at(layer)
        if readers and any(segment.source is not None for segment in segments):
            found.append(ConcatChain(layer, segments, readers))
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
    """A copy of `model` with every equalizable activation and concatenation equalized
    on `pixels` (uint8 calibration images), and how many tensors that was. The copy's
    outputs equal `model`'s up to float rounding."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    found, concats = chains(copy), concat_chains(copy)
    if not found and not concats:
        return copy, 0
    maxima = channel_maxima(copy, [relu.output for _, relu, _ in found] +
                            [chain.concat.output for chain in concats], pixels)
    for (source, _, readers), activation_max in zip(found, maxima):
        weight_max = _weight_max([(r, 0) for r in readers], activation_max.size)
        rescale(source, readers, _scales(activation_max, weight_max, alpha))
    applied: dict = {}  # concatenation -> the scales its channels were divided by
    for chain, activation_max in zip(concats, maxima[len(found):]):
        applied[chain.concat] = _rescale_concat(chain, activation_max, applied, alpha)
    return copy, len(found) + len(concats)


def channel_maxima(model: keras.Model, tensors: list, pixels: np.ndarray,
                   batch: int = 16) -> list[np.ndarray]:
    """Each tensor's largest value per channel over `pixels`, a batch at a time (at
    299x299 the stem's activations of a few hundred images would not fit in memory)."""
    probe = keras.Model(model.inputs, tensors)
    maxima = None
    for start in range(0, len(pixels), batch):
        outputs = probe(normalize(pixels[start:start + batch]), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        found = [np.asarray(values).max(axis=(0, 1, 2)) for values in outputs]
        maxima = found if maxima is None else [np.maximum(a, b) for a, b in zip(maxima, found)]
    return maxima


def _weight_max(readers: list[tuple[object, int]], width: int) -> np.ndarray:
    """The largest weight magnitude of each of `width` input channels over `readers`
    (convolution, the input channel at which they start)."""
    return np.max([np.abs(r.get_weights()[0])[:, :, at:at + width].max(axis=(0, 1, 3))
                   for r, at in readers], axis=0)


def _multiply_inputs(reader, at: int, s: np.ndarray) -> None:
    """Multiply `reader`'s weights for input channels at .. at + len(s) by s."""
    weights = reader.get_weights()
    weights[0][:, :, at:at + s.size, :] *= s[None, None, :, None]
    reader.set_weights(weights)


def _parts(chain: ConcatChain):
    """(segment, the slice of the concatenation's channels it holds)."""
    start = 0
    for segment in chain.segments:
        yield segment, slice(start, start + segment.width)
        start += segment.width


def _rescale_concat(chain: ConcatChain, activation_max: np.ndarray, applied: dict,
                    alpha: float) -> np.ndarray:
    """Equalize one concatenation, its maxima measured before any rescaling (`applied`:
    the scales of the concatenations already done); returns the scales its channels now
    carry."""
    activation_max = activation_max.copy()
    for segment, part in _parts(chain):  # what an upstream rescaling left in passed channels
        if segment.upstream in applied:
            activation_max[part] /= applied[segment.upstream]
    weight_max = _weight_max(chain.readers, activation_max.size)
    carried = rescale_concat(chain, _scales(activation_max, weight_max, alpha))
    for segment, part in _parts(chain):
        if segment.upstream in applied:
            carried[part] = applied[segment.upstream]
    return carried


def rescale_concat(chain: ConcatChain, s: np.ndarray) -> np.ndarray:
    """Divide the concatenation's channel c by s_c where a batch norm or a conv sets it
    (channels passed through keep s_c = 1) and multiply its readers' weights for it by
    s_c: the same function. Returns the scales applied (see _feasible)."""
    s = np.array(s, np.float32)
    for segment, part in _parts(chain):
        if segment.source is None:
            s[part] = 1.0
        else:
            s[part] = _feasible(segment.source, s[part])
            _divide_output(segment.source, s[part])
    for reader, at in chain.readers:
        _multiply_inputs(reader, at, s)
    return s


def rescale(source, readers: list, s: np.ndarray) -> np.ndarray:
    """Divide channel c of `source`'s output by s_c and multiply the readers' weights for
    it by s_c: the same function. Returns the scales applied (see _feasible)."""
    s = _feasible(source, np.asarray(s, np.float32))
    _divide_output(source, s)
    for reader in readers:
        _multiply_inputs(reader, 0, s)
    return s
