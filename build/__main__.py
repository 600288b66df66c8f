"""`python -m build`: build the float InceptionV3 and write it with its model card."""
from __future__ import annotations

import argparse
import sys

from build.keras_env import keras  # noqa: F401  (picks Keras 2 before TensorFlow loads)
from build import float_model
from build.weights import WEIGHT_CHOICES
from runtime import cli
from runtime.fileio import check_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m build", description=__doc__)
    parser.add_argument("--weights", default="auto", help=WEIGHT_CHOICES)
    parser.add_argument("--input-size", default="299", help="N or HxW (at least 75)")
    parser.add_argument("--num-classes", type=cli.int_at_least(2), default=1000,
                        help="1000 for Keras weights, 1001 for slim checkpoints")
    parser.add_argument("--depth-multiplier", type=cli.DEPTH_MULTIPLIER, default=1.0)
    parser.add_argument("--min-depth", type=cli.positive_int, default=16)
    parser.add_argument("--seed", type=cli.non_negative_int, default=0, help="for random weights")
    parser.add_argument("--aux-logits", action="store_true", help="keep the aux head")
    parser.add_argument("--out", default="artifacts/float")
    args = parser.parse_args(argv)
    check_output(args.out)
    config = float_model.BuildConfig(
        input_size=float_model.parse_input_size(args.input_size),
        num_classes=args.num_classes, depth_multiplier=args.depth_multiplier,
        min_depth=args.min_depth, weights=args.weights, seed=args.seed,
        create_aux_logits=args.aux_logits)
    model, info = float_model.build(config)
    card = float_model.model_card(model, config, info)
    float_model.save(model, card, args.out)
    h, w = config.input_size
    print(f"Wrote {args.out}/{float_model.MODEL_FILE}: {h}x{w}, {config.num_classes} classes, "
          f"weights {info.source.upper() if info.warning else info.source}, "
          f"{card['parameters']:,} parameters, {card['multiply_adds'] / 1e9:.2f} G multiply-adds")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
