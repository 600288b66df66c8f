"""ARM vs x86 parity of the device runtime on the project's int8 and uint8 models.

`run` (on either architecture) classifies photos with the reference kernels and with the
default (XNNPACK) kernels and saves the raw outputs and how many pieces XNNPACK ran each
model in; `compare` checks that the reference kernels agree bit for bit and that XNNPACK
runs each model in the same number of pieces on both (the pool islands exist to make the
int8 graphs one piece), and reports the largest difference and top-1 agreement of the default kernels,
which are not bit-identical across CPUs.
Only the runtime's dependencies are imported: this runs inside the aarch64 root.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root
from runtime import preprocessing  # noqa: E402
from runtime.classify import Classifier  # noqa: E402
from runtime.interpreter import RuntimeLoadError, xnnpack_partitions  # noqa: E402


def run(models: list[str], images: list[str], out: str) -> None:
    arrays = {}
    for model in models:
        for kernels in ("reference", "default"):
            try:
                clf = Classifier(model, num_threads=1, kernels=kernels)
            except RuntimeLoadError as error:  # an older interpreter: its one sentence
                arrays[f"{Path(model).stem}:unloadable"] = np.array(str(error))
                print(f"{platform.machine()}: {Path(model).name}: {error}", flush=True)
                break
            start = time.perf_counter()
            raw = []
            for image in images:
                tensor = clf.input_tensor(preprocessing.resize_pixels(image, clf.size))
                clf.interpreter.set_tensor(clf._input["index"], tensor)
                clf.interpreter.invoke()
                raw.append(clf.interpreter.get_tensor(clf._output["index"]).reshape(-1))
            seconds = (time.perf_counter() - start) / len(images)
            arrays[f"{Path(model).stem}:{kernels}"] = np.stack(raw)
            if kernels == "default":
                pieces = xnnpack_partitions(clf.interpreter)
                arrays[f"{Path(model).stem}:xnnpack_partitions"] = np.array(pieces)
            print(f"{platform.machine()}: {Path(model).name} {kernels} kernels "
                  f"{seconds:.2f} s/image", flush=True)
    np.savez(out, **arrays)


def compare(x86: str, arm: str, top1: bool = False) -> int:
    """Bit parity of the reference kernels (same interpreter release on both), or with
    `top1` (another release on ARM) the same top-1 everywhere; a model the ARM interpreter
    cannot load passes only when it said so in the runtime's one sentence naming the fix."""
    a, b = np.load(x86), np.load(arm)
    failed = False
    for key in sorted(k for k in b.files if k.endswith(":unloadable")):
        message = str(b[key])
        print(f"{key:40s} {message}")
        failed |= "pip install ai-edge-litert" not in message
    for key in sorted(a.files):
        if key.split(":")[0] + ":unloadable" in b.files:
            continue
        if key.endswith(":xnnpack_partitions"):
            x86, arm = int(a[key]), int(b[key])
            print(f"{key:40s} x86: {x86}  aarch64: {arm}")
            failed |= arm == 0 or (arm != x86 and not top1)  # 0: XNNPACK did not start
            continue
        left, right = a[key].astype(np.float64), b[key].astype(np.float64)
        identical = np.array_equal(a[key], b[key])
        top1_share = float(np.mean(np.argmax(left, 1) == np.argmax(right, 1)))
        diff = float(np.max(np.abs(left - right)))
        print(f"{key:40s} bit-identical: {str(identical):5s} max |diff|: {diff:.4g} "
              f"(output units)  top-1 agreement: {100 * top1_share:.0f}%")
        if key.endswith(":reference") and not identical and not top1:
            failed = True
        if top1 and top1_share < 1:
            failed = True
    if top1:
        print("TOP-1 FAILED: another answer on ARM, XNNPACK not started, or a model refused "
              "without the sentence naming the fix" if failed else
              "Top-1 OK: the same answers on x86 and aarch64 with this interpreter release")
    else:
        print("PARITY FAILED: reference kernels differ between x86 and ARM, or XNNPACK runs a "
              "graph in other pieces on ARM (or not at all)" if failed else
              "Parity OK: reference kernels are bit-identical on x86 and aarch64, and XNNPACK "
              "runs each graph in the same number of pieces on both")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--models", nargs="+", required=True)
    r.add_argument("--images", nargs="+", required=True)
    c = sub.add_parser("compare")
    c.add_argument("x86")
    c.add_argument("arm")
    c.add_argument("--top1", action="store_true",
                   help="another interpreter release on ARM: require the same top-1 only")
    args = p.parse_args()
    if args.cmd == "run":
        run(args.models, args.images, args.out)
        return 0
    return compare(args.x86, args.arm, args.top1)


if __name__ == "__main__":
    sys.exit(main())
