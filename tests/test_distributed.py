"""`make train WORKERS=2` and `make qat WORKERS=2`: two local workers of one
tf.distribute cluster train together, end to end, and write what one worker would."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from build import distributed, float_model
from runtime.classify import Classifier

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--input-size", "75", "--depth-multiplier", "0.25", "--no-flip",
         "--min-crop-area", "0.7"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def few_digits(tmp_path_factory) -> Path:
    """20 training and 6 validation images of each digit, one sub-folder per class."""
    from sklearn.datasets import load_digits
    root = tmp_path_factory.mktemp("few_digits")
    data = load_digits()
    count: dict[tuple[str, int], int] = {}
    for i, (image, label) in enumerate(zip(data.images, data.target)):
        split = "val" if i % 4 == 0 else "train"
        if count.get((split, label), 0) >= (6 if split == "val" else 20):
            continue
        count[split, label] = count.get((split, label), 0) + 1
        folder = root / split / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((86, 86), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return root


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def two_worker_model(few_digits, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("two") / "float"
    done = _run("build.train", "--data", str(few_digits / "train"), "--val",
                str(few_digits / "val"), "--out", str(out), "--epochs", "1", *SMALL,
                "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_two_workers_train_a_loadable_model_with_the_usual_card(two_worker_model, few_digits,
                                                                tmp_path):
    out, stdout = two_worker_model
    losses = [float(x) for x in re.findall(r" - loss: ([^ ]+)", stdout)]
    assert len(losses) == 1 and all(math.isfinite(x) for x in losses)
    model, card = float_model.load(out)
    assert card["training"]["workers"] == 2
    logits = model(np.zeros((1, 75, 75, 3), np.float32), training=False)
    assert np.all(np.isfinite(np.asarray(logits[0] if isinstance(logits, list) else logits)))
    one = tmp_path / "one"
    done = _run("build.train", "--data", str(few_digits / "train"), "--val",
                str(few_digits / "val"), "--out", str(one), "--epochs", "1",
                "--limit-per-class", "3", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    single = float_model.read_card(one)
    assert set(single) == set(card) and set(single["training"]) == set(card["training"])
    assert single["training"]["workers"] == 1
    assert not list(out.parent.glob(".*partial*"))  # the other worker wrote nothing here


def test_two_workers_run_quantization_aware_training_then_the_chief_quantizes(
        two_worker_model, few_digits, tmp_path):
    out, _ = two_worker_model
    run = tmp_path / "run"
    done = _run("quantize", "--model", str(out), "--variants", "qat", "--calib",
                str(few_digits / "train"), "--calib-samples", "40", "--held-out-samples",
                "20", "--qat-data", str(few_digits / "train"), "--qat-val",
                str(few_digits / "val"), "--qat-epochs", "1", "--qat-no-flip",
                "--no-layer-errors", "--workers", "2", "--out", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert set(report["variants"]) == {"qat"}
    training = json.loads((run / "manifest.json").read_text())["variants"]["qat"]["training"]
    assert training["workers"] == 2 and training["epochs"] == 1 and not training["flip"]
    assert (run / training["data"]).resolve() == (few_digits / "train").resolve()
    qat = Classifier(run / report["variants"]["qat"]["file"])
    assert np.all(np.isfinite(qat.run(qat.input_tensor(np.zeros((75, 75, 3), np.uint8)))))


def test_workers_option_is_for_training_only(few_digits, tmp_path):
    done = _run("quantize", "--variants", "int8", "--calib", str(few_digits / "train"),
                "--workers", "2", "--input-size", "75", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "WORKERS=N shares quantization-aware training" in done.stderr
    assert not (tmp_path / "run").exists()


def test_tf_config_that_is_not_a_cluster_spec_is_one_sentence(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distributed.InputError, match="TF_CONFIG is not a tf.distribute"):
        distributed.cluster()
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}))
    assert distributed.num_workers() == 2 and not distributed.is_chief()
