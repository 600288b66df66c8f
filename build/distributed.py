"""Training on several workers with tf.distribute's MultiWorkerMirroredStrategy.

Each worker is one process with a `TF_CONFIG` naming every worker's host:port and its own
index; worker 0 is the chief and the only one that writes the model. On two hosts, set
`TF_CONFIG` on each and run the same command there (README). On one machine,
`--workers N` starts the N local processes itself, on free localhost ports, and stops them
all if one fails.

The batch size stays the global one (what one optimizer step sees across workers), so
two workers train with the same settings, steps and learning-rate schedule as one.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from runtime.errors import InputError


def cluster() -> dict | None:
    """This process's `TF_CONFIG` when it is one worker of several, else None."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        index = int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"TF_CONFIG is not a tf.distribute cluster spec ({error}); see "
                         "the README's two-host example.") from None
    return config if len(workers) > 1 and 0 <= index < len(workers) else None


def is_chief() -> bool:
    config = cluster()
    return config is None or int(config["task"]["index"]) == 0


def num_workers() -> int:
    config = cluster()
    return 1 if config is None else len(config["cluster"]["worker"])


@functools.lru_cache(maxsize=None)
def strategy():
    """MultiWorkerMirroredStrategy under a multi-worker TF_CONFIG, else the default
    (single-device) strategy: single-worker training does not change. A worker must make
    it before TensorFlow runs any op (collectives are set up at start-up): call it first."""
    from build.keras_env import tf
    if cluster() is None:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def shard_by_data(dataset):
    """Each worker keeps every N-th batch element of one shared input pipeline (the
    images live in memory, not in files tf.data could split by)."""
    from build.keras_env import tf
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def output_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Where this worker writes a model: `out` for the chief, a temporary folder removed
    afterwards for the others. Every worker must save, not only the chief: reading the
    batch-norm statistics (synchronised on read) is a collective every worker joins."""
    if is_chief():
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="worker-") as folder:
        yield Path(folder) / "model"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch_local(module: str, argv: Sequence[str], workers: int) -> int:
    """Run `python -m module argv` as `workers` local workers of one cluster; the chief's
    output is shown as it comes, another worker's only if it fails. Exit status: the
    first failure's, else 0."""
    ports = _free_ports(workers)
    spec = {"worker": [f"localhost:{port}" for port in ports]}
    with tempfile.TemporaryDirectory(prefix="workers-") as logs:
        processes = []
        for index in range(workers):
            env = {**os.environ, "TF_CONFIG": json.dumps(
                {"cluster": spec, "task": {"type": "worker", "index": index}})}
            log = None if index == 0 else open(Path(logs) / f"worker-{index}.log", "w")
            processes.append((subprocess.Popen([sys.executable, "-m", module, *argv], env=env,
                                               stdout=log, stderr=log), log))
        try:
            return _wait_all(processes, Path(logs))
        finally:
            for process, log in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                if log:
                    log.close()


def _wait_all(processes, logs: Path) -> int:
    """Wait for every worker; when one fails, stop the others (a collective would wait
    for it forever) and show its log."""
    while True:
        codes = [process.poll() for process, _ in processes]
        failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            index, code = failed[0]
            for process, _ in processes:
                if process.poll() is None:
                    process.terminate()
            if index:
                sys.stderr.write((logs / f"worker-{index}.log").read_text()[-4000:])
            print(f"error: worker {index} of {len(processes)} stopped (exit status {code}); "
                  "the others were stopped.", file=sys.stderr, flush=True)
            return code if code > 0 else 1
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.2)


def without_workers_option(argv: Sequence[str]) -> list[str]:
    """`argv` without `--workers N` / `--workers=N`: what each worker runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out

