"""What each variant costs on ARM, without a board: instructions executed per inference
under qemu user mode, counted by a TCG plugin (benchmarks/arm/count_insns.c), for a
Cortex-A72 (Raspberry Pi 4: no int8 dot product) and a Cortex-A76 (Pi 5: `sdot`).

    python -m benchmarks.arm_cost --run <quantize OUT> [--onnx <peers folder>] \\
        [--cpus cortex-a72,cortex-a76] [--out benchmarks/results --name <name>]

Each model runs on the aarch64 Debian root of `make test-arm` (tests/arm/run_arm.sh),
one thread, through the device runtime (LiteRT with XNNPACK, as on the Pi) or
onnxruntime for the `.onnx` peers. A process that invokes the model 3 times is counted
against one that invokes it once: the difference over 2 is one inference, start-up and
model loading cancelled. The plugin also counts the vector multiply-accumulates (int8
`sdot`, widening `smull`/`smlal`/`sadalp`, float `fmla`): their share says how much of
the work is inside the convolution kernels' inner loops.

What such a count does and does not predict: it is the work the CPU is asked to do, on
the kernels XNNPACK or onnxruntime pick for that CPU's features (`sdot` or not), and it
ranks variants and runtimes on one CPU class. It is not time: it ignores how many
instructions issue per cycle (a Cortex-A76 issues more, and its `sdot` does 16
multiply-adds where `smlal` does 8), cache misses and memory bandwidth, and thread
scaling. Needs root (a private mount namespace), Debian's `qemu-user` and gcc.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import machine
from benchmarks.publish import publish, stamp
from runtime import cli
from runtime.errors import InputError
from runtime.fileio import read_json

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = ROOT / "benchmarks" / "arm" / "count_insns.c"
GUEST = "benchmarks/arm/invoke.py"
CPUS = ("cortex-a72", "cortex-a76")
SITES = {".tflite": "site", ".onnx": "site-ort"}  # the root's wheels (setup_root.sh)
ORT_REQUIREMENTS = ROOT / "benchmarks" / "arm" / "requirements-ort.txt"
KINDS = ("dot", "widen", "fma", "mmla")


def build_plugin(folder: Path) -> Path:
    """The counting plugin, compiled for this host's qemu-user."""
    if shutil.which("qemu-aarch64") is None or shutil.which("gcc") is None:
        raise InputError("Counting instructions needs Debian's qemu-user (qemu-aarch64 "
                         "loads TCG plugins; qemu-aarch64-static does not) and gcc: "
                         "apt-get install qemu-user gcc.")
    plugin = folder / "count_insns.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(plugin), str(PLUGIN_SOURCE)],
                   check=True)
    return plugin


