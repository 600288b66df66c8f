"""TF-slim's own `nets/inception_v3_test.py`, every assertion ported to `build/`.

slim builds with placeholders of unknown size and checks shapes after a run; Keras knows
the size when it builds, so the same shapes are checked on the built tensors (batch 5 as
slim, or its 1). Test names follow slim's.
"""
from __future__ import annotations

import numpy as np
import pytest

from build import inception_v3 as net
from build.keras_env import keras

BATCH = 5
ENDPOINTS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3",
             "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_5a_3x3", "Mixed_5b", "Mixed_5c",
             "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
             "Mixed_7a", "Mixed_7b", "Mixed_7c"]
SHAPES = {
    "Conv2d_1a_3x3": [5, 149, 149, 32], "Conv2d_2a_3x3": [5, 147, 147, 32],
    "Conv2d_2b_3x3": [5, 147, 147, 64], "MaxPool_3a_3x3": [5, 73, 73, 64],
    "Conv2d_3b_1x1": [5, 73, 73, 80], "Conv2d_4a_3x3": [5, 71, 71, 192],
    "MaxPool_5a_3x3": [5, 35, 35, 192], "Mixed_5b": [5, 35, 35, 256],
    "Mixed_5c": [5, 35, 35, 288], "Mixed_5d": [5, 35, 35, 288], "Mixed_6a": [5, 17, 17, 768],
    "Mixed_6b": [5, 17, 17, 768], "Mixed_6c": [5, 17, 17, 768], "Mixed_6d": [5, 17, 17, 768],
    "Mixed_6e": [5, 17, 17, 768], "Mixed_7a": [5, 8, 8, 1280], "Mixed_7b": [5, 8, 8, 2048],
    "Mixed_7c": [5, 8, 8, 2048]}


def images(height: int = 299, width: int = 299, batch: int = BATCH):
    return keras.Input((height, width, 3), batch_size=batch)


def layer_name(tensor) -> str:
    """The op (layer) that made a tensor: slim's `tensor.op.name`."""
    return tensor._keras_history.layer.name


def shape(tensor) -> list[int]:
    return list(tensor.shape)


def test_build_classification_network():
    logits, end_points = net.inception_v3(images(), 1000)
    assert layer_name(logits).startswith("InceptionV3/Logits/SpatialSqueeze")
    assert shape(logits) == [BATCH, 1000]
    assert "Predictions" in end_points
    assert shape(end_points["Predictions"]) == [BATCH, 1000]


def test_build_pre_logits_network():
    pre_pool, end_points = net.inception_v3(images(), 0)
    assert layer_name(pre_pool).startswith("InceptionV3/Logits/AvgPool")
    assert shape(pre_pool) == [BATCH, 1, 1, 2048]
    assert "Logits" not in end_points and "Predictions" not in end_points


def test_build_base_network():
    final, end_points = net.inception_v3_base(images())
    assert layer_name(final).startswith("InceptionV3/Mixed_7c")
    assert shape(final) == [BATCH, 8, 8, 2048]
    assert sorted(end_points) == sorted(ENDPOINTS)


@pytest.mark.slow
def test_build_only_up_to_final_endpoint():
    for index, endpoint in enumerate(ENDPOINTS):
        out, end_points = net.inception_v3_base(images(), final_endpoint=endpoint)
        assert layer_name(out).startswith(f"InceptionV3/{endpoint}")
        assert sorted(end_points) == sorted(ENDPOINTS[:index + 1])


def test_build_and_check_all_end_points_up_to_mixed_7c():
    _, end_points = net.inception_v3_base(images(), final_endpoint="Mixed_7c")
    assert sorted(end_points) == sorted(SHAPES)
    for name, expected in SHAPES.items():
        assert shape(end_points[name]) == expected, name


def test_model_has_expected_number_of_parameters():
    inputs = keras.Input((299, 299, 3), batch_size=BATCH)
    final, _ = net.inception_v3_base(inputs)
    assert keras.Model(inputs, final).count_params() == 21_802_784


