"""Training, quantization-aware training, evaluation and the drift gate on real labelled
images: scikit-learn's handwritten digits, upscaled to the smallest InceptionV3 input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from build import float_model
from build.train import TrainConfig, train
from conftest import ROOT
from quantize import edgetpu, evaluate, pipeline, pool_islands
from quantize.qat import quantization_aware
from runtime import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """digits/train and digits/eval (every 6th image), one sub-folder per class."""
    from sklearn.datasets import load_digits
    root = tmp_path_factory.mktemp("digits")
    data = load_digits()
    for i, (image, label) in enumerate(zip(data.images, data.target)):
        split = "eval" if i % 6 == 0 else "train"
        folder = root / split / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((86, 86), Image.BILINEAR).save(folder / f"{i:04d}.png")
    black = root / "black"
    black.mkdir()
    for i in range(20):  # a deliberately broken calibration set
        Image.new("RGB", (86, 86)).save(black / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "float"
    config = TrainConfig(data=str(digits / "train"), val=str(digits / "eval"), out=str(out),
                         input_size=(75, 75), depth_multiplier=0.25, epochs=8,
                         learning_rate=3e-3, flip=False, min_crop_area=0.7)
    return out, config, train(config)


def test_training_reaches_accuracy_and_writes_a_float_model(trained):
    out, _, result = trained
    assert result["val_top1"] >= 0.85
    model, card = float_model.load(out)
    assert card["labels"] == [f"digit_{i}" for i in range(10)]
    assert card["training"]["val_images"] == 300 and card["num_classes"] == 10


def test_rerun_resumes_from_the_checkpoint(trained, capsys):
    out, config, _ = trained
    config.epochs = 9
    train(config)
    assert "Resuming from epoch 8" in capsys.readouterr().out


def _quantize(float_dir, out, calibration, digits, variants=("int8",), qat=None, **options):
    config = pipeline.QuantizeConfig(
        float_dir=float_dir, out=out, variants=list(variants), calibration_dir=calibration,
        calibration_samples=100, eval_dir=digits / "eval", max_top1_drop=1.0,
        layer_errors=False, **options)
    return pipeline.run(config, qat)


@pytest.fixture(scope="module")
def good_run(trained, digits, tmp_path_factory):
    """int8 and uint8 of the trained model, calibrated on its own training images."""
    out, _, _ = trained
    run = tmp_path_factory.mktemp("good") / "run"
    return run, _quantize(out, run, digits / "train", digits, ("int8", "uint8"))


def test_int8_keeps_float_accuracy_and_passes_the_gate(good_run):
    _, good = good_run
    int8 = good["variants"]["int8"]["eval"]
    assert int8["images"] == 300
    assert int8["top1_agreement"] >= 0.97
    assert int8["top1_change_points"] >= -1.0
    assert good["gate"]["failed"] == [] and good["variants"]["int8"]["gate"] == "pass"
    assert good["variants"]["uint8"]["gate"] == "pass"


def test_the_gate_bites_a_broken_calibration_with_exit_code_1(trained, digits, tmp_path,
                                                              capsys):
    """Calibrated on black images, the int8 loses more than the budget: make quantize
    fails, names it, and the report says FAIL."""
    out, _, _ = trained
    from quantize.__main__ import main
    code = cli.run(main, ["--model", str(out), "--variants", "int8",
                          "--calib", str(digits / "black"), "--eval", str(digits / "eval"),
                          "--max-top1-drop", "1", "--no-layer-errors",
                          "--out", str(tmp_path / "run")])
    assert code == 1
    assert "over the top-1 budget of 1.0 points: int8 (top-1" in capsys.readouterr().err
    assert "FAIL" in (tmp_path / "run" / "report.md").read_text()
    broken = json.loads((tmp_path / "run" / "report.json").read_text())
    assert broken["gate"]["failed"] == ["int8"]
    assert broken["variants"]["int8"]["eval"]["top1_change_points"] < -1.0


def test_quantization_aware_training_converts_to_full_integer(trained, digits, tmp_path):
    """The qat file is all-integer but its float logits; qat-fallback is the same file
    with the first layers the search kept in float (budget 100 % here), as the manifest
    records them."""
    out, _, _ = trained
    model, card = float_model.load(out)
    settings = {"variants": ["qat", "qat-fallback"], "calibration_samples": 100}
    _, calibration, held_out = pipeline.calibration_images(pipeline.QuantizeConfig(
        out, tmp_path / "qat", calibration_dir=digits / "train", **settings),
        tuple(card["input_size"]))  # as make qat starts it: from the run's calibration images
    qat = quantization_aware(model, card, str(digits / "train"), epochs=1, flip=False,
                             min_crop_area=0.7, limit_per_class=50,
                             calibration=calibration.pixels, held_out=held_out.pixels)
    report = _quantize(out, tmp_path / "qat", digits / "train", digits,
                       ("qat", "qat-fallback"), qat, fallback_budget=1.0)
    entry = report["variants"]["qat"]
    assert (entry["io"]["input_dtype"], entry["io"]["output_dtype"]) == ("int8", "float32")
    assert entry["io"]["input_quantization"] == [1.0, -128] and entry["io"]["feeds_raw_pixels"]
    files = {name: (tmp_path / "qat" / e["file"]).read_bytes()
             for name, e in report["variants"].items()}
    ops = edgetpu.read_ops(pool_islands.integer_pools(files["qat"]))
    float_ops = [op.name for op in ops if any(t.dtype == "float32" for t in op.inputs
                                              + op.outputs if not t.constant)]
    # every op quantized but the logits layer: the CPU file differs only by its pool
    # islands and its float logits, as the accuracy-first int8's
    assert float_ops == ["DEQUANTIZE", "CONV_2D", "RESHAPE"], float_ops
    assert entry["eval"]["quantized_top1"] >= 0.85
    assert entry["eval"]["top1_agreement"] >= 0.9
    layers = report["variants"]["qat-fallback"]["fallback"]["float_layers"]
    names = [op.name for op in edgetpu.read_ops(files["qat-fallback"])]
    if layers:  # the stem's pools float too, inside the prefix
        prefix = names[1:names.index("QUANTIZE")]
        assert names[0] == "DEQUANTIZE" and set(prefix) <= {"CONV_2D", "MAX_POOL_2D"}, names
        assert prefix.count("CONV_2D") == len(layers), names
    else:
        assert files["qat-fallback"] == files["qat"]
    assert all(layer["layer"].startswith("InceptionV3/Conv2d_") for layer in layers)
    manifest = json.loads((tmp_path / "qat" / "manifest.json").read_text())
    assert manifest["variants"]["qat-fallback"]["fallback"] == {
        "budget": 1.0, "float_layers": [layer["layer"] for layer in layers]}


def test_eval_streams_a_run_and_a_model(trained, good_run, digits, tmp_path):
    out, _, _ = trained
    run, report = good_run
    result = evaluate.evaluate_run(run, digits / "eval")
    assert set(result["variants"]) == {"int8", "uint8"}
    for name in ("int8", "uint8"):
        np.testing.assert_allclose(result["variants"][name]["quantized_top1"],
                                   report["variants"][name]["eval"]["quantized_top1"])
    float_top1 = evaluate.evaluate_model(out, digits / "eval")["top1"]
    assert float_top1 == pytest.approx(result["variants"]["int8"]["float_top1"])
    tflite = evaluate.evaluate_model(run / pipeline.model_file("int8"), digits / "eval")
    assert tflite["top1"] == pytest.approx(result["variants"]["int8"]["quantized_top1"])
    cli = subprocess.run([sys.executable, "-m", "quantize.evaluate", "--run", str(run),
                          "--data", str(digits / "eval")], cwd=ROOT, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "| int8 |" in cli.stdout
    # The run's float model lives outside it (MODEL=): the bundle still finds its classes.
    import tarfile
    from quantize.bundle import make_bundle
    archive = make_bundle(run / pipeline.model_file("int8"), tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:
        labels = tar.extractfile("inception_v3_int8/labels.txt").read().decode()
    card = json.loads((out / "model_card.json").read_text())
    assert labels.splitlines() == card["labels"]
