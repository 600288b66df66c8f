"""Train or fine-tune the slim InceptionV3 on an image folder (one sub-folder per class).

Augmentation follows slim's training preprocessing in spirit: a random crop chosen by
`tf.image.sample_distorted_bounding_box` and a random left-right flip, in their stateless
forms so that a seed gives the same batches on every run. Validation uses the
device's own preprocessing, so the accuracy printed is the one the device would see. The
aux head's loss (weight 0.4, as slim) is used when the input is large enough for it.
Checkpoints after every epoch (weights and optimizer) let a rerun resume.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from build import distributed, float_model
from build import inception_v3 as net
from build.keras_env import keras, tf
from build.weights import load_weights
from build import images
from runtime.errors import InputError
from runtime.fileio import read_json, write_json
from runtime.preprocessing import PIXEL_OFFSET, PIXELS_PER_UNIT, normalize

AUX_LOSS_WEIGHT = 0.4
TRAIN_CROP_MARGIN = 8 / 7  # images are read a little larger than the crop (1 / 0.875)


@dataclass
class TrainConfig:
    data: str
    out: str
    input_size: tuple[int, int] = (149, 149)
    depth_multiplier: float = 1.0
    weights: str = "random"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    val: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    limit_per_class: int | None = None
    min_crop_area: float = 0.25   # slim's random crop keeps 25-100% of the image
    flip: bool = True             # off for classes a mirror changes (digits, text)


def _split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A held-out split stratified by class: the same fraction of every class."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        index = rng.permutation(np.nonzero(labels == c)[0])
        n_val = max(1, int(round(len(index) * fraction)))
        val.extend(index[:n_val])
        train.extend(index[n_val:])
    return np.sort(train), np.sort(val)


def _augment(size: tuple[int, int], min_crop_area: float, flip: bool):
    """Stateless random ops, each image's seed drawn from a seeded stream: the same seed
    gives the same crops and flips whatever order tf.data's parallel calls run in."""
    def augment(seed, pixels, label):
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(pixels), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed, min_object_covered=min_crop_area, aspect_ratio_range=(0.75, 1.33),
            area_range=(min_crop_area, 1.0), max_attempts=20,
            use_image_if_no_bounding_boxes=True)
        crop = tf.slice(pixels, begin, extent)
        # The resize runtime.preprocessing does in numpy, as TF's own op (slim's too).
        image = tf.compat.v1.image.resize_bilinear(tf.cast(crop, tf.float32)[tf.newaxis],
                                                   size, align_corners=False)[0]
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
        return image / PIXELS_PER_UNIT + PIXEL_OFFSET, label  # preprocessing.normalize
    return augment


def load_training_data(config: TrainConfig, classes: list[str] | None = None,
                       num_classes: int | None = None):
    """(train pixels, train labels, val pixels, val labels, class names).

    `classes` and `num_classes` map the folders onto an existing model's classes (for
    fine-tuning or QAT); by default each sub-folder is a new class.
    """
    if classes is None and num_classes is None:
        classes = images.class_folders(config.data)
    num_classes = num_classes or len(classes)
    height, width = config.input_size
    base = (math.ceil(height * TRAIN_CROP_MARGIN), math.ceil(width * TRAIN_CROP_MARGIN))
    folders = len(images.class_folders(config.data))
    limit = None if config.limit_per_class is None else config.limit_per_class * folders
    train = images.load_labelled(config.data, base, classes, num_classes, limit,
                                 what="training", central_fraction=1.0)
    labels = np.asarray(train.labels)
    if config.val:
        val = images.load_labelled(config.val, config.input_size, classes, num_classes,
                                   what="validation")
        return train.pixels, labels, val.pixels, np.asarray(val.labels), classes
    train_index, val_index = _split(labels, config.val_fraction, config.seed)
    # Validation images are read again the device's way: central crop, model size.
    val_pixels = np.stack([images.read_pixels(train.paths[i], config.input_size)
                           for i in val_index])
    return (train.pixels[train_index], labels[train_index], val_pixels, labels[val_index],
            classes)