def test_build_end_points():
    _, end_points = net.inception_v3(images(), 1000)
    assert shape(end_points["Logits"]) == [BATCH, 1000]
    assert shape(end_points["AuxLogits"]) == [BATCH, 1000]
    assert shape(end_points["Mixed_7c"]) == [BATCH, 8, 8, 2048]
    assert shape(end_points["PreLogits"]) == [BATCH, 1, 1, 2048]


def _scaled_endpoints(depth_multiplier: float) -> None:
    _, end_points = net.inception_v3(images(), 1000)
    _, scaled = net.inception_v3(images(), 1000, depth_multiplier=depth_multiplier)
    for key in (k for k in end_points if k.startswith(("Mixed", "Conv"))):
        assert scaled[key].shape[-1] == int(end_points[key].shape[-1] * depth_multiplier), key


def test_build_end_points_with_depth_multiplier_less_than_one():
    _scaled_endpoints(0.5)


@pytest.mark.slow
def test_build_end_points_with_depth_multiplier_greater_than_one():
    _scaled_endpoints(2.0)


@pytest.mark.parametrize("depth_multiplier", [-0.1, 0.0])
def test_raise_value_error_with_invalid_depth_multiplier(depth_multiplier):
    with pytest.raises(ValueError):
        net.inception_v3(images(), 1000, depth_multiplier=depth_multiplier)


def test_half_size_images():
    logits, end_points = net.inception_v3(images(150, 150), 1000)
    assert shape(logits) == [BATCH, 1000]
    assert shape(end_points["Mixed_7c"]) == [BATCH, 3, 3, 2048]


def test_unknown_image_shape():  # slim: a placeholder, then fed 299x299
    logits, end_points = net.inception_v3(images(), 1000)
    assert shape(logits) == [BATCH, 1000]
    assert shape(end_points["Mixed_7c"]) == [BATCH, 8, 8, 2048]


def test_global_pool_unknown_image_shape():  # slim: a placeholder, then fed 400x600
    inputs = images(400, 600, batch=1)
    logits, end_points = net.inception_v3(inputs, 1000, global_pool=True)
    assert shape(logits) == [1, 1000]
    assert shape(end_points["Mixed_7c"]) == [1, 11, 17, 2048]
    out = keras.Model(inputs, logits)(np.zeros((1, 400, 600, 3), np.float32))
    assert out.shape == (1, 1000)


def test_unknown_batch_size():
    logits, _ = net.inception_v3(keras.Input((299, 299, 3)), 1000)
    assert shape(logits) == [None, 1000]
    model = net.InceptionV3((299, 299, 3), 1000)
    assert model(np.zeros((BATCH, 299, 299, 3), np.float32)).shape == (BATCH, 1000)


def test_evaluation():
    model = net.InceptionV3((299, 299, 3), 1000, seed=0)
    predictions = np.argmax(model(np.random.default_rng(0).uniform(
        size=(2, 299, 299, 3)).astype(np.float32), training=False), 1)
    assert predictions.shape == (2,)


def test_train_eval_with_reuse():  # slim reuses variables: one Keras model, two batch sizes
    model = net.InceptionV3((150, 150, 3), 1000, seed=0)
    train_out = model(np.zeros((BATCH, 150, 150, 3), np.float32), training=True)
    eval_out = model(np.zeros((2, 150, 150, 3), np.float32), training=False)
    assert train_out.shape == (BATCH, 1000) and eval_out.shape == (2, 1000)


def test_logits_not_squeezed():
    logits, _ = net.inception_v3(images(batch=1), 1000, spatial_squeeze=False)
    assert shape(logits) == [1, 1, 1, 1000]


def test_aux_head_that_cannot_be_squeezed_names_the_fix():
    with pytest.raises(ValueError, match="aux head's map is 3x7.*create_aux_logits=False"):
        net.InceptionV3((400, 600, 3), 1000, global_pool=True, create_aux_logits=True)
