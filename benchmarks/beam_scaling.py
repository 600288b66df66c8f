"""Images per second of `make eval RUN=...`: in this process, and as an Apache Beam
pipeline with 1 and 2 (or more) local workers, on the same images of the same run.

    python -m benchmarks.beam_scaling --run <quantize OUT> --data <labelled folder> \\
        [--limit 1000] [--workers 1,2] [--out benchmarks/results --name <name>]

Each figure is the wall time of a whole `python -m quantize.evaluate` in a fresh process,
start-up included (Python, TensorFlow, Beam's worker processes, every model loaded), one
after the other in one run. It also checks that the runners gave the same metrics: a
faster wrong answer is no answer.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.publish import publish, stamp
from runtime import cli
from runtime.errors import InputError
from runtime.fileio import read_json

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(run: Path, data: Path, limit: int | None, workers: int | None,
              json_path: Path) -> float:
    """Seconds a fresh `python -m quantize.evaluate` takes, as a user would run it."""
    command = [sys.executable, "-m", "quantize.evaluate", "--run", str(run), "--data",
               str(data), "--json", str(json_path)]
    command += ["--limit", str(limit)] if limit else []
    command += ["--beam", "--workers", str(workers)] if workers else []
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise InputError(f"{' '.join(command[1:])} failed: "
                         f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return seconds


def measure(run: Path, data: Path, limit: int | None, workers: list[int]) -> dict:
    """Wall time and images per second of each runner, each in a fresh process, one after
    the other; whether all agreed exactly."""
    rows, results = [], []
    setups = [("in-process (all cores)", None)] + [(f"Beam, {n} worker(s)", n) for n in workers]
    with tempfile.TemporaryDirectory() as folder:
        for i, (name, n) in enumerate(setups):
            path = Path(folder) / f"{i}.json"
            seconds = _evaluate(run, data, limit, n, path)
            result = read_json(path, "evaluation result")
            results.append(result)
            rows.append({"runner": name, "workers": n, "seconds": seconds,
                         "images": result["images"],
                         "images_per_second": result["images"] / seconds})
            print(f"{name}: {result['images']} images in {seconds:.1f} s", file=sys.stderr,
                  flush=True)
    one = next((r for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["vs_one_worker"] = row["images_per_second"] / one["images_per_second"] if one else None
    # Beam's workers run each model on 1 thread, the in-process evaluation on all cores, and
    # float results differ in their last bits with the thread count: the Beam results must
    # match each other exactly, the in-process one on its flips.
    beam = [r for r, (_, n) in zip(results, setups) if n is not None]
    return {"rows": rows, "variants": sorted(results[0]["variants"]),
            "beam_identical": all(r == beam[0] for r in beam),
            "same_flips": all({k: v["flipped"] for k, v in r["variants"].items()} ==
                              {k: v["flipped"] for k, v in results[0]["variants"].items()}
                              for r in results)}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Evaluation throughput: in-process and Apache Beam ({report['name']})", "",
             f"- CPU class: **{m['cpu_class']}**; {m['cpu_model']}, {m['usable_cpus']} usable "
             f"cores. Measured {report['measured']}.",
             f"- Command: `{report['command']}`",
             f"- Run: {report['run']} ({len(report['variants'])} variants: "
             f"{', '.join(report['variants'])}) plus the float Keras model, on "
             f"{report['rows'][0]['images']} images of {report['data']}.",
             f"- Beam results identical to each other: {report['beam_identical']}; same flips "
             f"as in-process: {report['same_flips']}.", "",
             "| runner | wall s | images/s | vs 1 Beam worker |", "|---|---|---|---|"]
    for r in report["rows"]:
        ratio = f"{r['vs_one_worker']:.2f}x" if r["vs_one_worker"] else "-"
        lines.append(f"| {r['runner']} | {r['seconds']:.1f} | {r['images_per_second']:.1f} | "
                     f"{ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.beam_scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a make quantize output folder")
    p.add_argument("--data", required=True, help="labelled folder, one sub-folder per class")
    p.add_argument("--limit", type=cli.positive_int, help="only the first this many images")
    p.add_argument("--workers", default="1,2", help="Beam worker counts, comma-separated")
    p.add_argument("--out", help="folder for <name>-beam.md and .json")
    p.add_argument("--name", default="local")
    args = p.parse_args(argv)
    try:
        workers = [cli.positive_int(w) for w in args.workers.split(",")]
    except argparse.ArgumentTypeError as error:
        p.error(f"--workers: {error}")
    report = {"name": args.name, "machine": machine.describe(), "run": args.run,
              "data": args.data, **stamp("benchmarks.beam_scaling", argv),
              **measure(Path(args.run), Path(args.data), args.limit, workers)}
    publish(report, markdown(report), args.out, f"{args.name}-beam")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
