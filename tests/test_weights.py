"""Weights load from Keras' ImageNet layout, slim checkpoints and the project's own files."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import json

import numpy as np
import pytest

from build import float_model, weights
from build import inception_v3 as net
from build.keras_env import keras, tf
from runtime.fileio import sha256

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keras_h5(tmp_path_factory, keras_reference_299):
    """Keras' InceptionV3 saved in the legacy HDF5 layout of the official ImageNet file."""
    path = tmp_path_factory.mktemp("keras") / weights.KERAS_WEIGHTS_FILE
    keras_reference_299.save_weights(str(path))
    return path


def _batch(size: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def test_keras_h5_layout_gives_keras_outputs(keras_h5, keras_reference_299):
    model = net.InceptionV3((299, 299, 3), 1000, seed=7)
    info = weights.load_weights(model, str(keras_h5))
    assert info.source == "keras-h5"
    x = _batch(299)
    ours = net.end_point_model(model, ["Mixed_7c", "Predictions"])(x)
    reference = keras.Model(keras_reference_299.input,
                            [keras_reference_299.get_layer("mixed10").output,
                             keras_reference_299.output])(x)
    np.testing.assert_allclose(ours["Mixed_7c"], reference[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours["Predictions"], reference[1], atol=1e-4)
    assert np.argmax(ours["Predictions"], -1).tolist() == np.argmax(reference[1], -1).tolist()


def test_imagenet_path_uses_keras_cache_and_hash(keras_h5, keras_reference_299, tmp_path,
                                                 monkeypatch):
    cache = tmp_path / "keras_home"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / weights.KERAS_WEIGHTS_FILE).write_bytes(keras_h5.read_bytes())
    monkeypatch.setenv("KERAS_HOME", str(cache))
    monkeypatch.setattr(weights, "KERAS_WEIGHTS_MD5",
                        hashlib.md5(keras_h5.read_bytes()).hexdigest())
    model = net.InceptionV3((149, 149, 3), 1000)
    assert weights.load_weights(model, "imagenet").source == "imagenet"
    x = _batch(149)
    np.testing.assert_allclose(model(x), _keras_logits(keras_reference_299, x, 149),
                               rtol=1e-4, atol=1e-4)


def _keras_logits(reference, x, size):
    """The reference's logits at another input size (same weights, softmax removed)."""
    resized = keras.applications.InceptionV3(weights=None, input_shape=(size, size, 3),
                                             classifier_activation=None)
    resized.set_weights(reference.get_weights())
    return resized(x)


def test_unreachable_download_is_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "KERAS_WEIGHTS_URL", "http://127.0.0.1:9/nothing.h5")
    model = net.InceptionV3((75, 75, 3), 1000)
    with pytest.raises(weights.WeightsError, match="Could not download .* WEIGHTS=<path"):
        weights.load_weights(model, "imagenet")
    assert not list((tmp_path / "models").glob("*.h5"))  # nothing half-downloaded
    with pytest.warns(UserWarning, match="RANDOM weights"):
        info = weights.load_weights(model, "auto")
    assert info.source == "random" and "RANDOM" in info.warning


def test_new_head_keeps_imagenet_trunk(keras_h5):
    model = net.InceptionV3((149, 149, 3), 10)
    info = weights.load_weights(model, str(keras_h5))
    assert any("new 10-class head" in note for note in info.notes)


def _write_slim_checkpoint(model, prefix, extra=None):
    """A TF1-style checkpoint with slim's variable names (weights/biases, BatchNorm/...)."""
    names, tensors = [], []
    for layer in model.layers:
        for w in layer.weights:
            short = w.name.split("/")[-1].split(":")[0]
            short = {"kernel": "weights", "bias": "biases"}.get(short, short)
            names.append(f"{layer.name}/{short}")
            tensors.append(w.numpy())
    for name, value in (extra or {}).items():
        names.append(name)
        tensors.append(value)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=tensors)
    return names


