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
