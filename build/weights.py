"""Weights for the slim-named InceptionV3: random, Keras' ImageNet file, a TF-slim
checkpoint, or a model this project saved.

Every loader checks every shape before it assigns anything, so a bad file leaves the
model untouched, and every failure is a `WeightsError` whose message says what to do.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from build import inception_v3 as net
from build.keras_env import keras, tf
from runtime.errors import InputError

# Keras' official file: the same URL, file name and hash as keras.applications.InceptionV3.
KERAS_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                     "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5")
KERAS_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
KERAS_WEIGHTS_MD5 = "9a0d58056eeedaa3f26cb7ebd46da564"
KERAS_CLASSES = 1000
WEIGHT_CHOICES = "auto, random, imagenet, or a path (.h5, .keras, slim .ckpt)"


class WeightsError(InputError):
    """Weights could not be loaded; the message says what to do."""


@dataclass
class WeightsInfo:
    """What was loaded, recorded in the model card."""
    source: str
    path: str | None = None
    notes: list[str] = field(default_factory=list)
    warning: str | None = None


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def fetch_keras_imagenet() -> Path:
    """Keras' ImageNet file from the Keras cache, downloading it when the network allows."""
    cached = keras_cache_dir() / "models" / KERAS_WEIGHTS_FILE
    try:
        return Path(keras.utils.get_file(
            KERAS_WEIGHTS_FILE, KERAS_WEIGHTS_URL, cache_subdir="models",
            file_hash=KERAS_WEIGHTS_MD5, cache_dir=str(keras_cache_dir())))
    except Exception as error:  # urllib, socket and hash errors all mean the same here
        raise WeightsError(
            f"Could not download Keras' InceptionV3 ImageNet weights "
            f"({str(error).split(' -- ')[-1]}); "
            f"download {KERAS_WEIGHTS_URL} on a connected machine and put it at {cached}, "
            "or pass WEIGHTS=<path to the .h5>.") from None


def load_weights(model: keras.Model, weights: str) -> WeightsInfo:
    """Load `weights` (see WEIGHT_CHOICES) into `model`, built with the slim builder."""
    if weights == "random":
        return WeightsInfo("random", notes=["seeded random initialisation"])
    if weights in ("imagenet", "auto"):
        try:
            path = fetch_keras_imagenet()
        except WeightsError as error:
            if weights == "imagenet":
                raise
            message = (f"WARNING: no ImageNet weights ({error}) The model has RANDOM weights: "
                       "its predictions mean nothing until it is trained.")
            warnings.warn(message, stacklevel=2)
            return WeightsInfo("random", notes=["auto fell back to random"], warning=message)
        info = load_keras_h5(model, path)
        info.source = "imagenet"
        return info
    path = Path(weights)
    if path.suffix == ".keras":
        return load_project_model(model, _existing(path))
    if path.suffix in (".h5", ".hdf5"):
        try:
            with h5py.File(_existing(path), "r") as f:
                slim_named = any(name.startswith(net.SCOPE) for name in
                                 np.asarray(_h5_root(f).attrs.get("layer_names", [])).astype(str))
        except OSError as error:
            raise WeightsError(f"{path} is not an HDF5 weights file ({error}); give Keras' "
                               f"{KERAS_WEIGHTS_FILE} or a file saved by this project.") from None
        return load_project_h5(model, path) if slim_named else load_keras_h5(model, path)
    if _is_checkpoint(path):
        return load_slim_checkpoint(model, path)
    if path.exists():
        raise WeightsError(f"Unknown weights format {path.suffix!r} for {path}: "
                           f"WEIGHTS takes {WEIGHT_CHOICES}.")
    raise WeightsError(f"No weights file at {path}: WEIGHTS takes {WEIGHT_CHOICES}.")


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise WeightsError(f"No weights file at {path}: check the path ({WEIGHT_CHOICES}).")
    return path


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() or Path(f"{path}.index").is_file() or ".ckpt" in path.name


def _h5_root(f: h5py.File) -> h5py.Group:
    return f["model_weights"] if "model_weights" in f else f


def short_name(weight_name: str) -> str:
    """`kernel` of `Mixed_5b/Branch_0/Conv2d_0a_1x1/kernel:0`: how layers name weights."""
    return weight_name.split("/")[-1].split(":")[0]


def _h5_layer_weights(group: h5py.Group) -> dict[str, np.ndarray]:
    """A layer's weights by short name (`kernel`, `beta`, ...)."""
    names = group.attrs.get("weight_names", [])
    return {short_name(str(n)): np.asarray(group[n]) for n in
            (n.decode() if isinstance(n, bytes) else n for n in names)}


def _keras_number(name: str) -> int:
    match = re.search(r"_(\d+)$", name)
    return int(match.group(1)) if match else 0


