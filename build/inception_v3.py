"""InceptionV3 as TF-slim's `nets/inception_v3.py` defines it, in Keras 2 (tf-keras).

Layer names are slim's variable scopes (`InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5`),
quirks included, so a slim checkpoint maps onto the model name for name and the code
documents the checkpoint. Each slim conv is three layers: the convolution (named by the
scope, no bias), `<scope>/BatchNorm` (no scale, epsilon 0.001) and `<scope>/Relu`.

Shapes in the comments are for a 299x299 input.
"""
from __future__ import annotations

import re
from typing import Callable

from build.keras_env import keras

layers = keras.layers

SCOPE = "InceptionV3"
MIN_INPUT_SIZE = 75
# Mixed_6e must be at least 5x5 for the aux head's 5x5/3 average pool (slim has no fallback).
MIN_AUX_INPUT_SIZE = 107
BATCH_NORM_EPSILON = 0.001

BASE_ENDPOINTS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3",
    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_5a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d",
    "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)
HEAD_ENDPOINTS = ("AuxLogits", "AvgPool_1a", "PreLogits", "Logits", "Predictions")


def depth_fn(depth_multiplier: float, min_depth: int) -> Callable[[int], int]:
    """slim's `depth(d)`: the channel count of a layer under the depth multiplier."""
    if depth_multiplier <= 0:
        raise ValueError("depth_multiplier is not greater than zero.")
    return lambda d: max(int(d * depth_multiplier), min_depth)


def _reduced_kernel_size_for_small_input(input_tensor, kernel_size: list[int]) -> list[int]:
    """slim's rule: shrink a pooling/conv kernel to the feature map when the map is smaller.

    Unknown spatial sizes keep the full kernel (slim assumes the input is large enough).
    """
    shape = input_tensor.shape.as_list()
    if shape[1] is None or shape[2] is None:
        return list(kernel_size)
    return [min(shape[1], kernel_size[0]), min(shape[2], kernel_size[1])]


class _Slim:
    """The slim ops used by the network, with slim's defaults, building Keras layers."""

    def __init__(self, scope: str, batch_norm_decay: float, weight_decay: float,
                 seed: int | None, folded: bool = False):
        self.scope = scope
        self.folded = folded  # batch norm folded into the conv's bias (see fold_batch_norm)
        self.batch_norm_decay = batch_norm_decay
        self.regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
        self.seed = seed
        self._count = 0

    def _initializer(self, stddev: float | None = None):
        # A per-layer seed derived from the model seed keeps weights reproducible.
        seed = None if self.seed is None else self.seed * 1000 + self._count
        self._count += 1
        if stddev is not None:
            return keras.initializers.TruncatedNormal(stddev=stddev, seed=seed)
        return keras.initializers.VarianceScaling(scale=2.0, seed=seed)  # slim's default

    def conv2d(self, net, filters: int, kernel_size, scope: str, stride: int = 1,
               padding: str = "same", normalize: bool = True, stddev: float | None = None):
        name = f"{self.scope}/{scope}"
        net = layers.Conv2D(
            filters, tuple(kernel_size), strides=stride, padding=padding,
            use_bias=not normalize or self.folded, kernel_initializer=self._initializer(stddev),
            kernel_regularizer=self.regularizer, name=name)(net)
        if not normalize:
            return net
        if self.folded:
            return layers.ReLU(name=f"{name}/Relu")(net)
        net = layers.BatchNormalization(
            axis=3, scale=False, epsilon=BATCH_NORM_EPSILON,
            momentum=self.batch_norm_decay, name=f"{name}/BatchNorm")(net)
        return layers.ReLU(name=f"{name}/Relu")(net)

    def max_pool2d(self, net, kernel_size, scope: str, stride: int = 1,
                   padding: str = "same"):
        return layers.MaxPooling2D(tuple(kernel_size), strides=stride, padding=padding,
                                   name=f"{self.scope}/{scope}")(net)

    def avg_pool2d(self, net, kernel_size, scope: str, stride: int = 1,
                   padding: str = "same"):
        return layers.AveragePooling2D(tuple(kernel_size), strides=stride, padding=padding,
                                       name=f"{self.scope}/{scope}")(net)

    def concat(self, tensors, scope: str):
        return layers.Concatenate(axis=3, name=f"{self.scope}/{scope}/concat")(tensors)


