"""The builder reproduces TF-slim's InceptionV3: endpoints, names, shapes, channels."""
from __future__ import annotations

import numpy as np
import pytest

from build import inception_v3 as net
from build.keras_env import keras

# The shape comments of slim's inception_v3.py at 299x299.
SHAPES_299 = {
    "Conv2d_1a_3x3": (149, 149, 32), "Conv2d_2a_3x3": (147, 147, 32),
    "Conv2d_2b_3x3": (147, 147, 64), "MaxPool_3a_3x3": (73, 73, 64),
    "Conv2d_3b_1x1": (73, 73, 80), "Conv2d_4a_3x3": (71, 71, 192),
    "MaxPool_5a_3x3": (35, 35, 192), "Mixed_5b": (35, 35, 256), "Mixed_5c": (35, 35, 288),
    "Mixed_5d": (35, 35, 288), "Mixed_6a": (17, 17, 768), "Mixed_6b": (17, 17, 768),
    "Mixed_6c": (17, 17, 768), "Mixed_6d": (17, 17, 768), "Mixed_6e": (17, 17, 768),
    "Mixed_7a": (8, 8, 1280), "Mixed_7b": (8, 8, 2048), "Mixed_7c": (8, 8, 2048),
}


def test_endpoint_shapes_at_299():
    _, end_points = net.inception_v3(keras.Input((299, 299, 3)), num_classes=1000)
    for name, shape in SHAPES_299.items():
        assert tuple(end_points[name].shape[1:]) == shape, name
    assert tuple(end_points["AuxLogits"].shape[1:]) == (1000,)
    assert tuple(end_points["AvgPool_1a"].shape[1:]) == (1, 1, 2048)
    assert tuple(end_points["PreLogits"].shape[1:]) == (1, 1, 2048)
    assert tuple(end_points["Logits"].shape[1:]) == (1000,)
    assert tuple(end_points["Predictions"].shape[1:]) == (1000,)


def test_final_endpoint_is_honoured():
    out, end_points = net.inception_v3_base(keras.Input((299, 299, 3)),
                                            final_endpoint="Mixed_6a")
    assert list(end_points) == list(net.BASE_ENDPOINTS[:11])
    assert tuple(out.shape[1:]) == (17, 17, 768)
    with pytest.raises(ValueError, match="Unknown final endpoint"):
        net.inception_v3_base(keras.Input((299, 299, 3)), final_endpoint="Mixed_9z")


@pytest.mark.parametrize("size, pool, aux_kernel, top_map", [
    (149, "AvgPool_1a_3x3", "Conv2d_2a_1x1", (3, 3, 2048)),
    (75, "AvgPool_1a_1x1", None, (1, 1, 2048)),
])
def test_small_inputs_use_reduced_kernels(size, pool, aux_kernel, top_map):
    model = net.InceptionV3((size, size, 3), 1001, create_aux_logits=aux_kernel is not None)
    names = {layer.name for layer in model.layers}
    assert f"InceptionV3/Logits/{pool}" in names
    if aux_kernel:
        assert f"InceptionV3/AuxLogits/{aux_kernel}" in names
        assert "InceptionV3/AuxLogits/Conv2d_2a_5x5" not in names
    assert model.get_layer("InceptionV3/Mixed_7c/concat").output_shape[1:] == top_map
    logits = model(np.zeros((1, size, size, 3), np.float32))
    logits = logits[0] if isinstance(logits, list) else logits
    assert logits.shape == (1, 1001)


def test_non_square_input_works_with_global_pool():
    model = net.InceptionV3((120, 200, 3), 10, global_pool=True)
    assert model(np.zeros((1, 120, 200, 3), np.float32)).shape == (1, 10)
    with pytest.raises(ValueError, match="global_pool=True"):
        net.InceptionV3((299, 420, 3), 10)


