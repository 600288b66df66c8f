"""make quantize: variants, calibration on real photos, drift from real outputs, artifacts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from PIL import Image

from build import images
from quantize import drift, edgetpu, pipeline, pool_islands, recipe, variants
from runtime import preprocessing
from runtime.classify import Classifier, Quantization
from runtime.fileio import sha256
from tensorflow.lite.python import schema_py_generated as schema

from conftest import CALIBRATION_DIR, ROOT


def test_every_variant_report_and_manifest(tiny_run):
    out, report = tiny_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["variants"]) == set(variants.POST_TRAINING)
    for name, entry in manifest["variants"].items():
        path = out / entry["file"]
        assert name in entry["file"] and entry["sha256"] == sha256(path)
    assert (out / "report.md").read_text().count("| int8 ") == 2  # variants and flips
    assert "what each accuracy-first step bought" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["variants"].keys() == \
        set(variants.POST_TRAINING)
    assert manifest["calibration"]["images"] + manifest["held_out"]["images"] == 15
    io = {name: e["io"] for name, e in manifest["variants"].items()}
    assert io["int8-stock"]["input_dtype"] == io["int8-stock"]["output_dtype"] == "int8"
    assert io["int8"]["input_dtype"] == "int8" and io["uint8"]["input_dtype"] == "uint8"
    assert io["int8"]["output_dtype"] == io["uint8"]["output_dtype"] == "float32"  # logits
    assert io["uint8"]["input_quantization"] == [1.0, 0]  # raw pixels go straight in
    assert io["int8"]["input_quantization"] == [1.0, -128]  # pixel - 128: exact too
    assert "fallback" not in manifest["variants"]["int8"]  # made from int8's CPU file:
    assert manifest["variants"]["int8-fallback"]["recipe"] == manifest["variants"]["int8"]["recipe"]
    assert manifest["variants"]["int8-fallback"]["fallback"]["budget"] == 0.06
    assert manifest["variants"]["int8"]["recipe"]["weight_ranges"]
    assert manifest["variants"]["int8"]["recipe"]["int8_logits_weights"]
    assert not manifest["variants"]["coral"]["recipe"]["int8_logits_weights"]
    assert io["float32"]["input_dtype"] == "float32"
    for name, entry in report["variants"].items():
        assert entry["conversion"]["seconds"] > 0 and entry["conversion"]["peak_rss_mb"] > 0
    assert report["variants"]["float32"]["drift"]["sqnr_db"] > 80  # TFLite float == Keras
    assert report["int8_layer_errors"]["worst"]
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("name", ["int8", "uint8"])
def test_full_integer_models_are_integer_but_for_pool_islands_and_logits(tiny_run, name):
    out, report = tiny_run
    cpu_graph = (out / pipeline.model_file(name)).read_bytes()
    ops = edgetpu.read_ops(pool_islands.integer_pools(cpu_graph))
    assert [op.name for op in ops[-3:]] == ["DEQUANTIZE", "CONV_2D", "RESHAPE"]
    activations = {t.dtype for op in ops[:-3] for t in op.inputs + op.outputs
                   if not t.constant}
    assert activations <= {"int8", "uint8"}, activations
    # judged on the file that ships: the islands and float logits run on the CPU
    assert not report["variants"][name]["edgetpu"]["single_subgraph"]
    floats = {op.name for op in edgetpu.read_ops(cpu_graph)[:-3]
              if any(t.dtype == "float32" for t in op.inputs + op.outputs)}
    assert floats == {"DEQUANTIZE", "AVERAGE_POOL_2D", "QUANTIZE"}


def test_the_coral_file_is_one_edge_tpu_subgraph_and_named_for_it(tiny_run):
    out, report = tiny_run
    entry = report["variants"]["coral"]
    assert entry["file"] == "inception_v3_coral.tflite"
    assert entry["edgetpu"]["single_subgraph"] and entry["edgetpu"]["on_cpu"] == []
    assert entry["io"]["input_dtype"] == entry["io"]["output_dtype"] == "uint8"
    assert entry["io"]["input_quantization"] == [1.0, 0]
    ops = edgetpu.read_ops((out / entry["file"]).read_bytes())
    assert {t.dtype for op in ops for t in op.inputs + op.outputs if not t.constant} \
        == {"uint8", "int8"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variants"]["coral"]["sha256"] == sha256(out / entry["file"])
    assert "not on the PATH" in entry["edgetpu"]["compiler"]["note"]
    assert "inception_v3_coral.tflite" in (out / "report.md").read_text()


def test_float_model_is_not_edgetpu_ready(tiny_run):
    out, _ = tiny_run
    ready = edgetpu.readiness((out / pipeline.model_file("float32")).read_bytes())
    assert not ready["single_subgraph"] and ready["ops_on_edgetpu"] == 0
    assert "float32, not 8-bit" in ready["first_unmapped"]["why"][0]


def test_uint8_raw_pixels_match_int8_on_preprocessed_floats(tiny_run):
    out, _ = tiny_run
    as_uint8 = Classifier(out / pipeline.model_file("uint8"))
    as_int8 = Classifier(out / pipeline.model_file("int8"))
    assert as_uint8.input_quantization == Quantization(1.0, 0) and as_uint8.feeds_pixels
    photos = preprocessing.list_images(CALIBRATION_DIR)
    a, b = [], []
    for path in photos:
        pixels = preprocessing.resize_pixels(path, as_uint8.size)
        tensor = as_uint8.input_tensor(pixels)
        assert tensor.dtype == np.uint8 and np.array_equal(tensor[0], pixels)
        a.append(as_uint8.run(tensor))
        b.append(as_int8.run(as_int8.input_tensor(pixels)))
    result = drift.compare(np.stack(b), np.stack(a))
    assert result["cosine_similarity"] > 0.995
    assert result["top1_agreement"] >= 0.8


def _corrupt_weights(model: bytes, seed: int = 0) -> bytes:
    """Scramble the int8 weights of every convolution: a model that computes garbage."""
    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    graph = m.subgraphs[0]
    rng = np.random.default_rng(seed)
    for op in graph.operators:
        weights = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 else None
        if weights is not None and weights.type == schema.TensorType.INT8:
            buffer = m.buffers[weights.buffer]
            if buffer.data is not None and len(buffer.data):
                buffer.data = rng.integers(-127, 128, len(buffer.data)).astype(np.int8) \
                    .view(np.uint8)
    builder = flatbuffers.Builder(0)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_drift_report_gets_worse_for_a_corrupted_model(tiny_float_dir, tiny_run, tmp_path,
                                                       monkeypatch):
    _, clean = tiny_run
    real_convert = variants.convert
    monkeypatch.setattr(variants, "convert",
                        lambda *a, **k: _corrupt_weights(real_convert(*a, **k)))
    config = pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=tmp_path / "bad",
                                     variants=["int8-stock"],
                                     calibration_dir=CALIBRATION_DIR, layer_errors=False)
    broken = pipeline.run(config)["variants"]["int8-stock"]["drift"]
    good = clean["variants"]["int8-stock"]["drift"]
    assert broken["sqnr_db"] < good["sqnr_db"] - 10
    assert broken["cosine_similarity"] < good["cosine_similarity"] - 0.1
    assert broken["top1_agreement"] < good["top1_agreement"]


def _photo(path: Path, size=(64, 48), mode="RGB"):
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) \
        .convert(mode).save(path)


def test_bad_calibration_files_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    _photo(folder / "good1.jpg")
    _photo(folder / "good2.png", mode="RGBA")
    _photo(folder / "grey.png", mode="L")
    (folder / "notes.jpg").write_text("this is a text file named .jpg")
    (folder / "truncated.jpg").write_bytes((folder / "good1.jpg").read_bytes()[:100])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one_pixel.png")
    Image.new("1", (14000, 14000)).save(folder / "huge.png")  # 196 Mpx: a decompression bomb
    loaded = images.load_folder(folder, (75, 75))
    assert sorted(Path(p).name for p in loaded.paths) == ["good1.jpg", "good2.png", "grey.png"]
    assert sorted(Path(p).name for p in loaded.skipped) == [
        "huge.png", "notes.jpg", "one_pixel.png", "truncated.jpg"]
    assert "smaller than 16x16" in loaded.skipped[str(folder / "one_pixel.png")]
    assert loaded.pixels.shape == (3, 75, 75, 3) and loaded.pixels.dtype == np.uint8


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "holds no image files"),
    (lambda d: (d / "bad.jpg").write_text("not an image"), "No usable image"),
    (lambda d: Image.new("RGB", (1, 1)).save(d / "dot.png"), "No usable image"),
])
def test_unusable_calibration_folder_is_a_clear_error_and_writes_nothing(
        make, message, tiny_float_dir, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    make(folder)
    out = tmp_path / "out"
    config = pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=out, variants=["int8"],
                                     calibration_dir=folder)
    with pytest.raises(images.DataError, match=message):
        pipeline.run(config)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


@pytest.mark.slow
def test_failure_mid_run_leaves_no_half_written_folder(tiny_float_dir, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("converter crashed")
    monkeypatch.setattr(recipe, "build", fail)  # after float32 is written
    out = tmp_path / "out"
    config = pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=out,
                                     variants=["float32", "int8"],
                                     calibration_dir=CALIBRATION_DIR)
    with pytest.raises(RuntimeError):
        pipeline.run(config)
    assert list(tmp_path.iterdir()) == []


def test_calibration_and_held_out_never_overlap():
    loaded = images.load_folder(CALIBRATION_DIR, (75, 75))
    calibration, held_out = images.split(loaded, calibration_samples=200)
    assert not set(calibration.paths) & set(held_out.paths)
    assert len(calibration) + len(held_out) == len(loaded)


def test_check_op_rules():
    t = lambda dtype, shape=(1, 8, 8, 4), constant=False, dynamic=False: edgetpu.Tensor(
        "t", dtype, list(shape), constant, dynamic)
    ok = edgetpu.Op(0, "CONV_2D", [t("int8"), t("int8", (4, 3, 3, 4), True)], [t("int8")],
                    dilation=(1, 1))
    assert edgetpu.check_op(ok) == []
    assert "not an Edge TPU operation" in edgetpu.check_op(
        edgetpu.Op(1, "EXP", [t("int8")], [t("int8")]))[0]
    assert "dynamic size" in edgetpu.check_op(
        edgetpu.Op(2, "ADD", [t("int8", dynamic=True)], [t("int8")]))[0]
    assert "batch must be 1" in edgetpu.check_op(
        edgetpu.Op(3, "ADD", [t("int8", (2, 8, 8, 4))], [t("int8")]))[0]
    assert "fused RELU" in edgetpu.check_op(
        edgetpu.Op(4, "AVERAGE_POOL_2D", [t("int8")], [t("int8")],
                   fused_activation="RELU"))[0]
    assert "SOFTMAX" in edgetpu.check_op(
        edgetpu.Op(5, "SOFTMAX", [t("int8", (1, 20000))], [t("int8", (1, 20000))]))[0]


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """A stand-in edgetpu_compiler on the PATH: copies the model as the compiled file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text('#!/bin/sh\n# args: -s -o OUTDIR MODEL\nstem=$(basename "$4" .tflite)\n'
                    'cp "$4" "$3/${stem}_edgetpu.tflite"\necho "Model compiled successfully."\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return fake


def test_edgetpu_compiler_is_run_when_installed(tiny_run, tmp_path, monkeypatch,
                                                fake_compiler):
    """Checks our invocation and what we keep."""
    out, _ = tiny_run
    model = tmp_path / "m.tflite"
    shutil.copy(out / pipeline.model_file("uint8"), model)
    result = edgetpu.compile_model(model, tmp_path)
    assert result["compiled"] and result["model"] == "m_edgetpu.tflite"
    assert "compiled successfully" in (tmp_path / result["log"]).read_text()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "not on the PATH" in edgetpu.compile_model(model, tmp_path)["note"]


@pytest.mark.slow
def test_the_coral_run_keeps_the_compiled_model_and_log(tiny_float_dir, tmp_path,
                                                       fake_compiler):
    out = tmp_path / "run"
    pipeline.run(pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=out,
                                         variants=["coral"], calibration_dir=CALIBRATION_DIR,
                                         layer_errors=False))
    compiled = json.loads((out / "manifest.json").read_text())["variants"]["coral"][
        "edgetpu_compiled"]
    assert compiled["model"]["file"] == "inception_v3_coral_edgetpu.tflite"
    assert compiled["model"]["sha256"] == sha256(out / compiled["model"]["file"])
    assert "compiled successfully" in (out / compiled["log"]["file"]).read_text()


