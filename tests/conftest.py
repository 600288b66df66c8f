"""Shared fixtures: models are built once per session, at small sizes where allowed."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from build.keras_env import keras  # noqa: E402


@pytest.fixture(scope="session")
def keras_lib():
    return keras


@pytest.fixture(scope="session")
def keras_reference_299():
    """keras.applications.InceptionV3 with random weights and non-trivial BN statistics."""
    import numpy as np
    model = keras.applications.InceptionV3(weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            beta, mean, var = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.1, beta.shape).astype("float32"),
                               rng.normal(0, 0.1, mean.shape).astype("float32"),
                               rng.uniform(0.5, 1.5, var.shape).astype("float32")])
    return model


CALIBRATION_DIR = ROOT / "calibration_data"


@pytest.fixture(scope="session")
def tiny_float_dir(tmp_path_factory):
    """A small float model folder (75x75, depth multiplier 0.25, random weights)."""
    from build import float_model
    config = float_model.BuildConfig(input_size=(75, 75), num_classes=1000,
                                     depth_multiplier=0.25, weights="random", seed=1)
    model, info = float_model.build(config)
    out = tmp_path_factory.mktemp("tiny") / "float"
    float_model.save(model, float_model.model_card(model, config, info), out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_float_dir, tmp_path_factory):
    """Every variant of the tiny model, calibrated on the shipped photos."""
    from quantize import pipeline, variants
    out = tmp_path_factory.mktemp("tiny_run")
    config = pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=out,
                                     variants=list(variants.POST_TRAINING),
                                     calibration_dir=CALIBRATION_DIR)
    return out, pipeline.run(config)


# Fixtures that quantize or benchmark whole runs: a test that uses one is slow, so
# `make test-fast` (-m "not slow") skips it without each test having to say so.
SLOW_FIXTURES = {"tiny_run", "bench", "keras_reference_299", "setting", "built"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