def _check_input(inputs) -> None:
    shape = inputs.shape.as_list()
    if len(shape) != 4:
        raise ValueError(f"InceptionV3 takes a 4-D NHWC image batch, got shape {shape}.")
    height, width, channels = shape[1:]
    if channels != 3:
        raise ValueError(f"InceptionV3 takes 3-channel RGB images, got {channels} channel(s); "
                         "convert the images to RGB first.")
    if height is None or width is None:
        raise ValueError("InceptionV3 needs a known input height and width (the reduced "
                         "kernel sizes and their names depend on them); give input_shape.")
    if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE:
        raise ValueError(f"Input {height}x{width} is too small: InceptionV3 needs at least "
                         f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}.")


def inception_v3_base(inputs, final_endpoint: str = "Mixed_7c", min_depth: int = 16,
                      depth_multiplier: float = 1.0, scope: str = SCOPE,
                      batch_norm_decay: float = 0.9997, weight_decay: float = 0.00004,
                      seed: int | None = None, folded: bool = False):
    """The trunk from `inputs` to `final_endpoint`; returns `(net, end_points)` like slim."""
    if final_endpoint not in BASE_ENDPOINTS:
        raise ValueError(f"Unknown final endpoint {final_endpoint}")
    _check_input(inputs)
    depth = depth_fn(depth_multiplier, min_depth)
    slim = _Slim(scope, batch_norm_decay, weight_decay, seed, folded)
    end_points: dict = {}

    def done(end_point: str, net) -> bool:
        end_points[end_point] = net
        return end_point == final_endpoint

    # Stem, padding VALID unless stated. 299 x 299 x 3
    net = slim.conv2d(inputs, depth(32), [3, 3], "Conv2d_1a_3x3", stride=2, padding="valid")
    if done("Conv2d_1a_3x3", net): return net, end_points  # 149 x 149 x 32
    net = slim.conv2d(net, depth(32), [3, 3], "Conv2d_2a_3x3", padding="valid")
    if done("Conv2d_2a_3x3", net): return net, end_points  # 147 x 147 x 32
    net = slim.conv2d(net, depth(64), [3, 3], "Conv2d_2b_3x3", padding="same")
    if done("Conv2d_2b_3x3", net): return net, end_points  # 147 x 147 x 64
    net = slim.max_pool2d(net, [3, 3], "MaxPool_3a_3x3", stride=2, padding="valid")
    if done("MaxPool_3a_3x3", net): return net, end_points  # 73 x 73 x 64
    net = slim.conv2d(net, depth(80), [1, 1], "Conv2d_3b_1x1", padding="valid")
    if done("Conv2d_3b_1x1", net): return net, end_points  # 73 x 73 x 80
    net = slim.conv2d(net, depth(192), [3, 3], "Conv2d_4a_3x3", padding="valid")
    if done("Conv2d_4a_3x3", net): return net, end_points  # 71 x 71 x 192
    net = slim.max_pool2d(net, [3, 3], "MaxPool_5a_3x3", stride=2, padding="valid")
    if done("MaxPool_5a_3x3", net): return net, end_points  # 35 x 35 x 192

    # Inception blocks, padding SAME unless stated.
    def mixed_5(net, end_point: str, branch_1_names: tuple[str, str], pool_depth: int):
        s = end_point
        b0 = slim.conv2d(net, depth(64), [1, 1], f"{s}/Branch_0/Conv2d_0a_1x1")
        b1 = slim.conv2d(net, depth(48), [1, 1], f"{s}/Branch_1/{branch_1_names[0]}")
        b1 = slim.conv2d(b1, depth(64), [5, 5], f"{s}/Branch_1/{branch_1_names[1]}")
        b2 = slim.conv2d(net, depth(64), [1, 1], f"{s}/Branch_2/Conv2d_0a_1x1")
        b2 = slim.conv2d(b2, depth(96), [3, 3], f"{s}/Branch_2/Conv2d_0b_3x3")
        b2 = slim.conv2d(b2, depth(96), [3, 3], f"{s}/Branch_2/Conv2d_0c_3x3")
        b3 = slim.avg_pool2d(net, [3, 3], f"{s}/Branch_3/AvgPool_0a_3x3")
        b3 = slim.conv2d(b3, depth(pool_depth), [1, 1], f"{s}/Branch_3/Conv2d_0b_1x1")
        return slim.concat([b0, b1, b2, b3], s)

    standard = ("Conv2d_0a_1x1", "Conv2d_0b_5x5")
    net = mixed_5(net, "Mixed_5b", standard, 32)
    if done("Mixed_5b", net): return net, end_points  # 35 x 35 x 256
    # slim's quirk: Mixed_5c's branch 1 is named Conv2d_0b_1x1 / Conv_1_0c_5x5.
    net = mixed_5(net, "Mixed_5c", ("Conv2d_0b_1x1", "Conv_1_0c_5x5"), 64)
    if done("Mixed_5c", net): return net, end_points  # 35 x 35 x 288
    net = mixed_5(net, "Mixed_5d", standard, 64)
    if done("Mixed_5d", net): return net, end_points  # 35 x 35 x 288

    s = "Mixed_6a"
    # slim's quirk: the 3x3 stride-2 convs are named Conv2d_1a_1x1.
    b0 = slim.conv2d(net, depth(384), [3, 3], f"{s}/Branch_0/Conv2d_1a_1x1", stride=2,
                     padding="valid")
    b1 = slim.conv2d(net, depth(64), [1, 1], f"{s}/Branch_1/Conv2d_0a_1x1")
    b1 = slim.conv2d(b1, depth(96), [3, 3], f"{s}/Branch_1/Conv2d_0b_3x3")
    b1 = slim.conv2d(b1, depth(96), [3, 3], f"{s}/Branch_1/Conv2d_1a_1x1", stride=2,
                     padding="valid")
    b2 = slim.max_pool2d(net, [3, 3], f"{s}/Branch_2/MaxPool_1a_3x3", stride=2,
                         padding="valid")
    net = slim.concat([b0, b1, b2], s)
    if done(s, net): return net, end_points  # 17 x 17 x 768

    def mixed_6(net, end_point: str, width: int):
        s = end_point
        b0 = slim.conv2d(net, depth(192), [1, 1], f"{s}/Branch_0/Conv2d_0a_1x1")
        b1 = slim.conv2d(net, depth(width), [1, 1], f"{s}/Branch_1/Conv2d_0a_1x1")
        b1 = slim.conv2d(b1, depth(width), [1, 7], f"{s}/Branch_1/Conv2d_0b_1x7")
        b1 = slim.conv2d(b1, depth(192), [7, 1], f"{s}/Branch_1/Conv2d_0c_7x1")
        b2 = slim.conv2d(net, depth(width), [1, 1], f"{s}/Branch_2/Conv2d_0a_1x1")
        b2 = slim.conv2d(b2, depth(width), [7, 1], f"{s}/Branch_2/Conv2d_0b_7x1")
        b2 = slim.conv2d(b2, depth(width), [1, 7], f"{s}/Branch_2/Conv2d_0c_1x7")
        b2 = slim.conv2d(b2, depth(width), [7, 1], f"{s}/Branch_2/Conv2d_0d_7x1")
        b2 = slim.conv2d(b2, depth(192), [1, 7], f"{s}/Branch_2/Conv2d_0e_1x7")
        b3 = slim.avg_pool2d(net, [3, 3], f"{s}/Branch_3/AvgPool_0a_3x3")
        b3 = slim.conv2d(b3, depth(192), [1, 1], f"{s}/Branch_3/Conv2d_0b_1x1")
        return slim.concat([b0, b1, b2, b3], s)

    for end_point, width in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                             ("Mixed_6e", 192)):
        net = mixed_6(net, end_point, width)
        if done(end_point, net): return net, end_points  # 17 x 17 x 768

    s = "Mixed_7a"
    b0 = slim.conv2d(net, depth(192), [1, 1], f"{s}/Branch_0/Conv2d_0a_1x1")
    b0 = slim.conv2d(b0, depth(320), [3, 3], f"{s}/Branch_0/Conv2d_1a_3x3", stride=2,
                     padding="valid")
    b1 = slim.conv2d(net, depth(192), [1, 1], f"{s}/Branch_1/Conv2d_0a_1x1")
    b1 = slim.conv2d(b1, depth(192), [1, 7], f"{s}/Branch_1/Conv2d_0b_1x7")
    b1 = slim.conv2d(b1, depth(192), [7, 1], f"{s}/Branch_1/Conv2d_0c_7x1")
    b1 = slim.conv2d(b1, depth(192), [3, 3], f"{s}/Branch_1/Conv2d_1a_3x3", stride=2,
                     padding="valid")
    b2 = slim.max_pool2d(net, [3, 3], f"{s}/Branch_2/MaxPool_1a_3x3", stride=2,
                         padding="valid")
    net = slim.concat([b0, b1, b2], s)
    if done(s, net): return net, end_points  # 8 x 8 x 1280

    def mixed_7(net, end_point: str, branch_1_3x1: str):
        s = end_point
        b0 = slim.conv2d(net, depth(320), [1, 1], f"{s}/Branch_0/Conv2d_0a_1x1")
        b1 = slim.conv2d(net, depth(384), [1, 1], f"{s}/Branch_1/Conv2d_0a_1x1")
        b1 = slim.concat([
            slim.conv2d(b1, depth(384), [1, 3], f"{s}/Branch_1/Conv2d_0b_1x3"),
            slim.conv2d(b1, depth(384), [3, 1], f"{s}/Branch_1/{branch_1_3x1}")],
            f"{s}/Branch_1")
        b2 = slim.conv2d(net, depth(448), [1, 1], f"{s}/Branch_2/Conv2d_0a_1x1")
        b2 = slim.conv2d(b2, depth(384), [3, 3], f"{s}/Branch_2/Conv2d_0b_3x3")
        b2 = slim.concat([
            slim.conv2d(b2, depth(384), [1, 3], f"{s}/Branch_2/Conv2d_0c_1x3"),
            slim.conv2d(b2, depth(384), [3, 1], f"{s}/Branch_2/Conv2d_0d_3x1")],
            f"{s}/Branch_2")
        b3 = slim.avg_pool2d(net, [3, 3], f"{s}/Branch_3/AvgPool_0a_3x3")
        b3 = slim.conv2d(b3, depth(192), [1, 1], f"{s}/Branch_3/Conv2d_0b_1x1")
        return slim.concat([b0, b1, b2, b3], s)

    # slim's quirk: Mixed_7b names branch 1's 3x1 conv Conv2d_0b_3x1, Mixed_7c Conv2d_0c_3x1.
    net = mixed_7(net, "Mixed_7b", "Conv2d_0b_3x1")
    if done("Mixed_7b", net): return net, end_points  # 8 x 8 x 2048
    net = mixed_7(net, "Mixed_7c", "Conv2d_0c_3x1")
    done("Mixed_7c", net)
    return net, end_points  # 8 x 8 x 2048


