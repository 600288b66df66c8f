"""`make quantize`: every variant, its drift against float, Edge TPU readiness, a manifest.

All outputs of a run land in one folder, together or not at all (a staging folder is
renamed into place at the end). Models and the manifest are byte-for-byte reproducible
from the same float model and images; the report also holds timings, which vary.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from build import float_model, images
from quantize import (drift, edgetpu, fallback, layer_errors, logits_weights, pool_islands,
                      recipe, report, variants)
from quantize.measure import measured
from runtime import preprocessing
from runtime.classify import Classifier
from runtime.errors import InputError
from runtime.fileio import sha256, staged_outputs, write_json
from runtime.interpreter import interpreter_name, xnnpack_partitions

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
    min_agreement: float | None = None   # percent of top-1 answers kept (EVAL, else held out)
    layer_errors: bool = True
    num_threads: int | None = None
    seed: int = 0
    # Full-integer CPU models get their average pools as float islands (pool_islands.py);
    # False keeps the converter's all-integer graph (integer-only NPUs, microcontrollers).
    float_pools: bool = True
    recipe: recipe.Recipe = field(default_factory=recipe.Recipe)  # accuracy-first int8
    fallback_budget: float = 0.06   # share of the multiply-adds a fallback file runs in float
    fallback_max_layers: int = 8


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


@dataclass
class RunData:
    """The images of a run, read once with the device's preprocessing."""
    everything: images.ImageSet
    calibration: images.ImageSet
    held_out: images.ImageSet
    evaluation: images.ImageSet | None
    reference: np.ndarray                 # float logits on the held-out images
    eval_reference: np.ndarray | None     # float logits on the evaluation images
    # float logits on the calibration images, when a requested variant chooses on them
    # (the accuracy-first ones, the fallback files)
    calibration_reference: np.ndarray | None = None


def run(config: QuantizeConfig, qat_model=None, qat_training: dict | None = None,
        calibration_read: tuple | None = None) -> dict:
    """`qat_model`: the quantization-aware model for the `qat` variants (from make qat);
    `qat_training`: how it was trained (folders, epochs, ...), kept in the manifest so the
    run says how to make it again; `calibration_read`: `calibration_images(config, ...)`
    when the caller has read them already (make qat starts from them)."""
    trained = [name for name in config.variants if variants.VARIANTS[name].trained]
    if trained and qat_model is None:
        raise InputError(f"The {' and '.join(trained)} variant(s) come from quantization-aware "
                         "training: run `make qat DATA=<image folder>`.")
    model, card = float_model.load(config.float_dir)
    data = read_data(config, model, card, calibration_read)
    results: dict[str, dict] = {}
    manifest_variants: dict[str, dict] = {}
    calibrated_int8, bases = None, {}
    with staged_outputs(config.out) as stage:
        for name in config.variants:
            made = make_variant(name, qat_model if name in trained else model, data, config,
                                stage, bases)
            path = stage / model_file(name)
            path.write_bytes(made.pop("tflite"))
            calibrated = made.pop("calibrated", None)
            if name == "int8":
                calibrated_int8 = calibrated
            results[name] = describe_variant(path, made, data, config)
            manifest_variants[name] = {"file": path.name, "sha256": sha256(path),
                                       "bytes": path.stat().st_size, "graph": made["graph"],
                                       "io": results[name]["io"],
                                       **_recipe_facts(made), **_compiled(made, stage)}
            if name in trained and qat_training:
                manifest_variants[name]["training"] = _relative_folders(qat_training,
                                                                        config.out)
        per_layer = None
        if config.layer_errors and calibrated_int8 is not None:
            print("[int8] per-layer error (quantization debugger)", flush=True)
            debug = data.held_out.pixels[:8]
            per_layer = layer_errors.summary(layer_errors.layer_statistics(
                calibrated_int8, variants.graph_inputs(debug, variants.VARIANTS["int8"])),
                len(debug))
        full_report = write_outputs(stage, config, card, data, results, manifest_variants,
                                    per_layer)
    return full_report


def calibration_images(config: QuantizeConfig, size: tuple[int, int]
                       ) -> tuple[images.ImageSet, images.ImageSet, images.ImageSet]:
    """Every usable image of CALIB, and the calibration and held-out images drawn from
    them (the same on every call: quantization-aware training starts from them too)."""
    everything = images.load_folder(config.calibration_dir, size, what="calibration")
    calibration, held_out = images.split(everything, config.calibration_samples,
                                         config.held_out_samples, config.seed)
    return everything, calibration, held_out


def read_data(config: QuantizeConfig, model, card: dict,
              calibration_read: tuple | None = None) -> RunData:
    size = tuple(card["input_size"])
    everything, calibration, held_out = calibration_read or calibration_images(config, size)
    evaluation = None
    if config.eval_dir is not None:
        evaluation = images.load_labelled(config.eval_dir, size, card.get("labels"),
                                          card["num_classes"], config.eval_samples)
    chooses = any(variants.VARIANTS[name].accuracy_first or variants.VARIANTS[name].fallback
                  for name in config.variants)
    return RunData(everything, calibration, held_out, evaluation,
                   float_model.keras_logits(model, held_out.pixels),
                   float_model.keras_logits(model, evaluation.pixels) if evaluation else None,
                   float_model.keras_logits(model, calibration.pixels) if chooses else None)


