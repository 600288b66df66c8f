"""Build, save and load the float model with its model card.

A float model folder holds `inception_v3.keras` and `model_card.json`; the card records
everything later stages need (input size, classes, preprocessing, weights source) and
the SHA-256 of the model file.
"""
from __future__ import annotations

import json
import platform
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from build import inception_v3 as net
from build.keras_env import keras, tf
from build.weights import WeightsInfo, load_weights
from runtime import preprocessing
from runtime.cards import CARD_FILE
from runtime.errors import InputError
from runtime.fileio import read_json, sha256, staged_outputs, write_json

MODEL_FILE = "inception_v3.keras"
MIN_INPUT, MAX_INPUT = 75, 2048  # slim's smallest input; past 2048 no device holds it


@dataclass
class BuildConfig:
    input_size: tuple[int, int] = (299, 299)
    num_classes: int = 1000
    depth_multiplier: float = 1.0
    min_depth: int = 16
    weights: str = "auto"
    seed: int = 0
    create_aux_logits: bool = False
    labels: list[str] | None = field(default=None, repr=False)


def build_args(config: BuildConfig) -> dict:
    """What `make build` was asked for: a float model is reused only if these match."""
    return {"weights": config.weights, "input_size": list(config.input_size),
            "num_classes": config.num_classes, "depth_multiplier": config.depth_multiplier,
            "min_depth": config.min_depth, "seed": config.seed,
            "create_aux_logits": config.create_aux_logits}


def parse_input_size(text: str | int) -> tuple[int, int]:
    """`299` or `299x320` (height x width)."""
    parts = str(text).lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"INPUT_SIZE must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2:
        raise InputError(f"INPUT_SIZE must be N or HxW, got {text!r}")
    if not all(MIN_INPUT <= s <= MAX_INPUT for s in sizes):
        raise InputError(f"INPUT_SIZE {text!r}: each side must be {MIN_INPUT} to {MAX_INPUT} "
                         "pixels (InceptionV3's smallest input is 75x75).")
    return sizes[0], sizes[1]


def build(config: BuildConfig) -> tuple[keras.Model, WeightsInfo]:
    """The slim InceptionV3 with the chosen weights; same config and seed, same model."""
    model = net.InceptionV3(
        (*config.input_size, 3), config.num_classes, depth_multiplier=config.depth_multiplier,
        min_depth=config.min_depth, create_aux_logits=config.create_aux_logits,
        seed=config.seed)
    return model, load_weights(model, config.weights)