@pytest.mark.slow
def test_slim_checkpoint_round_trip(tmp_path):
    source = net.InceptionV3((149, 149, 3), 1001, create_aux_logits=True, seed=1,
                             depth_multiplier=0.5)
    prefix = tmp_path / "inception_v3.ckpt"
    names = _write_slim_checkpoint(source, prefix, {"global_step": np.int64(5)})
    assert "InceptionV3/Conv2d_1a_3x3/weights" in names
    assert "InceptionV3/Mixed_5b/Branch_1/Conv2d_0b_5x5/BatchNorm/moving_mean" in names
    assert "InceptionV3/Logits/Conv2d_1c_1x1/biases" in names
    target = net.InceptionV3((149, 149, 3), 1001, create_aux_logits=True, seed=2,
                             depth_multiplier=0.5)
    info = weights.load_weights(target, str(prefix))
    assert info.source == "slim-checkpoint"
    x = _batch(149)
    for ours, theirs in zip(target(x), source(x)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # A deployment graph without the aux head loads the same checkpoint.
    deploy = net.InceptionV3((149, 149, 3), 1001, depth_multiplier=0.5)
    weights.load_weights(deploy, str(prefix))
    np.testing.assert_allclose(deploy(x), source(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_shape_mismatch_changes_nothing(tmp_path):
    source = net.InceptionV3((75, 75, 3), 1001, depth_multiplier=0.25, seed=1)
    prefix = tmp_path / "model.ckpt"
    _write_slim_checkpoint(source, prefix)
    target = net.InceptionV3((75, 75, 3), 1000, depth_multiplier=0.25, seed=2)
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(weights.WeightsError, match="Shape mismatch at InceptionV3/Logits"):
        weights.load_weights(target, str(prefix))
    assert all(np.array_equal(a, b) for a, b in zip(before, target.get_weights()))
    wrong_depth = net.InceptionV3((75, 75, 3), 1001, depth_multiplier=0.5)
    with pytest.raises(weights.WeightsError, match="depth multiplier"):
        weights.load_weights(wrong_depth, str(prefix))


def test_keras_h5_into_wrong_depth_is_an_error(keras_h5):
    model = net.InceptionV3((75, 75, 3), 1000, depth_multiplier=0.5)
    with pytest.raises(weights.WeightsError, match="Shape mismatch"):
        weights.load_weights(model, str(keras_h5))


@pytest.mark.parametrize("spec, message", [
    ("missing.h5", "No weights file"), ("missing.keras", "No weights file"),
    ("nowhere/else", "No weights file"), ("imagenette", "No weights file"),
])
def test_missing_files_are_clear_errors(spec, message, tmp_path):
    model = net.InceptionV3((75, 75, 3), 10, depth_multiplier=0.25)
    with pytest.raises(weights.WeightsError, match=message):
        weights.load_weights(model, str(tmp_path / spec))


def test_not_a_weights_file(tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("not hdf5")
    model = net.InceptionV3((75, 75, 3), 10, depth_multiplier=0.25)
    with pytest.raises(weights.WeightsError):
        weights.load_weights(model, str(bogus))


@pytest.mark.slow
def test_project_model_and_h5_round_trip(tmp_path):
    config = float_model.BuildConfig(input_size=(75, 75), num_classes=7,
                                     depth_multiplier=0.25, weights="random", seed=5)
    model, info = float_model.build(config)
    float_model.save(model, float_model.model_card(model, config, info), tmp_path / "m")
    model.save_weights(str(tmp_path / "w.h5"))
    x = _batch(75)
    for path in (tmp_path / "m" / float_model.MODEL_FILE, tmp_path / "w.h5"):
        fresh = net.InceptionV3((75, 75, 3), 7, depth_multiplier=0.25, seed=9)
        assert weights.load_weights(fresh, str(path)).source.startswith("project")
        np.testing.assert_allclose(fresh(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_make_build_writes_model_and_card(tmp_path):
    out = tmp_path / "float"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--weights", "random", "--input-size", "75",
         "--num-classes", "5", "--depth-multiplier", "0.25", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    card = json.loads((out / float_model.CARD_FILE).read_text())
    assert card["input_size"] == [75, 75] and card["num_classes"] == 5
    assert card["weights"]["source"] == "random"
    assert card["files"][float_model.MODEL_FILE] == sha256(out / float_model.MODEL_FILE)
    assert card["parameters"] > 0 and card["multiply_adds"] > 0
    assert card["preprocessing"]["central_fraction"] == 0.875
    model, _ = float_model.load(out)
    assert model.output_shape == (None, 5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("args, message", [
    (["--input-size", "74"], "75 to 2048"),
    (["--weights", "/nonexistent/w.h5"], "No weights file"),
    (["--depth-multiplier", "0"], "--depth-multiplier"),
])
def test_make_build_errors_write_nothing(args, message, tmp_path):
    out = tmp_path / "float"
    result = subprocess.run([sys.executable, "-m", "build", "--out", str(out), *args],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