def inception_v3(inputs, num_classes: int = 1000, dropout_keep_prob: float | None = 0.8,
                 min_depth: int = 16, depth_multiplier: float = 1.0,
                 spatial_squeeze: bool = True, create_aux_logits: bool = True,
                 global_pool: bool = False, scope: str = SCOPE,
                 batch_norm_decay: float = 0.9997, weight_decay: float = 0.00004,
                 seed: int | None = None, folded: bool = False):
    """The full network; returns `(logits, end_points)` like slim.

    `is_training` is not an argument: Keras decides batch norm and dropout mode per call
    (`model(x, training=True)`). `dropout_keep_prob=None` leaves the dropout layer out, for
    a deployment graph. `num_classes=0` returns the pooled features, as slim does.
    `folded=True` builds convs with a bias and no batch norm, for `fold_batch_norm`.
    """
    depth = depth_fn(depth_multiplier, min_depth)
    net, end_points = inception_v3_base(
        inputs, min_depth=min_depth, depth_multiplier=depth_multiplier, scope=scope,
        batch_norm_decay=batch_norm_decay, weight_decay=weight_decay, seed=seed, folded=folded)
    slim = _Slim(scope, batch_norm_decay, weight_decay, None if seed is None else seed + 1,
                 folded)

    if create_aux_logits and num_classes:
        aux = end_points["Mixed_6e"]
        if min(aux.shape[1], aux.shape[2]) < 5:
            height, width = inputs.shape[1:3]
            raise ValueError(
                f"Input {height}x{width} is too small for the aux head (Mixed_6e is "
                f"{aux.shape[1]}x{aux.shape[2]}, its average pool needs 5x5, so the input must "
                f"be at least {MIN_AUX_INPUT_SIZE}x{MIN_AUX_INPUT_SIZE}); "
                "pass create_aux_logits=False.")
        aux = slim.avg_pool2d(aux, [5, 5], "AuxLogits/AvgPool_1a_5x5", stride=3,
                              padding="valid")
        aux = slim.conv2d(aux, depth(128), [1, 1], "AuxLogits/Conv2d_1b_1x1")
        kernel_size = _reduced_kernel_size_for_small_input(aux, [5, 5])
        aux = slim.conv2d(aux, depth(768), kernel_size,
                          "AuxLogits/Conv2d_2a_{}x{}".format(*kernel_size),
                          padding="valid", stddev=0.01)
        aux = slim.conv2d(aux, num_classes, [1, 1], "AuxLogits/Conv2d_2b_1x1",
                          normalize=False, stddev=0.001)
        if spatial_squeeze and tuple(aux.shape[1:3]) == (1, 1):
            # Larger inputs leave a map here. slim's tf.squeeze builds on an unknown input
            # size and fails only if the aux logits are run; the endpoint keeps the map.
            aux = _spatial_squeeze(aux, f"{scope}/AuxLogits/SpatialSqueeze")
        end_points["AuxLogits"] = aux

    if global_pool:
        net = layers.GlobalAveragePooling2D(keepdims=True,
                                            name=f"{scope}/Logits/GlobalPool")(net)
        end_points["global_pool"] = net
    else:
        kernel_size = _reduced_kernel_size_for_small_input(net, [8, 8])
        net = slim.avg_pool2d(net, kernel_size,
                              "Logits/AvgPool_1a_{}x{}".format(*kernel_size), padding="valid")
        end_points["AvgPool_1a"] = net  # 1 x 1 x 2048
    if not num_classes:
        return net, end_points
    if dropout_keep_prob is not None:
        net = layers.Dropout(1.0 - dropout_keep_prob, name=f"{scope}/Logits/Dropout_1b")(net)
    end_points["PreLogits"] = net
    logits = slim.conv2d(net, num_classes, [1, 1], "Logits/Conv2d_1c_1x1", normalize=False)
    if spatial_squeeze:
        logits = _spatial_squeeze(logits, f"{scope}/Logits/SpatialSqueeze")
    end_points["Logits"] = logits
    end_points["Predictions"] = layers.Softmax(name=f"{scope}/Predictions")(logits)
    return logits, end_points


