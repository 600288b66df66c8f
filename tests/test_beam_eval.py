"""`make eval RUNNER=beam`: the Beam pipeline gives the in-process evaluation's result to
the last bit, counts unreadable images as skipped, and a worker that raises fails the job
with one sentence."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import tflite_graph as tg
from runtime.classify import Classifier
from runtime.fileio import sha256

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "calibration_data").glob("*.jpg"))
WNIDS = ("n01440764", "n02102040")  # ImageNet classes 0 and 217


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """The shipped photos under two ImageNet classes, plus a text file named .jpg."""
    root = tmp_path_factory.mktemp("labelled")
    (root / "classes.tsv").write_text("wnid\timagenet_index\nn01440764\t0\nn02102040\t217\n")
    for i, photo in enumerate(PHOTOS):
        folder = root / WNIDS[i % 2]
        folder.mkdir(exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    (root / WNIDS[0] / "not_an_image.jpg").write_text("hello")
    return root


@pytest.fixture(scope="module")
def run_with_flips(tiny_run, tmp_path_factory) -> Path:
    """tiny_run with its float32 file's logits bias jolted: a variant that flips often,
    so the comparison covers flips, not only sums."""
    run, _ = tiny_run
    out = tmp_path_factory.mktemp("flips") / "run"
    shutil.copytree(run, out)
    path = out / "inception_v3_float32.tflite"
    model = tg.load(path.read_bytes())
    graph = model.subgraphs[0]
    logits = [op for op in graph.operators if len(op.inputs) == 3][-1]
    bias = graph.tensors[logits.inputs[2]]
    values = tg.buffer_array(model, bias)
    classifier = Classifier(path)
    spread = float(np.std(classifier.outputs(PHOTOS[0])))
    noise = np.random.default_rng(0).normal(0, spread, values.shape)
    tg.set_buffer(model, bias, (values + noise).astype(values.dtype))
    path.write_bytes(tg.pack(model))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["variants"]["float32"].update(bytes=path.stat().st_size, sha256=sha256(path))
    manifest["float_model"]["folder"] = str((run / manifest["float_model"]["folder"]).resolve())
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantize.evaluate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_beam_gives_the_in_process_result_exactly(run_with_flips, labelled, tmp_path):
    run = run_with_flips
    done = _eval("--run", str(run), "--data", str(labelled), "--threads", "1",
                 "--json", str(tmp_path / "in_process.json"))  # a fresh process: 1 thread
    assert done.returncode == 0, done.stderr[-2000:]
    in_process = json.loads((tmp_path / "in_process.json").read_text())
    assert in_process["skipped"] == 1 and in_process["images"] == len(PHOTOS)
    assert len(in_process["variants"]["float32"]["flipped"]) >= 3
    done = _eval("--run", str(run), "--data", str(labelled), "--beam", "--workers", "2",
                 "--json", str(tmp_path / "beam.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    beam = json.loads((tmp_path / "beam.json").read_text())
    expected = in_process
    differ = sorted((name, key, v[key], beam["variants"][name].get(key))
                    for name, v in expected["variants"].items() for key in v
                    if beam["variants"][name].get(key) != v[key])
    assert beam == expected, differ  # flips, sums, intervals: all


def test_a_worker_that_raises_fails_the_job_in_one_sentence(tiny_run, labelled, tmp_path):
    """A float model that only a worker loads (its card carries no checksum, so the
    driver cannot tell) is broken: the job fails, no result, no traceback."""
    run, _ = tiny_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    manifest = json.loads((run / "manifest.json").read_text())
    shutil.copytree(run / manifest["float_model"]["folder"], broken / "float")
    card_path = broken / "float" / "model_card.json"
    card = json.loads(card_path.read_text())
    card.pop("files", None)
    card_path.write_text(json.dumps(card))
    (broken / "float" / "inception_v3.keras").write_bytes(b"not a zip")
    done = _eval("--run", str(broken), "--data", str(labelled), "--beam",
                 "--json", str(tmp_path / "result.json"))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the Beam pipeline failed" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr, errors
    assert not (tmp_path / "result.json").exists()


def test_beam_options_are_refused_without_beam(tiny_run, labelled):
    run, _ = tiny_run
    done = _eval("--run", str(run), "--data", str(labelled), "--runner=FlinkRunner")
    assert done.returncode == 2 and "unrecognized arguments: --runner=FlinkRunner" in done.stderr


def test_local_pipelines_name_their_runner():
    # Left to the DirectRunner, every pipeline first tried to fetch the Prism runner from
    # GitHub (and, offline, left an empty beam-temp folder behind before falling back):
    # local runs name the FnApiRunner, the runner measured here; BEAM_ARGS' own --runner
    # is kept.
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    from quantize import beam_eval
    local = beam_eval.options(2)
    assert local.view_as(StandardOptions).runner == "FnApiRunner"
    assert local.view_as(DirectOptions).direct_num_workers == 2
    flink = beam_eval.options(1, ["--runner=FlinkRunner", "--flink_master=host:8081"])
    assert flink.view_as(StandardOptions).runner == "FlinkRunner"
