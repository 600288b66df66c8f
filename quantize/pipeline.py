"""`make quantize`: every variant, its drift against float, Edge TPU readiness, a manifest.

All outputs of a run land in one folder, together or not at all (a staging folder is
renamed into place at the end). Models and the manifest are byte-for-byte reproducible
from the same float model and images; the report also holds timings, which vary.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from build import float_model
from quantize import drift, edgetpu, images, layer_errors, pool_islands, report, variants
from quantize.measure import measured
from runtime import preprocessing
from runtime.classify import Classifier
from runtime.fileio import sha256, staged_outputs, write_json
from runtime.interpreter import interpreter_name

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CALIBRATION = ROOT / "calibration_data"
MODEL_STEM = "inception_v3"


@dataclass
class QuantizeConfig:
    float_dir: Path
    out: Path
    variants: list[str]
    calibration_dir: Path = DEFAULT_CALIBRATION
    calibration_samples: int = 200
    held_out_samples: int = 100
    eval_dir: Path | None = None
    eval_samples: int | None = None
    max_top1_drop: float | None = None
    layer_errors: bool = True
    num_threads: int | None = None
    seed: int = 0
    # Full-integer CPU models get their average pools as float islands (pool_islands.py);
    # False keeps the converter's all-integer graph (integer-only NPUs, microcontrollers).
    float_pools: bool = True


def model_file(variant: str) -> str:
    return f"{MODEL_STEM}_{variant}.tflite"


def versions() -> dict:
    import importlib.metadata as md
    found = float_model.library_versions()
    for package in ("ai-edge-litert", "tflite-runtime", "tensorflow-model-optimization"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    found["interpreter"] = interpreter_name()
    return found


def run(config: QuantizeConfig, qat_model=None) -> dict:
    """`qat_model`: the quantization-aware model for the `qat` variant (from make qat)."""
    if "qat" in config.variants and qat_model is None:
        raise ValueError("The qat variant comes from quantization-aware training: run "
                         "`make qat DATA=<image folder>`.")
    model, card = float_model.load(config.float_dir)
    size = tuple(card["input_size"])
    everything = images.load_folder(config.calibration_dir, size, what="calibration")
    calibration, held_out = images.split(everything, config.calibration_samples,
                                         config.held_out_samples, config.seed)
    evaluation = None
    if config.eval_dir is not None:
        evaluation = images.load_labelled(config.eval_dir, size, card.get("labels"),
                                          card["num_classes"], config.eval_samples)
    reference = drift.keras_logits(model, held_out.pixels)
    eval_reference = drift.keras_logits(model, evaluation.pixels) if evaluation else None
    threads = config.num_threads or os.cpu_count()

    results: dict[str, dict] = {}
    manifest_variants: dict[str, dict] = {}
    with staged_outputs(config.out) as stage:
        for name in config.variants:
            variant = variants.VARIANTS[name]
            print(f"[{name}] converting: {variant.description}", flush=True)
            representative = variants.representative_dataset(
                calibration.pixels, variant, preprocessing.normalize) \
                if variant.calibrated else None
            with measured() as cost:
                tflite = variants.convert(qat_model if name == "qat" else model, variant,
                                          representative)
            tpu, graph = None, "as converted"
            if variant.full_integer:  # the Edge TPU takes the all-integer graph
                tpu = edgetpu.readiness(tflite)
                tpu["compiler"] = edgetpu.compile_bytes(tflite, model_file(name), stage)
                pools = len(pool_islands.integer_pools_of(tflite))
                if config.float_pools and pools:
                    tflite = pool_islands.float_pools(tflite)
                    graph = f"{pools} average pools as float islands, for XNNPACK"
                else:
                    graph = "all-integer"
            path = stage / model_file(name)
            path.write_bytes(tflite)
            classifier = Classifier(path, num_threads=threads)
            entry = {"file": path.name, "description": variant.description, "graph": graph,
                     "bytes": len(tflite), "conversion": cost,
                     "io": _io(classifier),
                     "drift": drift.compare(reference, drift.tflite_logits(
                         classifier, held_out.pixels, f"[{name}] held-out drift"))}
            entry["drift"]["flipped"] = [Path(held_out.paths[i]).name
                                         for i in entry["drift"]["flipped"]]
            if evaluation is not None:
                entry["eval"] = drift.compare(eval_reference, drift.tflite_logits(
                    classifier, evaluation.pixels, f"[{name}] evaluation"), evaluation.labels)
                entry["eval"]["flipped"] = [os.path.relpath(evaluation.paths[i],
                                                            config.eval_dir)
                                            for i in entry["eval"]["flipped"]]
            if tpu is not None:
                entry["edgetpu"] = tpu
            results[name] = entry
            manifest_variants[name] = {"file": path.name, "sha256": sha256(path),
                                       "bytes": len(tflite), "graph": graph,
                                       "io": entry["io"]}

        per_layer = None
        if config.layer_errors and "int8" in config.variants:
            print("[int8] per-layer error (quantization debugger)", flush=True)
            per_layer = layer_errors.int8_layer_errors(
                model, calibration.pixels, held_out.pixels[:8])

        gate = report.apply_gate(results, config.max_top1_drop)
        data_info = {
            # With the seed and the requested counts, images.split redraws both sets
            # (make bench calibrates its peers on exactly these images).
            "calibration": {"folder": str(config.calibration_dir), "images": len(calibration),
                            "sha256": calibration.digest(),
                            "skipped": len(everything.skipped),
                            "samples_requested": config.calibration_samples,
                            "seed": config.seed},
            "held_out": {"images": len(held_out), "sha256": held_out.digest(),
                         "samples_requested": config.held_out_samples},
        }
        skipped = {os.path.relpath(p, config.calibration_dir): why
                   for p, why in everything.skipped.items()}
        if evaluation is not None:
            data_info["evaluation"] = {"folder": str(config.eval_dir),
                                       "images": len(evaluation),
                                       "skipped": len(evaluation.skipped)}
        manifest = {
            "float_model": {"folder": str(config.float_dir), "sha256": card["files"],
                            "weights": card["weights"], "input_size": card["input_size"],
                            "num_classes": card["num_classes"],
                            "depth_multiplier": card["depth_multiplier"]},
            "preprocessing": preprocessing.describe(),
            "variants": manifest_variants,
            **data_info,
            "versions": versions(),
        }
        full_report = {"float_model": manifest["float_model"], **data_info,
                       "skipped_files": skipped, "variants": results,
                       "int8_layer_errors": per_layer, "gate": gate,
                       "warnings": _weight_warnings(card),
                       "versions": manifest["versions"]}
        write_json(stage / "report.json", full_report)
        (stage / "report.md").write_text(report.markdown(full_report))
        write_json(stage / "manifest.json", manifest)
    return full_report


def _io(classifier: Classifier) -> dict:
    """Input/output types and quantization: what the model says about itself."""
    described = classifier.describe()
    return {k: v for k, v in described.items() if k not in ("model", "threads")}


def _weight_warnings(card: dict) -> list[str]:
    if card.get("warning"):
        return [card["warning"]]
    if card["weights"]["source"] == "random" and "training" not in card:
        return ["WARNING: the float model has random weights (WEIGHTS=random)."]
    return []
