"""Shared fixtures: models are built once per session, at small sizes where allowed."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

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


def shared_folder(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder made once per test session for every xdist worker: the first worker to
    ask makes it while the others wait on a lock, so the two cores of `make test` never
    build the same models twice (pytest-xdist's recipe for session fixtures). Tests that
    change files copy the folder first."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_float_dir(tmp_path_factory):
    """A small float model folder (75x75, depth multiplier 0.25, random weights)."""
    from build import float_model

    def make(folder: Path) -> None:
        config = float_model.BuildConfig(input_size=(75, 75), num_classes=1000,
                                         depth_multiplier=0.25, weights="random", seed=1)
        model, info = float_model.build(config)
        float_model.save(model, float_model.model_card(model, config, info), folder)
    return shared_folder(tmp_path_factory, "tiny_float", make)


@pytest.fixture(scope="session")
def tiny_run(tiny_float_dir, tmp_path_factory):
    """Every variant of the tiny model, calibrated on the shipped photos, and its report."""
    from quantize import pipeline, variants

    def make(folder: Path) -> None:
        pipeline.run(pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=folder,
                                             variants=list(variants.POST_TRAINING),
                                             calibration_dir=CALIBRATION_DIR))
    out = shared_folder(tmp_path_factory, "tiny_run", make)
    return out, json.loads((out / "report.json").read_text())


# Fixtures that quantize or benchmark whole runs: a test that uses one is slow, so
# `make test-fast` (-m "not slow") skips it without each test having to say so.
SLOW_FIXTURES = {"tiny_run", "bench", "keras_reference_299", "setting", "built"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