def make_variant(name: str, model, data: RunData, config: QuantizeConfig, stage: Path,
                 bases: dict) -> dict:
    """One variant's bytes, what its graph is, and the Edge TPU verdict of those bytes.

    `bases` keeps what several variants share, made once: the accuracy-first quantization
    by input type (`uint8` and `coral` are its CPU and Edge TPU graphs, `int8-fallback`
    starts from `int8`'s CPU file) and the converted qat file (`qat-fallback` starts from
    it).
    """
    variant = variants.VARIANTS[name]
    print(f"[{name}] converting: {variant.description}", flush=True)
    made: dict = {}
    if variant.accuracy_first:
        int8, cost = _recipe(variant, model, data, config, bases)
        cpu_file = variant.fallback or config.float_pools and not variant.edgetpu
        tflite = int8.cpu if cpu_file else int8.integer
        made.update(calibrated=int8.calibrated, recipe={
            "range_method": int8.range_method,
            "float_logits": config.recipe.float_logits and cpu_file,
            "int8_logits_weights": config.recipe.float_logits and cpu_file
            and config.recipe.int8_logits_weights,
            "weight_ranges": config.recipe.weight_ranges,
            "bias_correction": config.recipe.bias_correction,
            "equalization": config.recipe.equalization,
            "weight_rounding": "gptq" if config.recipe.weight_rounding else "nearest",
            "steps": int8.steps})
    else:
        tflite, cost = _converted(variant, model, data, bases)
    made["conversion"] = cost
    tflite, made["graph"] = _cpu_edits(tflite, variant, config, made.get("recipe", {}))
    if variant.fallback:
        tflite, made["fallback"], made["conversion"] = _fallback(tflite, data, config, cost)
        count = len(made["fallback"]["float_layers"])
        made["graph"] += f"; the first {count} layer{'s' * (count > 1)} in float (fallback)" \
            if count else "; no layer in float (none was closer to float)"
    if variant.full_integer:  # judged on the bytes that ship
        made["edgetpu"] = edgetpu.readiness(tflite)
    if variant.edgetpu:
        made["edgetpu"]["compiler"] = edgetpu.compile_bytes(tflite, model_file(name), stage)
    made["tflite"] = tflite
    return made


def _converted(variant, model, data: RunData, bases: dict) -> tuple[bytes, dict]:
    """The converter's file for a variant the recipe does not make, and what it cost (the
    qat file once for `qat` and `qat-fallback`)."""
    key = "trained" if variant.trained else variant.name
    if key not in bases:
        representative = variants.representative_dataset(data.calibration.pixels, variant) \
            if variant.calibrated else None
        with measured() as cost:
            converted = variants.convert(model, variant, representative)
        bases[key] = converted, cost
    return bases[key]


def _recipe(variant, model, data: RunData, config: QuantizeConfig, bases: dict):
    """The accuracy-first quantization for the variant's input type, and what it cost:
    made once per type."""
    if variant.integer_io not in bases:
        with measured() as cost:
            built = recipe.build(
                model, variant, data.calibration.pixels, data.held_out.pixels,
                data.reference, config.recipe, config.num_threads, data.calibration_reference)
        bases[variant.integer_io] = built, cost
    return bases[variant.integer_io]


def _fallback(tflite: bytes, data: RunData, config: QuantizeConfig, cost: dict
              ) -> tuple[bytes, dict, dict]:
    """The CPU file with its first layers in float as far as they lower the top-two gap
    change on the calibration and held-out images (quantize/fallback.py), what was tried,
    and the conversion's cost with the search's added."""
    pixels = np.concatenate([data.calibration.pixels, data.held_out.pixels])
    reference = np.concatenate([data.calibration_reference, data.reference])
    with measured() as search:
        chosen, layers = fallback.search(
            tflite, lambda candidate: recipe.held_out_drift(candidate, pixels, reference,
                                                            config.num_threads),
            config.fallback_budget, config.fallback_max_layers)
    facts = {"budget": config.fallback_budget,
             "float_layers": [{k: v for k, v in e.items() if k != "node"} for e in layers]}
    total = {key: max(cost[key], search[key]) for key in cost}
    total["seconds"] = cost["seconds"] + search["seconds"]
    return chosen, facts, total


