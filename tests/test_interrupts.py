"""Killed or interrupted mid-run, a command leaves nothing a later run or a user could
mistake for output; the same command twice makes the same bytes.

Each run waits until the command has really started writing (its hidden staging folder
exists), then signals it: no sleeps that guess how fast this machine is.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CALIBRATION_DIR, ROOT

QUANTIZE = [sys.executable, "-m", "quantize", "--variants", "int8",
            "--no-layer-errors", "--calib", str(CALIBRATION_DIR)]


def start(args: list[str]) -> subprocess.Popen:
    """The command, with Ctrl-C's default restored in it: a suite started in the background
    (`make test &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_staging(parent: Path, process: subprocess.Popen, limit: float = 600) -> None:
    """Until a `.*.partial-*` entry appears in `parent` (the run is writing)."""
    deadline = time.monotonic() + limit
    while not any(".partial-" in p.name for p in parent.iterdir()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_quantize_leaves_nothing(tiny_float_dir, tmp_path, how):
    out = tmp_path / "run"
    process = start(QUANTIZE + ["--model", str(tiny_float_dir), "--out", str(out)])
    wait_for_staging(tmp_path, process)
    process.send_signal(how)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_killed_quantize_is_cleaned_by_the_rerun_which_makes_the_same_bytes(
        tiny_float_dir, tmp_path):
    out = tmp_path / "run"
    process = start(QUANTIZE + ["--model", str(tiny_float_dir), "--out", str(out)])
    wait_for_staging(tmp_path, process)
    process.kill()  # SIGKILL: nothing can run; the staging stays, hidden
    process.communicate()
    assert not out.exists()
    for folder in (out, tmp_path / "again"):  # rerun, then once more into another folder
        done = subprocess.run(QUANTIZE + ["--model", str(tiny_float_dir), "--out", str(folder)],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert leftovers(tmp_path) == []
    for name in ("inception_v3_int8.tflite", "manifest.json"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.mark.slow
def test_build_twice_makes_the_same_bytes(tmp_path):
    args = [sys.executable, "-m", "build", "--weights", "random", "--input-size", "75",
            "--depth-multiplier", "0.25", "--num-classes", "10"]
    for name in ("a", "b"):
        done = subprocess.run(args + ["--out", str(tmp_path / name)], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    for name in ("inception_v3.keras", "model_card.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_dead_runs_staging_is_removed_and_a_live_ones_kept(tmp_path):
    from runtime.fileio import staged_outputs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-x"
    live = tmp_path / f".out.partial-{os.getppid()}-y"
    stale.mkdir()
    live.mkdir()
    with staged_outputs(tmp_path / "out") as stage:
        (stage / "f").write_text("x")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "out" / "f").read_text() == "x"


@pytest.mark.slow
def test_interrupted_training_keeps_only_its_checkpoint_and_resumes(tmp_path):
    """Training saves a resumable checkpoint each epoch, by design; Ctrl-C leaves that and
    no model, and the rerun resumes from it."""
    from PIL import Image
    data = tmp_path / "data"
    for k, colour in enumerate(("red", "blue")):
        (data / colour).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (80, 80), (200 * (k == 0), 30 * i, 200 * (k == 1))).save(
                data / colour / f"{i}.png")
    out = tmp_path / "float"
    args = [sys.executable, "-m", "build.train", "--data", str(data), "--out", str(out),
            "--input-size", "75", "--depth-multiplier", "0.25", "--batch-size", "8",
            "--no-flip"]
    process = start(args + ["--epochs", "500"])
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 600
    while not state.is_file():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]
    done = subprocess.run(args + ["--epochs", "1"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Resuming from epoch" in done.stdout
    assert (out / "model_card.json").is_file() and leftovers(tmp_path) == []


def test_a_crash_in_native_code_says_where_it_came_from():
    # A segfault inside TensorFlow or LiteRT gives no Python traceback of its own; the
    # commands' edge (runtime/cli.py) turns on faulthandler so the report names the stack.
    code = ("import ctypes; from runtime import cli\n"
            "def main(argv):\n    return ctypes.string_at(0)\n"
            "cli.run(main, [])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert 'line 3 in main' in done.stderr
