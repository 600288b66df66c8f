"""The device runtime on tflite-runtime (the legacy interpreter, numpy < 2) answers as it
does on ai-edge-litert, and says what to do with a model it is too old for."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from runtime import preprocessing, tflite_graph as tg
from runtime.classify import Classifier

from conftest import CALIBRATION_DIR, ROOT

PYTHON = ROOT / ".venv-tflite-runtime" / "bin" / "python"
SCRIPT = ROOT / "tests" / "interpreter_outputs.py"
pytestmark = pytest.mark.skipif(not PYTHON.is_file(), reason="no tflite-runtime environment "
                                "(make setup-tflite-runtime)")


def legacy_outputs(models, images) -> dict:
    result = subprocess.run([str(PYTHON), str(SCRIPT), "--models", *map(str, models),
                             "--images", *map(str, images)], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["interpreter"] == "tflite_runtime"
    return found["models"]


def test_every_variant_gives_the_same_answers_as_ai_edge_litert(tiny_run):
    """Reference kernels: the same bits for integer outputs; for float ones a cosine
    similarity of at least 0.999 per image (dynamic range quantizes activations on the
    fly, and the two versions do it differently: up to 2 % of the logits' range). Default kernels (each package's own XNNPACK version, which round
    differently by a few output steps): the same top-1."""
    out, report = tiny_run
    models = sorted(out.glob("*.tflite"))
    images = preprocessing.list_images(CALIBRATION_DIR)[:6]
    legacy = legacy_outputs(models, images)
    for model in models:
        entry = legacy[model.name]
        assert "error" not in entry, f"{model.name}: {entry.get('error')}"
        for kernels in ("reference", "default"):
            classifier = Classifier(model, num_threads=1, kernels=kernels)
            ours = np.stack([classifier.outputs(image) for image in images])
            theirs = np.asarray(entry[kernels], dtype=np.float32)
            assert np.array_equal(np.argmax(ours, 1), np.argmax(theirs, 1)), \
                (model.name, kernels)
            if kernels == "reference" and classifier.output_quantization is not None:
                assert np.array_equal(ours, theirs), model.name
            elif kernels == "reference":
                cosine = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) *
                                                     np.linalg.norm(theirs, axis=1))
                assert np.min(cosine) >= 0.999, (model.name, cosine)


def test_an_op_version_it_predates_is_one_sentence_naming_the_fix(tiny_run, tmp_path):
    out, _ = tiny_run
    m = tg.load((out / "inception_v3_float32.tflite").read_bytes())
    for opcode in m.operatorCodes:
        opcode.version = 99  # newer than any interpreter knows
    future = tmp_path / "future.tflite"
    future.write_bytes(tg.pack(m))
    error = legacy_outputs([future], preprocessing.list_images(CALIBRATION_DIR)[:1])[
        "future.tflite"]["error"]
    assert "op version newer than this interpreter knows" in error
    assert "pip install ai-edge-litert" in error and "\n" not in error
