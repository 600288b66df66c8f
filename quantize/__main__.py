"""`python -m quantize`: TFLite variants of the float model with a drift report.

Builds the float model first (as `make build` would) when it is missing or was built
with other settings, unless --model names a float model folder to use as it is.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from build.keras_env import keras  # noqa: F401  (picks Keras 2 before TensorFlow loads)
from build import distributed, float_model, images
from build.weights import WEIGHT_CHOICES
from quantize import pipeline, recipe, report, variants
from runtime import cli
from runtime.errors import InputError
from runtime.fileio import check_output, read_json


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m quantize", description=__doc__)
    p.add_argument("--out", default="artifacts", help="folder for every output of the run")
    p.add_argument("--model", help="float model folder to quantize as it is")
    p.add_argument("--variants", default="", help=f"subset of {', '.join(variants.VARIANTS)}")
    p.add_argument("--calib", default=str(pipeline.DEFAULT_CALIBRATION))
    p.add_argument("--calib-samples", type=cli.positive_int, default=200)
    p.add_argument("--held-out-samples", type=cli.positive_int, default=100)
    p.add_argument("--eval", help="labelled folder (one sub-folder per class)")
    p.add_argument("--eval-samples", type=cli.positive_int)
    p.add_argument("--max-top1-drop", type=cli.float_in(0.0, 100.0),
                   help="points of top-1 a variant may lose")
    p.add_argument("--min-agreement", type=cli.float_in(0.0, 100.0),
                   help="percent of top-1 answers a variant must share with float (on "
                        "--eval, else on the held-out images)")
    p.add_argument("--fallback-budget", type=cli.float_in(0.0, 100.0), default=6.0,
                   help="percent of the multiply-adds the fallback variants (int8-fallback, "
                        "qat-fallback) may run in float")
    p.add_argument("--no-equalize", action="store_true",
                   help="skip the equalization of activation channels before calibrating "
                        "(quantize/equalization.py)")
    p.add_argument("--no-gptq", action="store_true",
                   help="round weights to nearest instead of by GPTQ (quantize/weight_rounding.py): "
                        "a faster build, more flipped answers")
    p.add_argument("--no-layer-errors", action="store_true")
    p.add_argument("--threads", type=cli.positive_int)
    p.add_argument("--integer-pools", action="store_true",
                   help="keep int8 average pools integer (slower on CPUs with XNNPACK; for "
                        "integer-only accelerators)")
    q = p.add_argument_group("quantization-aware training (make qat)")
    q.add_argument("--qat-data", help="image folder to fine-tune on; adds the qat and qat-fallback variants")
    q.add_argument("--qat-val", help="validation folder for QAT")
    q.add_argument("--qat-epochs", type=cli.positive_int, default=2)
    q.add_argument("--qat-learning-rate", type=cli.float_in(0.0, 1.0, low_open=True), default=3e-7)
    q.add_argument("--qat-no-flip", action="store_true")
    q.add_argument("--workers", type=cli.positive_int, default=1,
                   help="local worker processes for QAT (tf.distribute "
                        "MultiWorkerMirroredStrategy); the chief then quantizes")
    b = p.add_argument_group("float model (as make build)")
    b.add_argument("--weights", default="auto", help=WEIGHT_CHOICES)
    b.add_argument("--input-size", default="299")
    b.add_argument("--num-classes", type=cli.int_at_least(2), default=1000)
    b.add_argument("--depth-multiplier", type=cli.DEPTH_MULTIPLIER, default=1.0)
    b.add_argument("--seed", type=cli.non_negative_int, default=0)
    return p.parse_args(argv)


def ensure_float_model(args) -> Path:
    if args.model:
        return Path(args.model)
    float_dir = Path(args.out) / "float"
    config = float_model.BuildConfig(
        input_size=float_model.parse_input_size(args.input_size),
        num_classes=args.num_classes, depth_multiplier=args.depth_multiplier,
        weights=args.weights, seed=args.seed)
    card_path = float_dir / float_model.CARD_FILE
    if card_path.is_file():
        card = read_json(card_path, "model card")
        if "training" in card:
            print(f"Using the trained model in {float_dir}", flush=True)
            return float_dir
        if card.get("build") == float_model.build_args(config):
            return float_dir
        print(f"{float_dir} was built with other settings; rebuilding it.", flush=True)
    print(f"Building the float model into {float_dir}", flush=True)
    model, info = float_model.build(config)
    float_model.save(model, float_model.model_card(model, config, info), float_dir)
    return float_dir


def checked_config(args) -> pipeline.QuantizeConfig:
    """The run's settings, every input checked before anything is built or written."""
    if args.max_top1_drop is not None and not args.eval:
        raise InputError("MAX_TOP1_DROP needs EVAL=<labelled folder> to measure accuracy.")
    check_output(args.out)
    if not args.model:
        float_model.parse_input_size(args.input_size)
    images.image_files(args.calib)
    if args.eval:
        images.class_folders(args.eval)
    if args.qat_data:
        images.class_folders(args.qat_data)
    if args.workers > 1 and not args.qat_data:
        raise InputError("WORKERS=N shares quantization-aware training between workers: "
                         "it applies to make qat DATA=<folder>, not to make quantize.")
    names = variants.parse_variants(args.variants)
    if args.qat_data and not set(names) & set(variants.TRAINED):
        names += variants.TRAINED
    return pipeline.QuantizeConfig(
        float_dir=Path(args.model or Path(args.out) / "float"), out=Path(args.out),
        variants=names,
        calibration_dir=Path(args.calib), calibration_samples=args.calib_samples,
        held_out_samples=args.held_out_samples,
        eval_dir=Path(args.eval) if args.eval else None, eval_samples=args.eval_samples,
        max_top1_drop=args.max_top1_drop, layer_errors=not args.no_layer_errors,
        num_threads=args.threads, float_pools=not args.integer_pools,
        min_agreement=args.min_agreement,
        fallback_budget=args.fallback_budget / 100,
        recipe=recipe.Recipe(equalization=not args.no_equalize,
                             weight_rounding=not args.no_gptq))


