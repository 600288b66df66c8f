"""`make bench`: latency, memory, size and drift of every variant of a quantize run, the
float Keras model and the peers (ONNX Runtime, OpenVINO), on this machine, in one run.

    python -m benchmarks --run artifacts --threads 1,2 [--eval DIR] [--name NAME]

Writes benchmarks/results/<name>.json, .md and .png.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

import numpy as np

from build.keras_env import keras  # noqa: F401  (Keras 2 before TensorFlow loads)
from benchmarks import latency, machine, memory, peak, peers, report
from benchmarks.candidates import Spec, model_bytes, open_candidate
from build import float_model, images
from quantize import drift, pool_islands
from runtime import cli
from runtime.errors import InputError
from runtime.fileio import read_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = "float32"                 # ratios are to the float32 TFLite model of the run
ALL_INTEGER = report.ALL_INTEGER


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="artifacts", help="output folder of make quantize")
    p.add_argument("--name", help="results name (default: <arch>-<input size>)")
    p.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    p.add_argument("--runs", type=cli.positive_int, default=30,
                   help="timed rounds per thread count")
    p.add_argument("--warmup", type=cli.non_negative_int, default=5)
    p.add_argument("--eval", help="labelled folder: top-1 of every candidate")
    p.add_argument("--eval-samples", type=cli.non_negative_int, default=500,
                   help="seeded random subset of --eval (0: all)")
    p.add_argument("--peers", default="onnxruntime,openvino", help="or none")
    p.add_argument("--no-splits", action="store_true",
                   help="skip pricing each XNNPACK split of the all-integer int8 graph")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--work", help="folder for exported peers, graphs and per-thread files "
                                  "(default: <run>/bench; reused while they are current)")
    return p.parse_args(argv)


def parse_threads(text: str) -> list[int]:
    words = text.replace(",", " ").split()
    threads = [int(t) for t in words if t.isdigit()]
    if not threads or len(threads) != len(words) or min(threads) < 1:
        raise InputError(f"THREADS={text!r}: give thread counts such as 1,2.")
    return threads


def our_candidates(run: Path, manifest: dict, work: Path, splits: bool
                   ) -> tuple[list[Spec], list[Spec], list[dict]]:
    """Every variant file of the run, the all-integer int8 graph, and one graph per split."""
    specs = [Spec(name, "tflite", str(run / entry["file"]), "ours", name)
             for name, entry in manifest["variants"].items()]
    # The same int8 file under the interpreter's other CPU kernels (runtime.interpreter
    # KERNELS): which wins can differ by CPU class, so every bench measures them.
    specs += [Spec(f"int8 ({kernels} kernels)", "tflite",
                   str(run / manifest["variants"]["int8"]["file"]), "ours", "int8",
                   {"kernels": kernels})
              for kernels in ("xnnpack-latest", "builtin") if "int8" in manifest["variants"]]
    if "int8-stock" in manifest["variants"]:  # the speed reference of the accuracy recipe
        path = work / "inception_v3_int8-stock_islands.tflite"
        path.write_bytes(pool_islands.float_pools(
            (run / manifest["variants"]["int8-stock"]["file"]).read_bytes()))
        specs.append(Spec(report.PREVIOUS_INT8, "tflite", str(path), "ours", "int8"))
    split_specs, split_info = [], []
    if "int8" in manifest["variants"]:
        cpu = (run / manifest["variants"]["int8"]["file"]).read_bytes()
        integer = pool_islands.integer_pools(cpu)
        pools = pool_islands.integer_pools_of(integer)
        islands = bool(pools) and integer != cpu
        if islands:
            path = work / "inception_v3_int8_all_integer.tflite"
            path.write_bytes(integer)
            specs.append(Spec(ALL_INTEGER, "tflite", str(path), "ours", "int8"))
        # A split's cost is measured against the island graph: only a run that has it.
        if splits and islands:
            from quantize.edgetpu import read_ops
            ops = read_ops(integer)
            (work / "splits").mkdir(exist_ok=True)
            for k, index in enumerate(pools):
                path = work / "splits" / f"int8_pool{k}_integer.tflite"
                path.write_bytes(pool_islands.float_pools(integer, keep=(k,)))
                split_specs.append(Spec(f"split {k}", "tflite", str(path), "splits", "int8"))
                op = ops[index]
                split_info.append({"pool": k, "input": op.inputs[0].name,
                                   "shape": op.inputs[0].shape,
                                   "output_shape": op.outputs[0].shape})
    return specs, split_specs, split_info


def run_images(run: Path, manifest: dict, size: tuple[int, int]
               ) -> tuple[images.ImageSet, images.ImageSet]:
    """The run's calibration and held-out images, drawn again as make quantize drew them
    (the peers calibrate on exactly ours: checked by digest)."""
    cal, held = manifest["calibration"], manifest["held_out"]
    everything = images.load_folder(run / cal["folder"], size, what="calibration")
    calibration, held_out = images.split(
        everything, cal.get("samples_requested", cal["images"]),
        held.get("samples_requested", 100), cal.get("seed", 0))
    if calibration.digest() != cal["sha256"]:
        raise InputError(f"The calibration images in {cal['folder']} are not the ones the run "
                        "was calibrated on (the folder changed); run make quantize again.")
    return calibration, held_out


def eval_images(card: dict, size: tuple[int, int], eval_dir: str, samples: int
                ) -> images.ImageSet:
    """A seeded sample of the labelled folder, every class in its share."""
    labelled = images.load_labelled(eval_dir, size, card.get("labels"), card["num_classes"])
    if samples and len(labelled) > samples:
        order = np.random.default_rng(0).permutation(len(labelled))[:samples]
        labelled = labelled.subset(np.sort(order))
    return labelled


def measure_drift(specs: list[Spec], model, pixels: np.ndarray, labels, threads: int
                  ) -> dict[str, dict]:
    reference = float_model.keras_logits(model, pixels)
    found = {}
    for spec in specs:
        print(f"[drift] {spec.name}", flush=True)
        candidate = open_candidate(spec, threads)
        logits = np.stack([candidate.invoke(candidate.tensor(p)) for p in pixels])
        result = drift.compare(reference, logits, labels, saturation=candidate.ceiling)
        result.pop("flipped", None)
        found[spec.name] = result
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return _bench(args, argv if argv is not None else sys.argv[1:])


def open_run(run: Path) -> tuple[dict, Path, object, dict]:
    """The run's manifest, its float model folder, the model and its card."""
    manifest_path = run / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"No quantize run in {run} (no manifest.json); run `make "
                         f"quantize OUT={run}` first, or give RUN=<its OUT>.")
    manifest = read_json(manifest_path, "manifest")
    if REFERENCE not in manifest.get("variants", {}):
        raise InputError("make bench reports ratios to the float32 TFLite model: the run "
                         "needs the float32 variant (VARIANTS= empty, or with float32).")
    try:
        float_dir = run / manifest["float_model"]["folder"]
    except (KeyError, TypeError):
        raise InputError(f"{manifest_path} names no float model folder; run `make quantize "
                         f"OUT={run}` again.") from None
    model, card = float_model.load(float_dir)
    return manifest, float_dir, model, card