@pytest.mark.slow
def test_make_quantize_cli_builds_float_model_first(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "quantize", "--weights", "random", "--input-size", "75",
         "--depth-multiplier", "0.25", "--variants", "uint8", "--no-layer-errors",
         "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| uint8 " in result.stdout and "random weights" in result.stdout
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"float", "inception_v3_uint8.tflite", "report.md", "report.json",
            "manifest.json"} <= names


@pytest.mark.parametrize("args, message", [
    (["--variants", "int4"], "Unknown variant"),
    (["--max-top1-drop", "1"], "needs EVAL"),
    (["--calib", "/nonexistent"], "does not exist"),
])
def test_make_quantize_cli_errors(args, message, tiny_float_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "quantize", "--model", str(tiny_float_dir),
                             "--out", str(tmp_path / "run"), *args],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "run").exists()


def test_qat_variant_needs_quantization_aware_training(tiny_float_dir, tmp_path):
    config = pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=tmp_path / "out",
                                     variants=["qat"], calibration_dir=CALIBRATION_DIR)
    with pytest.raises(ValueError, match="make qat DATA="):
        pipeline.run(config)
    assert variants.parse_variants("") == variants.POST_TRAINING


def test_an_op_fed_by_the_cpu_after_the_edge_tpu_part_stays_on_the_cpu():
    t = lambda dtype: edgetpu.Tensor("t", dtype, [1, 8, 8, 4], False, False)
    ops = [edgetpu.Op(0, "CAST", [t("uint8")], [t("float32")]),            # before: fine
           edgetpu.Op(1, "CONV_2D", [t("int8")], [t("int8")], [0]),
           edgetpu.Op(2, "ARG_MAX", [t("int8")], [t("int32")], [1]),        # unsupported
           edgetpu.Op(3, "ADD", [t("int8")], [t("int8")], [2]),             # fed by it
           edgetpu.Op(4, "CONV_2D", [t("int8")], [t("int8")], [1])]         # a branch: fine
    for op in ops:
        op.problems = edgetpu.check_op(op)
    assert edgetpu.place(ops) == [False, True, False, False, True]
    assert "op #2" in ops[3].problems[0]