def quantize(args, config: pipeline.QuantizeConfig) -> dict | None:
    """The run's report; None on a worker other than the chief, whose part ends with
    quantization-aware training."""
    qat_model, qat_training, calibration_read = None, None, None
    if args.qat_data:
        from quantize.qat import quantization_aware
        distributed.strategy()  # before the first TensorFlow op, on a worker of several
        model, card = float_model.load(config.float_dir)
        settings = {"epochs": args.qat_epochs, "learning_rate": args.qat_learning_rate,
                    "flip": not args.qat_no_flip}  # trained with, and recorded in the manifest
        calibration_read = pipeline.calibration_images(config, tuple(card["input_size"]))
        _, calibration, held_out = calibration_read
        qat_model = quantization_aware(model, card, args.qat_data, args.qat_val,
                                       calibration=calibration.pixels,
                                       held_out=held_out.pixels, **settings)
        if not distributed.is_chief():
            return None
        qat_training = {"data": args.qat_data, "val": args.qat_val, **settings,
                        "workers": distributed.num_workers()}
    return pipeline.run(config, qat_model, qat_training, calibration_read)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = checked_config(args)
    built_here = not args.model and not (config.float_dir / float_model.CARD_FILE).is_file()
    made_out = not config.out.exists()
    try:
        ensure_float_model(args)
        if args.workers > 1 and distributed.cluster() is None:
            return _on_local_workers(args, argv, config)
        result = quantize(args, config)
    except BaseException:
        if built_here:  # a failed run leaves nothing behind, the float model included
            shutil.rmtree(config.float_dir, ignore_errors=True)
        if made_out and config.out.is_dir() and not any(config.out.iterdir()):
            config.out.rmdir()
        raise
    if result is None:
        return 0
    print()
    for warning in result["warnings"]:
        print(warning)
    print(report.table(result))
    print(f"\nWrote {len(result['variants'])} models, report.md, report.json and "
          f"manifest.json to {config.out}")
    gate = result["gate"]
    if gate["failed"]:
        budgets = [f"over the top-1 budget of {config.max_top1_drop} points"
                   if config.max_top1_drop is not None else None,
                   f"under the agreement of {config.min_agreement} %"
                   if config.min_agreement is not None else None]
        print(f"error: {' or '.join(b for b in budgets if b)}: {report.gate_failures(gate)}",
              file=sys.stderr)
        return 1
    return 0


def _on_local_workers(args, argv: list[str] | None, config: pipeline.QuantizeConfig) -> int:
    """make qat WORKERS=N: N local workers train together, the chief then quantizes. The
    float model is built first, here, so that no two workers build it at once."""
    worker_args = distributed.without_workers_option(sys.argv[1:] if argv is None else argv)
    if not args.model:
        worker_args += ["--model", str(config.float_dir)]
    code = distributed.launch_local("quantize", worker_args, args.workers)
    if code:
        raise SystemExit(code)  # a failed run leaves nothing behind (main's cleanup)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