def parse_peers(text: str) -> list[str]:
    wanted = [] if text.strip() in ("", "none") else text.replace(",", " ").split()
    unknown = set(wanted) - set(peers.PEER_PACKAGES)
    if unknown:
        raise InputError(f"Unknown peer(s) {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(peers.PEER_PACKAGES)} or none.")
    return wanted


def drift_images(args, card: dict, size, manifest: dict, held_out) -> tuple:
    """The images drift is measured on (EVAL=, else the run's held-out ones), described."""
    if args.eval:
        images_ = eval_images(card, size, args.eval, args.eval_samples)
        return images_, f"{len(images_)} labelled images from {args.eval}"
    folder = report.as_typed(Path(args.run), manifest["calibration"]["folder"])
    return held_out, (f"{len(held_out)} held-out images of {folder} (never used for "
                      "calibration)")


def _bench(args, argv: list[str]) -> int:
    threads = parse_threads(args.threads)
    wanted_peers = parse_peers(args.peers)
    run = Path(args.run)
    manifest, float_dir, model, card = open_run(run)
    size = tuple(card["input_size"])
    work = Path(args.work) if args.work else run / "bench"
    work.mkdir(parents=True, exist_ok=True)

    # The candidates: ours, the float Keras model, the peers (calibrated on our images).
    ours, split_specs, split_info = our_candidates(run, manifest, work, not args.no_splits)
    keras_spec = Spec("keras float32 (tf.function)", "keras", str(float_dir), "keras",
                      "float32")
    calibration, held_out = run_images(run, manifest, size)
    from runtime import preprocessing
    normalized = np.stack([preprocessing.normalize(p) for p in calibration.pixels])
    peer_specs, peer_notes = peers.prepare(float_dir, manifest["float_model"]["sha256"],
                                           normalized, calibration.digest(), work / "peers",
                                           wanted_peers)
    peak_specs = peak.build_models(work / "peak") + peak.peer_models(
        work / "peak", [p for p in wanted_peers if not peers.missing_packages(p)])
    main_specs = ours + [keras_spec] + peer_specs

    # The measurements: latency of everything interleaved, memory, drift.
    latencies = {t: latency.measure(main_specs + peak_specs + split_specs, t, args.runs,
                                    args.warmup, work) for t in threads}
    print("[memory] one fresh process per candidate", flush=True)
    memories = {s.name: memory.measure(s, threads[0]) for s in main_specs}
    drift_set, drift_source = drift_images(args, card, size, manifest, held_out)
    drifts = measure_drift([s for s in main_specs if s is not keras_spec], model,
                           drift_set.pixels, drift_set.labels, max(threads))

    this_machine = machine.describe()
    results = {
        "name": args.name or f"{this_machine['architecture']}-{size[0]}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "quantize_command": report.quantize_command(manifest, run),
        "machine": this_machine,
        "versions": machine.versions(),
        "model": model_info(model, card, run),
        "settings": {"threads": threads, "runs": args.runs, "warmup": args.warmup,
                     "memory_threads": threads[0], "drift_images": drift_source},
        "peers": peer_notes,
        "candidates": {s.name: candidate_entry(s, memories, drifts, latencies, threads)
                       for s in main_specs},
        "peak": peak_entries(peak_specs, latencies, threads),
        "peak_model": {"layers": peak.LAYERS, "size": peak.SIZE, "channels": peak.CHANNELS,
                       "multiply_adds": peak.MULTIPLY_ADDS},
        "splits": {"pools": split_info,
                   "latency": {str(t): {s.name: latencies[t][s.name] for s in split_specs}
                               for t in threads}},
    }
    report.derive(results)
    paths = report.write(results, Path(args.out))
    print(report.headline(results))
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def model_info(model, card: dict, run: Path) -> dict:
    return {"input_size": list(card["input_size"]),
            "depth_multiplier": card["depth_multiplier"],
            "num_classes": card["num_classes"], "weights": float_model.weights_summary(card),
            "multiply_adds": float_model.multiply_adds(float_model.logits_model(model)),
            "run": str(run)}


def candidate_entry(spec: Spec, memories: dict, drifts: dict, latencies: dict,
                    threads: list[int]) -> dict:
    return {"kind": spec.kind, "family": spec.family, "precision": spec.precision,
            "file": spec.path, "bytes": model_bytes(spec), "options": spec.options,
            "memory": memories[spec.name], "drift": drifts.get(spec.name),
            "latency": {str(t): latencies[t][spec.name] for t in threads}}


def peak_entries(peak_specs: list[Spec], latencies: dict, threads: list[int]) -> dict:
    """p50 and GMAC/s of the peak-throughput models, per thread count."""
    return {str(t): {peak.label(s): {"p50_ms": latencies[t][s.name]["p50_ms"],
                                   "gmacs": round(peak.gmacs(peak.MULTIPLY_ADDS,
                                                             latencies[t][s.name]["p50_ms"]),
                                                  1)}
                     for s in peak_specs} for t in threads}

if __name__ == "__main__":
    sys.exit(cli.run(main))