def count(plugin: Path, model: Path, runs: int, cpu: str, site: str, scratch: Path) -> dict:
    """The instruction counts of one guest process that invokes `model` `runs` times."""
    out = scratch / f"{model.stem}-{cpu}-{runs}.json"
    env = {**os.environ, "QEMU": "qemu-aarch64", "QEMU_CPU": cpu, "SITE": site,
           "QEMU_PLUGIN": f"{plugin},out={out}"}
    done = subprocess.run(["bash", "tests/arm/run_arm.sh", GUEST, str(model), str(runs)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        raise InputError(f"{model.name} on {cpu} under qemu failed: "
                         f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.read_text())


RUNS = 2  # invokes counted, after one to warm up


def per_inference(plugin: Path, model: Path, cpu: str, scratch: Path) -> dict:
    """Instructions of one inference: those between the guest's two marks (after a
    warm-up invoke, before exit), over the invokes between them. Counting a whole
    process instead, (3 invokes - 1 invoke) / 2 varied from 10 to 28 million on one
    model: Python's start-up differs by tens of millions from run to run."""
    counted = count(plugin, model, RUNS, cpu, SITES[model.suffix], scratch)
    if len(counted["marks"]) != 2:
        raise InputError(f"{model.name} on {cpu}: the guest left "
                         f"{len(counted['marks'])} marks, not 2 (benchmarks/arm/invoke.py)")
    start, end = counted["marks"]
    return {kind: (end[kind] - start[kind]) / RUNS for kind in ("total", *KINDS)}


def models_of(run: Path, onnx: Path | None) -> dict[str, Path]:
    """Every variant of the run, then the `.onnx` peers of `onnx` (float32, int8)."""
    manifest = read_json(run / "manifest.json", "manifest")
    models = {name: run / v["file"] for name, v in manifest["variants"].items()}
    if onnx is not None:
        models.update({f"onnxruntime {p.stem.rsplit('_', 1)[-1]}": p
                       for p in sorted(onnx.glob("*.onnx"))})
    return models


def measure(run: Path, onnx: Path | None, cpus: list[str]) -> dict:
    models = models_of(run, onnx)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="arm-cost-") as folder:
        plugin = build_plugin(Path(folder))
        for name, model in models.items():
            rows[name] = {}
            for cpu in cpus:
                rows[name][cpu] = per_inference(plugin, model.resolve(), cpu, Path(folder))
                print(f"{name} on {cpu}: {rows[name][cpu]['total'] / 1e9:.3f} G instructions",
                      file=sys.stderr, flush=True)
    return {"cpus": cpus, "models": {n: str(p) for n, p in models.items()}, "rows": rows}


def markdown(report: dict) -> str:
    cpus = report["cpus"]
    base = report["rows"].get("float32")
    lines = [f"# ARM cost: instructions per inference under qemu ({report['name']})", "",
             f"- Command: `{report['command']}`; measured {report['measured']} on "
             f"{report['host']['cpu_model']} (the count repeats to the instruction on one "
             "host; the guest's kernels follow the emulated CPU's features).",
             f"- Models: {report['run']}; one thread; LiteRT {report['litert']} with "
             "XNNPACK for `.tflite`, onnxruntime for `.onnx`. `MAC share`: the share of "
             "the instructions that are vector multiply-accumulates (`sdot`, "
             "`smull`/`smlal`/`sadalp`, `fmla`), the convolution kernels' inner loops.",
             "", "| model | " + " | ".join(
                 f"{c}: M instr | vs float32 | MAC share | sdot / smlal / fmla (M)"
                 for c in cpus) + " |",
             "|---|" + "---|---|---|---|" * len(cpus)]
    for name, row in report["rows"].items():
        cells = []
        for cpu in cpus:
            r = row[cpu]
            ratio = f"{base[cpu]['total'] / r['total']:.2f}x" if base else "-"
            macs = sum(r[k] for k in KINDS)
            cells.append(f"{r['total'] / 1e6:.1f} | {ratio} | {100 * macs / r['total']:.0f} % | "
                         f"{r['dot'] / 1e6:.1f} / {r['widen'] / 1e6:.1f} / {r['fma'] / 1e6:.1f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "`vs float32`: how many times fewer instructions than the float32 TFLite "
              "model on the same CPU (higher is cheaper). `sdot / smlal / fmla`: millions of "
              "int8 dot products, widening int8 multiply-accumulates (`smull`, `smlal`, "
              "`sadalp`, ...) and float multiply-adds per inference."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.arm_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a make quantize output folder")
    p.add_argument("--onnx", help="a folder of .onnx peers (make bench's <run>/bench/peers)")
    p.add_argument("--cpus", default=",".join(CPUS))
    p.add_argument("--out", help="folder for <name>-arm.md and .json")
    p.add_argument("--name", default="local")
    args = p.parse_args(argv)
    cpus = args.cpus.split(",")
    unknown = [c for c in cpus if not (ROOT / "tests" / "arm" / f"cpuinfo-{c}").is_file()]
    if unknown:
        p.error(f"--cpus: no tests/arm/cpuinfo-<cpu> for {', '.join(unknown)}")
    report = {"name": args.name, "host": machine.describe(), "run": args.run,
              "litert": machine.versions().get("ai-edge-litert"),
              **stamp("benchmarks.arm_cost", argv),
              **measure(Path(args.run), Path(args.onnx) if args.onnx else None, cpus)}
    publish(report, markdown(report), args.out, f"{args.name}-arm")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