def test_slim_scope_names_and_quirks():
    model = net.InceptionV3((299, 299, 3), 1001, create_aux_logits=True)
    names = {layer.name for layer in model.layers}
    for name in [
        "InceptionV3/Conv2d_1a_3x3", "InceptionV3/Conv2d_1a_3x3/BatchNorm",
        "InceptionV3/Mixed_5c/Branch_1/Conv2d_0b_1x1",
        "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5",
        "InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1",
        "InceptionV3/Mixed_6a/Branch_1/Conv2d_1a_1x1",
        "InceptionV3/Mixed_7b/Branch_1/Conv2d_0b_3x1",
        "InceptionV3/Mixed_7c/Branch_1/Conv2d_0c_3x1",
        "InceptionV3/Mixed_7c/Branch_2/Conv2d_0d_3x1",
        "InceptionV3/AuxLogits/Conv2d_2a_5x5", "InceptionV3/AuxLogits/Conv2d_2b_1x1",
        "InceptionV3/Logits/AvgPool_1a_8x8", "InceptionV3/Logits/Conv2d_1c_1x1",
    ]:
        assert name in names, name
    assert "InceptionV3/Mixed_7b/Branch_1/Conv2d_0c_3x1" not in names
    assert "InceptionV3/Mixed_7c/Branch_1/Conv2d_0b_3x1" not in names
    conv = model.get_layer("InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1")
    assert conv.kernel_size == (3, 3) and conv.strides == (2, 2) and not conv.use_bias
    bn = model.get_layer("InceptionV3/Conv2d_1a_3x3/BatchNorm")
    assert bn.epsilon == 0.001 and not bn.scale and bn.center
    weight_names = {w.name.split(":")[0] for w in bn.weights}
    assert "InceptionV3/Conv2d_1a_3x3/BatchNorm/moving_variance" in weight_names
    assert model.get_layer("InceptionV3/Logits/Conv2d_1c_1x1").use_bias


def test_parameter_count_equals_keras_applications(keras_reference_299):
    model = net.InceptionV3((299, 299, 3), 1000)
    assert model.count_params() == keras_reference_299.count_params() == 23_851_784


def _channels(depth_multiplier: float) -> dict[str, int]:
    _, end_points = net.inception_v3_base(keras.Input((299, 299, 3)),
                                          depth_multiplier=depth_multiplier)
    return {name: t.shape[-1] for name, t in end_points.items()}


def test_depth_multiplier_half_halves_every_endpoint():
    full, half = _channels(1.0), _channels(0.5)
    assert all(half[name] == full[name] // 2 for name in full)


def test_depth_multiplier_quarter_hits_min_depth():
    # Worked out by hand from slim's max(int(d * 0.25), 16) per branch.
    expected = {"Conv2d_1a_3x3": 16, "Conv2d_2b_3x3": 16, "Conv2d_3b_1x1": 20,
                "Conv2d_4a_3x3": 48, "Mixed_5b": 72, "Mixed_5d": 72, "Mixed_6a": 192,
                "Mixed_6e": 192, "Mixed_7a": 320, "Mixed_7c": 512}
    channels = _channels(0.25)
    assert {k: channels[k] for k in expected} == expected


@pytest.mark.parametrize("depth_multiplier", [0, -0.5])
def test_non_positive_depth_multiplier_is_an_error(depth_multiplier):
    with pytest.raises(ValueError, match="depth_multiplier is not greater than zero"):
        net.InceptionV3((149, 149, 3), depth_multiplier=depth_multiplier)


@pytest.mark.parametrize("shape, message", [
    ((74, 74, 3), "too small"), ((299, 74, 3), "too small"),
    ((149, 149, 1), "3-channel RGB"), ((None, None, 3), "known input height"),
])
def test_bad_input_shapes_are_clear_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        net.InceptionV3(shape, create_aux_logits=False)


def test_aux_head_needs_107_pixels():
    with pytest.raises(ValueError, match="create_aux_logits=False"):
        net.InceptionV3((106, 106, 3), create_aux_logits=True)
    net.InceptionV3((107, 107, 3), create_aux_logits=True)


def test_end_point_model_reaches_every_endpoint():
    model = net.InceptionV3((75, 75, 3), 5)
    names = list(net.BASE_ENDPOINTS) + ["AvgPool_1a", "PreLogits", "Logits", "Predictions"]
    outputs = net.end_point_model(model, names)(np.zeros((1, 75, 75, 3), np.float32))
    assert set(outputs) == set(names)
    np.testing.assert_allclose(np.sum(outputs["Predictions"]), 1.0, rtol=1e-5)


def test_same_seed_same_weights():
    a, b, c = (net.InceptionV3((75, 75, 3), 5, seed=s, depth_multiplier=0.25)
               for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