def multiply_adds(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (convolutions and dense layers)."""
    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            out_h, out_w = layer.output_shape[1:3]
            kernel = layer.kernel.shape
            total += out_h * out_w * int(np.prod(kernel))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


def _all_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def library_versions() -> dict:
    import tf_keras
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__, "numpy": np.__version__}


def model_card(model: keras.Model, config: BuildConfig, info: WeightsInfo,
               extra: dict | None = None) -> dict:
    height, width = config.input_size
    card = {
        "architecture": "InceptionV3 (TF-slim nets/inception_v3.py)",
        "input_size": [height, width],
        "input_shape": [1, height, width, 3],
        "num_classes": config.num_classes,
        "depth_multiplier": config.depth_multiplier,
        "min_depth": config.min_depth,
        "create_aux_logits": config.create_aux_logits,
        "seed": config.seed,
        "outputs": "logits",
        "preprocessing": preprocessing.describe(),
        "weights": asdict(info),
        "parameters": int(model.count_params()),
        "multiply_adds": multiply_adds(model),
        "versions": library_versions(),
        "build": build_args(config),
    }
    if config.labels:
        card["labels"] = list(config.labels)
    if info.warning:
        card["warning"] = info.warning
    card.update(extra or {})
    return card


def weights_summary(card: dict) -> str:
    """What a report's reader needs to know of the weights: a model trained here from
    random weights says how (its card's `weights.source` alone would read `random`)."""
    training = card.get("training")
    if not training:
        return f"`{card['weights']['source']}`"
    return (f"trained from `{card['weights']['source']}` ({training['epochs']} epochs on "
            f"{training['train_images']} images of `{training['data']}`; top-1 "
            f"{100 * training['val_top1']:.2f} % on {training['val_images']} of `{training['val']}`)")


def save(model: keras.Model, card: dict, out_dir: str | Path) -> Path:
    """Write the model and its card into `out_dir`, all or nothing."""
    with staged_outputs(out_dir) as staging:
        model.save(staging / MODEL_FILE)
        _without_save_date(staging / MODEL_FILE)
        card = dict(card, files={MODEL_FILE: sha256(staging / MODEL_FILE)})
        write_json(staging / CARD_FILE, card)
    return Path(out_dir)


def _numbered_shared_objects(node, ids: dict[int, int]):
    """Keras names an object layers share by its memory address: number them instead."""
    if isinstance(node, dict):
        return {k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id"
                else _numbered_shared_objects(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbered_shared_objects(v, ids) for v in node]
    return node


def _without_save_date(path: Path) -> None:
    """Rewrite a `.keras` zip without what changes on every save (Keras' `date_saved`,
    memory addresses as shared-object ids, the weights entry's timestamp): the same model,
    the same bytes, so its SHA-256 repeats across runs and machines."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = json.dumps(_numbered_shared_objects(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            target.writestr(fixed, data)


def read_card(model_dir: str | Path) -> dict:
    """The card of a float model folder written by `save`, its model file's checksum
    verified (without loading the model)."""
    model_dir = Path(model_dir)
    card_path, model_path = model_dir / CARD_FILE, model_dir / MODEL_FILE
    if not card_path.is_file() or not model_path.is_file():
        raise InputError(f"No float model in {model_dir} (expected {MODEL_FILE} and "
                         f"{CARD_FILE}); run `make build OUT={model_dir}` first.")
    card = read_json(card_path, "model card")
    expected = card.get("files", {}).get(MODEL_FILE)
    if expected and sha256(model_path) != expected:
        raise InputError(f"{model_path} does not match the SHA-256 in its model card: the "
                         "file changed after it was built; rebuild it.")
    return card


def load(model_dir: str | Path) -> tuple[keras.Model, dict]:
    """A float model folder written by `save`, its checksum verified."""
    card = read_card(model_dir)
    return _load_keras_file(Path(model_dir) / MODEL_FILE), card


def _load_keras_file(path: Path) -> keras.Model:
    """What `keras.models.load_model(path, compile=False)` gives, in seconds rather than
    minutes: tf-keras reads the weights through a TensorFlow file object whose every seek
    refills a 512 KB buffer, and h5py seeks thousands of times (44 s for the 67 MB
    reference model, 6 s this way). The archive's config builds the model; its weights
    file, extracted, loads as a local `.weights.h5`."""
    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as folder:
            config = json.loads(archive.read("config.json"))
            config["compile_config"] = None
            model = keras.saving.deserialize_keras_object(config)
            weights = Path(folder) / "model.weights.h5"
            weights.write_bytes(archive.read("model.weights.h5"))
            model.load_weights(weights)
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise InputError(f"{path} is not a Keras model archive ({error}); rebuild it.") \
            from None
    return model


def keras_logits(model: keras.Model, pixels: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The float model's logits on pixels, with the device's preprocessing (the float
    reference of every drift figure, and training's validation)."""
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = preprocessing.normalize(pixels[start:start + batch_size])
        out = model(batch, training=False)
        outputs.append(np.asarray(out[0] if isinstance(out, list) else out))
    return np.concatenate(outputs).astype(np.float32)


def logits_model(model: keras.Model) -> keras.Model:
    """The deployment graph: the logits output only (no aux head; dropout is inert)."""
    if isinstance(model.output, list):
        return keras.Model(model.inputs, model.outputs[0], name=model.name)
    return model


def logits_function(model: keras.Model, input_name: str | None = None):
    """The deployment graph as a batch-1 tf.function on normalised NHWC floats, with its
    input signature: what the Keras baseline runs and what tf2onnx exports."""
    graph = logits_model(model)
    signature = [tf.TensorSpec([1, *graph.input_shape[1:]], tf.float32, name=input_name)]
    return tf.function(lambda x: graph(x, training=False), input_signature=signature), \
        signature


def pixel_input_model(model: keras.Model) -> keras.Model:
    """`model` with the normalisation folded in front: it takes raw 0..255 pixels.

    Quantized with uint8 input, the input scale is then exactly 1 and the zero point 0,
    so a device feeds resized camera pixels as they are.
    """
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    scaled = keras.layers.Rescaling(preprocessing.PIXEL_SCALE, offset=preprocessing.PIXEL_OFFSET,
                                    name="normalize")(inputs)
    return keras.Model(inputs, logits_model(model)(scaled), name=f"{model.name}_pixels")