inception_v3.default_image_size = 299


def _spatial_squeeze(net, name: str):
    height, width, channels = net.shape.as_list()[1:]
    if (height, width) != (1, 1):
        raise ValueError(
            f"The logits map is {height}x{width}, not 1x1, so it cannot be squeezed: use "
            "global_pool=True for inputs whose sides differ by this much, or "
            "spatial_squeeze=False.")
    return layers.Reshape((channels,), name=name)(net)


def InceptionV3(input_shape: tuple[int, int, int] = (299, 299, 3), num_classes: int = 1000,
                *, create_aux_logits: bool = False, dropout_keep_prob: float | None = 0.8,
                min_depth: int = 16, depth_multiplier: float = 1.0,
                spatial_squeeze: bool = True, global_pool: bool = False,
                batch_norm_decay: float = 0.9997, weight_decay: float = 0.00004,
                seed: int | None = None, folded: bool = False) -> keras.Model:
    """A Keras model of `inception_v3` whose outputs are the logits (and the aux logits).

    Outputs are logits, not probabilities: a deployed graph should end in logits, since
    a quantized softmax flushes every probability under 1/256 to zero.
    `end_point_model(model, ["Predictions"])` gives the softmax.
    """
    inputs = keras.Input(shape=input_shape, name="input")
    logits, end_points = inception_v3(
        inputs, num_classes=num_classes, dropout_keep_prob=dropout_keep_prob,
        min_depth=min_depth, depth_multiplier=depth_multiplier,
        spatial_squeeze=spatial_squeeze, create_aux_logits=create_aux_logits,
        global_pool=global_pool, batch_norm_decay=batch_norm_decay,
        weight_decay=weight_decay, seed=seed, folded=folded)
    aux = end_points.get("AuxLogits")
    if aux is not None and spatial_squeeze and len(aux.shape) == 4:
        raise ValueError(
            f"The aux head's map is {aux.shape[1]}x{aux.shape[2]} at this input size, not 1x1, "
            "so it cannot be an output of logits per class (slim's aux head has no global "
            "pool): pass create_aux_logits=False (deployment graphs have no aux head) or "
            "spatial_squeeze=False.")
    outputs = [logits, aux] if aux is not None else logits
    return keras.Model(inputs, outputs, name="inception_v3")