def load_keras_h5(model: keras.Model, path: Path) -> WeightsInfo:
    """Keras' InceptionV3 layout (`conv2d_N`, `batch_normalization_N`, `predictions`).

    Keras numbers its layers in creation order, which is slim's order too, so the N-th
    Keras conv is the N-th slim conv; the `predictions` dense layer becomes the 1x1
    `Logits/Conv2d_1c_1x1` conv.
    """
    try:
        with h5py.File(path, "r") as f:
            root = _h5_root(f)
            groups = {name: _h5_layer_weights(root[name]) for name in root.attrs["layer_names"]
                      .astype(str) if len(root[name].attrs.get("weight_names", []))}
    except (OSError, KeyError) as error:
        raise WeightsError(f"{path} is not a Keras weights file ({error}); give Keras' "
                           f"{KERAS_WEIGHTS_FILE} or a file saved by this project.") from None
    convs = sorted((n for n in groups if re.fullmatch(r"conv2d(_\d+)?", n)), key=_keras_number)
    norms = sorted((n for n in groups if re.fullmatch(r"batch_normalization(_\d+)?", n)),
                   key=_keras_number)
    targets = net.trunk_conv_layers(model)
    if not convs or len(convs) != len(targets) or len(norms) != len(targets):
        raise WeightsError(
            f"{path} has {len(convs)} conv and {len(norms)} batch-norm layers, the model has "
            f"{len(targets)}: it is not a Keras InceptionV3 weights file.")
    assignments = []
    for conv, norm, layer in zip(convs, norms, targets):
        bn = groups[norm]
        assignments.append((layer, [groups[conv]["kernel"]]))
        assignments.append((model.get_layer(f"{layer.name}/BatchNorm"),
                            [bn["beta"], bn["moving_mean"], bn["moving_variance"]]))
    info = WeightsInfo("keras-h5", str(path))
    logits = _find_layer(model, f"{net.SCOPE}/Logits/Conv2d_1c_1x1")
    head = groups.get("predictions")
    if logits is not None and head is not None:
        classes = logits.kernel.shape[-1]
        if classes == head["kernel"].shape[-1]:
            kernel = head["kernel"].reshape((1, 1) + head["kernel"].shape)
            assignments.append((logits, [kernel, head["bias"]]))
        else:
            info.notes.append(f"new {classes}-class head (the file's head has "
                              f"{head['kernel'].shape[-1]} classes): fine-tune it")
    elif logits is not None:
        info.notes.append("the file has no top: the logits layer keeps its initial weights")
    if _find_layer(model, f"{net.SCOPE}/AuxLogits/Conv2d_2b_1x1") is not None:
        info.notes.append("Keras' file has no aux head: AuxLogits keeps its initial weights")
    _assign(assignments, path)
    return info


def _find_layer(model: keras.Model, name: str):
    return next((layer for layer in model.layers if layer.name == name), None)


def _assign(assignments: list, source: Path) -> None:
    """Check every shape first, then set: a mismatch changes nothing."""
    for layer, values in assignments:
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise WeightsError(
                f"Shape mismatch at {layer.name}: the model has {expected}, {source} has "
                f"{got}; build the model with the input size, classes and depth multiplier "
                "the weights were trained with.")
    for layer, values in assignments:
        layer.set_weights(values)


def assign_by_name(model: keras.Model, lookup: Callable[[str], np.ndarray | None],
                   source: Path, name_of: Callable[[str], str] = lambda n: n) -> list[str]:
    """Assign every weight of `model` from `lookup(name_of(weight name))`.

    Weight names are `<layer name>/<short name>`; returns the names that were missing,
    after raising if any trunk weight is missing.
    """
    assignments, missing = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for weight in layer.weights:
            short = short_name(weight.name)
            value = lookup(name_of(f"{layer.name}/{short}"))
            if value is None:
                missing.append(name_of(f"{layer.name}/{short}"))
                break
            values.append(value)
        else:
            assignments.append((layer, values))
    trunk_missing = [m for m in missing if m.split("/")[1] in net.BASE_ENDPOINTS]
    if trunk_missing or not assignments:
        raise WeightsError(
            f"{source} lacks {len(trunk_missing) or len(missing)} of the model's weights "
            f"(first: {(trunk_missing or missing or ['all'])[0]}); it is not an InceptionV3 "
            "with slim names, or it was made with a different final endpoint.")
    _assign(assignments, source)
    return missing


def load_slim_checkpoint(model: keras.Model, path: Path) -> WeightsInfo:
    """A TF-slim checkpoint (`InceptionV3/.../weights`, `.../BatchNorm/moving_mean`)."""
    try:
        reader = tf.train.load_checkpoint(str(path))
    except (tf.errors.OpError, ValueError) as error:
        raise WeightsError(f"Cannot read the checkpoint {path} ({error.__class__.__name__}); "
                           "give the checkpoint prefix, e.g. inception_v3.ckpt, whose "
                           ".index file sits beside it.") from None
    shapes = reader.get_variable_to_shape_map()

    def lookup(name: str):
        return reader.get_tensor(name) if name in shapes else None

    def slim_name(name: str) -> str:  # Keras' kernel/bias are slim's weights/biases
        return re.sub(r"/kernel$", "/weights", re.sub(r"/bias$", "/biases", name))

    missing = assign_by_name(model, lookup, path, slim_name)
    info = WeightsInfo("slim-checkpoint", str(path))
    if missing:
        info.notes.append(f"not in the checkpoint, left initial: {', '.join(missing)}")
    return info


def load_project_model(model: keras.Model, path: Path) -> WeightsInfo:
    """Weights from a `.keras` model this project saved, matched by layer name."""
    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a bad archive
        raise WeightsError(f"Cannot load {path} as a Keras model ({error.__class__.__name__}); "
                           "give a .keras file written by `make build` or `make train`.") \
            from None
    weights = {f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}": w.numpy()
               for layer in source.layers for w in layer.weights}
    missing = assign_by_name(model, weights.get, path)
    info = WeightsInfo("project-model", str(path))
    if missing:
        info.notes.append(f"not in {path.name}, left initial: {', '.join(missing)}")
    return info


def load_project_h5(model: keras.Model, path: Path) -> WeightsInfo:
    """Weights saved by `model.save_weights('x.h5')` from a slim-named model."""
    with h5py.File(path, "r") as f:
        root = _h5_root(f)
        weights = {f"{name}/{short}": value for name in root.attrs["layer_names"].astype(str)
                   for short, value in _h5_layer_weights(root[name]).items()}
    missing = assign_by_name(model, weights.get, path)
    info = WeightsInfo("project-h5", str(path))
    if missing:
        info.notes.append(f"not in {path.name}, left initial: {', '.join(missing)}")
    return info