def datasets(config: TrainConfig, x_train, y_train, x_val, y_val, targets=None):
    """Augmented, shuffled training batches and validation batches (device preprocessing)."""
    # A new pair of seeds per image and epoch, the same on every run with this seed.
    seeds = tf.data.Dataset.random(config.seed, rerandomize_each_iteration=True).batch(2)
    images = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
              .shuffle(len(x_train), seed=config.seed))
    augment = _augment(config.input_size, config.min_crop_area, config.flip)
    train_ds = tf.data.Dataset.zip(seeds, images).map(
        lambda seed, example: augment(seed, *example), num_parallel_calls=tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices((normalize(x_val), y_val))
    if targets is not None:
        train_ds, val_ds = train_ds.map(targets), val_ds.map(targets)
    train_ds = train_ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)
    if distributed.cluster() is not None:
        return distributed.shard_by_data(train_ds), distributed.shard_by_data(val_ds.batch(64))
    return train_ds, val_ds.batch(64)


def build_model(config: TrainConfig, num_classes: int) -> tuple[keras.Model, object]:
    aux = min(config.input_size) >= net.MIN_AUX_INPUT_SIZE
    model = net.InceptionV3((*config.input_size, 3), num_classes, create_aux_logits=aux,
                            depth_multiplier=config.depth_multiplier, batch_norm_decay=0.99,
                            seed=config.seed)
    return model, load_weights(model, config.weights)


class _Checkpointer(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch, with the epoch reached."""

    def __init__(self, manager: tf.train.CheckpointManager, state_path: Path, fingerprint):
        super().__init__()
        self.manager, self.state_path, self.fingerprint = manager, state_path, fingerprint

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save()
        write_json(self.state_path, {"epoch": epoch + 1, "config": self.fingerprint})


def _resume_state(path: Path) -> dict:
    """The checkpoint's epoch and settings; a damaged state file means starting afresh."""
    try:
        return read_json(path, "checkpoint state")
    except InputError:
        return {}


def _compiled_model(config: TrainConfig, num_classes: int, steps: int):
    """The model with its losses (aux head at 0.4, as slim) and optimizer, built in the
    distribution strategy's scope (one device, or every worker's)."""
    with distributed.strategy().scope():
        model, weights_info = build_model(config, num_classes)
        output_names = model.output_names
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate,
                                                          steps * config.epochs)
        optimizer = keras.optimizers.Adam(schedule)
        model.compile(optimizer=optimizer,
                      loss={name: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                            for name in output_names},
                      loss_weights={name: (1.0 if i == 0 else AUX_LOSS_WEIGHT)
                                    for i, name in enumerate(output_names)},
                      metrics={output_names[0]: "accuracy"})
    return model, optimizer, weights_info


def _resumable(config: TrainConfig, model, optimizer) -> tuple[int, list]:
    """The epoch to start from and the checkpoint callback. Several workers start afresh:
    a resume would need every worker to restore the same checkpoint."""
    if distributed.cluster() is not None:
        return 0, []
    ckpt_dir = Path(config.out) / "checkpoint"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=1)
    state_path = ckpt_dir / "state.json"
    fingerprint = {k: v for k, v in asdict(config).items() if k not in ("epochs", "out")}
    fingerprint["input_size"] = list(config.input_size)
    initial_epoch = 0
    if state_path.is_file() and manager.latest_checkpoint:
        state = _resume_state(state_path)
        if state.get("config") == fingerprint and isinstance(state.get("epoch"), int):
            checkpoint.restore(manager.latest_checkpoint)
            initial_epoch = state["epoch"]
            print(f"Resuming from epoch {initial_epoch} ({manager.latest_checkpoint})")
        else:
            print("A checkpoint from other settings is in the way; starting afresh.")
    return initial_epoch, [_Checkpointer(manager, state_path, fingerprint)]