_ENDPOINT_LAYER_SUFFIX = {"MaxPool": "", "Conv2d": "/Relu", "Mixed_": "/concat"}


def end_point_layer_name(end_point: str, model: keras.Model | None = None,
                         scope: str = SCOPE) -> str:
    """The name of the layer whose output is slim's endpoint `end_point`."""
    for prefix, suffix in _ENDPOINT_LAYER_SUFFIX.items():
        if end_point.startswith(prefix) and end_point in BASE_ENDPOINTS:
            return f"{scope}/{end_point}{suffix}"
    fixed = {"AuxLogits": "AuxLogits/SpatialSqueeze", "Logits": "Logits/SpatialSqueeze",
             "Predictions": "Predictions", "PreLogits": "Logits/Dropout_1b"}
    if end_point in fixed:
        return f"{scope}/{fixed[end_point]}"
    if end_point == "AvgPool_1a" and model is not None:
        for layer in model.layers:
            if layer.name.startswith(f"{scope}/Logits/AvgPool_1a_"):
                return layer.name
    raise ValueError(f"Unknown endpoint {end_point!r}; known: "
                     f"{', '.join(BASE_ENDPOINTS + HEAD_ENDPOINTS)}")


def end_point_model(model: keras.Model, end_points: list[str]) -> keras.Model:
    """A model sharing `model`'s weights whose outputs are the named slim endpoints."""
    outputs = {}
    for name in end_points:
        if name == "Predictions":  # not on the path to a logits output: add it again
            logits = model.get_layer(end_point_layer_name("Logits")).output
            outputs[name] = layers.Softmax(name=f"{SCOPE}/Predictions")(logits)
        else:
            outputs[name] = model.get_layer(end_point_layer_name(name, model)).output
    return keras.Model(model.inputs, outputs)