def _cpu_edits(tflite: bytes, variant, config: QuantizeConfig, recipe_facts: dict
               ) -> tuple[bytes, str]:
    """The pool islands where the variant wants them (and the qat file's float logits, as
    the accuracy-first CPU files have them), and what the graph now is."""
    parts = []
    float_logits = recipe_facts.get("float_logits")
    if variant.trained and (config.float_pools or variant.fallback):
        tflite, float_logits = logits_weights.float_output(tflite), True
    pools = len(pool_islands.integer_pools_of(tflite))
    if variant.pool_islands and config.float_pools and pools:
        tflite = pool_islands.float_pools(tflite)
        parts.append(f"{pools} average pools as float islands, for XNNPACK")
    if float_logits:
        parts.append("float logits")
    if variant.edgetpu:
        parts.append("all-integer, for the Edge TPU")
    return tflite, "; ".join(parts) or ("all-integer" if variant.full_integer
                                        else "as converted")


def describe_variant(path: Path, made: dict, data: RunData, config: QuantizeConfig
                     ) -> dict:
    """The report's entry: size, I/O, drift on held-out (and EVAL) images."""
    variant = variants.VARIANTS[path.stem[len(MODEL_STEM) + 1:]]
    classifier = Classifier(path, num_threads=config.num_threads or os.cpu_count())
    ceiling = classifier.output_ceiling
    entry = {"file": path.name, "description": variant.description, "graph": made["graph"],
             "bytes": path.stat().st_size, "conversion": made["conversion"],
             "io": _io(classifier),
             "xnnpack_partitions": xnnpack_partitions(classifier.interpreter),
             "drift": drift.compare(data.reference, drift.tflite_logits(
                 classifier, data.held_out.pixels, f"[{variant.name}] held-out drift"),
                 saturation=ceiling)}
    entry["drift"]["flipped"] = [Path(data.held_out.paths[i]).name
                                 for i in entry["drift"]["flipped"]]
    if data.evaluation is not None:
        entry["eval"] = drift.compare(data.eval_reference, drift.tflite_logits(
            classifier, data.evaluation.pixels, f"[{variant.name}] evaluation"),
            data.evaluation.labels, saturation=ceiling)
        entry["eval"]["flipped"] = [os.path.relpath(data.evaluation.paths[i], config.eval_dir)
                                    for i in entry["eval"]["flipped"]]
    for key in ("edgetpu", "recipe", "fallback"):
        if key in made:
            entry[key] = made[key]
    return entry


def write_outputs(stage: Path, config: QuantizeConfig, card: dict, data: RunData,
                  results: dict, manifest_variants: dict, per_layer: dict | None) -> dict:
    """report.json, report.md and manifest.json into the staging folder."""
    gate = report.apply_gate(results, config.max_top1_drop, config.min_agreement)

    data_info = {
        # With the seed and the requested counts, images.split redraws both sets
        # (make bench calibrates its peers on exactly these images).
        "calibration": {"folder": _relative(config.calibration_dir, config.out),
                        "images": len(data.calibration),
                        "sha256": data.calibration.digest(),
                        "skipped": len(data.everything.skipped),
                        "samples_requested": config.calibration_samples,
                        "seed": config.seed},
        "held_out": {"images": len(data.held_out), "sha256": data.held_out.digest(),
                     "samples_requested": config.held_out_samples},
    }
    skipped = {os.path.relpath(p, config.calibration_dir): why
               for p, why in data.everything.skipped.items()}
    if data.evaluation is not None:
        data_info["evaluation"] = {"folder": _relative(config.eval_dir, config.out),
                                   "images": len(data.evaluation),
                                   "skipped": len(data.evaluation.skipped)}
    manifest = {
        "float_model": {"folder": _relative(config.float_dir, config.out),
                        "sha256": card["files"],
                        "weights": card["weights"], "input_size": card["input_size"],
                        "weights_summary": float_model.weights_summary(card),
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
                   "warnings": _weight_warnings(card), "versions": manifest["versions"]}
    write_json(stage / "report.json", full_report)
    (stage / "report.md").write_text(report.markdown(full_report))
    write_json(stage / "manifest.json", manifest)
    return full_report


def _compiled(made: dict, stage: Path) -> dict:
    """The Edge TPU compiler's model and log, when it ran, with their hashes."""
    compiler = made.get("edgetpu", {}).get("compiler") or {}
    found = {}
    for key in ("model", "log"):
        name = compiler.get(key)
        if name and (stage / name).is_file():
            found[key] = {"file": name, "sha256": sha256(stage / name)}
    return {"edgetpu_compiled": found} if found else {}


def _relative(path: Path | str, out: Path) -> str:
    """A folder as the manifest records it: relative to the run, the same bytes on every
    machine."""
    return os.path.relpath(path, out)


def _relative_folders(training: dict, out: Path) -> dict:
    """QAT's settings with its image folders relative to the run, as the manifest's others."""
    return {k: _relative(v, out) if k in ("data", "val") and v else v
            for k, v in training.items()}


def _recipe_facts(made: dict) -> dict:
    """What the manifest records of the recipe and the fallback: their choices, not their
    measurements."""
    facts = {}
    if "recipe" in made:
        facts["recipe"] = {k: v for k, v in made["recipe"].items() if k != "steps"}
    if "fallback" in made:
        facts["fallback"] = {"budget": made["fallback"]["budget"], "float_layers": [
            layer["layer"] for layer in made["fallback"]["float_layers"]]}
    return facts


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