def train(config: TrainConfig) -> dict:
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    x_train, y_train, x_val, y_val, classes = load_training_data(config)
    steps = math.ceil(len(x_train) / config.batch_size)
    model, optimizer, weights_info = _compiled_model(config, len(classes), steps)

    def targets(x, y):
        return x, {name: y for name in model.output_names}

    train_ds, val_ds = datasets(config, x_train, y_train, x_val, y_val, targets)
    initial_epoch, callbacks = _resumable(config, model, optimizer)
    workers = distributed.num_workers()
    if initial_epoch < config.epochs:
        print(f"Training on {len(x_train)} images, validating on {len(x_val)}, "
              f"{len(classes)} classes, {config.input_size[0]}x{config.input_size[1]}, "
              f"depth multiplier {config.depth_multiplier}, weights {weights_info.source}"
              + (f", {workers} workers" if workers > 1 else ""), flush=True)
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                  initial_epoch=initial_epoch, verbose=2 if distributed.is_chief() else 0,
                  callbacks=callbacks)
    top1 = float(np.mean(np.argmax(float_model.keras_logits(model, x_val, 64), 1) == y_val))
    seconds = time.perf_counter() - start
    build_config = float_model.BuildConfig(
        input_size=config.input_size, num_classes=len(classes),
        depth_multiplier=config.depth_multiplier, weights=config.weights, seed=config.seed,
        create_aux_logits=len(model.outputs) > 1, labels=classes)
    training = {"data": config.data, "val": config.val or f"{config.val_fraction:.0%} held out",
                "train_images": int(len(x_train)), "val_images": int(len(x_val)),
                "epochs": config.epochs, "batch_size": config.batch_size,
                "learning_rate": config.learning_rate, "workers": workers, "val_top1": top1,
                "seconds": round(seconds, 1)}
    card = float_model.model_card(model, build_config, weights_info, {"training": training})
    with distributed.output_folder(config.out) as out:
        float_model.save(model, card, out)
    if distributed.is_chief():
        print(f"Final: validation top-1 {100 * top1:.2f}% on {len(x_val)} images after "
              f"{config.epochs} epochs ({seconds / 60:.1f} min); model in {config.out}")
    return training


def main(argv: list[str] | None = None) -> int:
    import argparse
    from runtime import cli
    from runtime.fileio import check_output
    p = argparse.ArgumentParser(prog="python -m build.train", description=__doc__)
    p.add_argument("--data", required=True, help="folder with one sub-folder per class")
    p.add_argument("--val", help="validation folder (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=cli.float_in(0.0, 0.5, low_open=True), default=0.1)
    p.add_argument("--out", default="artifacts/float")
    p.add_argument("--input-size", default="149")
    p.add_argument("--depth-multiplier", type=cli.DEPTH_MULTIPLIER, default=1.0)
    p.add_argument("--weights", default="random", help="random, imagenet, auto or a path")
    p.add_argument("--epochs", type=cli.positive_int, default=10)
    p.add_argument("--batch-size", type=cli.positive_int, default=32)
    p.add_argument("--learning-rate", type=cli.float_in(0.0, 10.0, low_open=True), default=1e-3)
    p.add_argument("--limit-per-class", type=cli.positive_int)
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--min-crop-area", type=cli.float_in(0.0, 1.0, low_open=True), default=0.25)
    p.add_argument("--no-flip", action="store_true", help="for classes a mirror changes")
    p.add_argument("--workers", type=cli.positive_int, default=1,
                   help="local worker processes (tf.distribute MultiWorkerMirroredStrategy)")
    args = p.parse_args(argv)
    check_output(args.out)
    if args.workers > 1 and distributed.cluster() is None:
        return distributed.launch_local("build.train", distributed.without_workers_option(
            sys.argv[1:] if argv is None else argv), args.workers)
    train(TrainConfig(
        data=args.data, out=args.out,
        input_size=float_model.parse_input_size(args.input_size),
        depth_multiplier=args.depth_multiplier, weights=args.weights, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, val=args.val,
        val_fraction=args.val_fraction, seed=args.seed,
        limit_per_class=args.limit_per_class, min_crop_area=args.min_crop_area,
        flip=not args.no_flip))
    return 0


if __name__ == "__main__":
    from runtime import cli
    raise SystemExit(cli.run(main))