_ORDER = re.compile(r"/Branch_(\d)/\w*?_?(\d)([a-z])_(\d+x\d+)$")


def conv_creation_order(name: str) -> tuple:
    """Sort key putting trunk conv layers in slim's creation order (Keras' order too).

    Derived from the names alone: the endpoint, then the branch, then slim's `0a, 0b, 1a`
    layer code and kernel. Used to pair layers with Keras' `conv2d_N` numbering.
    """
    end_point = name.split("/")[1]
    branch = _ORDER.search(name)
    if branch is None:
        return (BASE_ENDPOINTS.index(end_point),)
    number, letter, kernel = int(branch.group(2)), branch.group(3), branch.group(4)
    return (BASE_ENDPOINTS.index(end_point), int(branch.group(1)), number, letter, kernel)


def trunk_conv_layers(model: keras.Model, scope: str = SCOPE) -> list:
    """The trunk's conv layers (no heads), in creation order."""
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)
             and layer.name.split("/")[1] in BASE_ENDPOINTS and layer.name.startswith(scope)]
    return sorted(convs, key=lambda layer: conv_creation_order(layer.name))


def fold_batch_norm(model: keras.Model, **config) -> keras.Model:
    """The same network with each batch norm folded into its conv (inference maths).

    With `scale=False`, BN(x) = (x - mean) / sqrt(var + eps) + beta, so the conv becomes
    kernel / sqrt(var + eps) with bias beta - mean / sqrt(var + eps). `config` is what the
    model was built with (InceptionV3's arguments). Quantization-aware training starts
    from this graph: TFLite folds batch norm the same way when it converts.
    """
    folded = InceptionV3(folded=True, **config)
    for layer in folded.layers:
        if not isinstance(layer, layers.Conv2D):
            continue
        source = model.get_layer(layer.name)
        try:
            bn = model.get_layer(f"{layer.name}/BatchNorm")
        except ValueError:
            layer.set_weights(source.get_weights())
            continue
        beta, mean, variance = bn.get_weights()
        inv = 1.0 / (variance + bn.epsilon) ** 0.5
        layer.set_weights([source.get_weights()[0] * inv, beta - mean * inv])
    return folded
