"""Image folders for calibration and evaluation, read with the device's preprocessing.

Unreadable or unusable files are skipped and counted, never fatal; a folder with no usable
image is a `DataError`. Labelled folders have one sub-folder per class.
"""
from __future__ import annotations

import csv
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from runtime import preprocessing
from runtime.fileio import read_labels_file, sha256
from runtime.errors import InputError

MIN_SIDE = 16  # smaller images carry no usable statistics (a 1x1 image is one colour)


class DataError(InputError):
    """No usable data; the message says what was found and what to do."""


@dataclass
class ImageSet:
    """Images resized for the model (uint8 pixels), with what was skipped and why."""
    paths: list[str]
    pixels: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Sequence[int]) -> "ImageSet":
        labels = None if self.labels is None else [self.labels[i] for i in index]
        return ImageSet([self.paths[i] for i in index], self.pixels[list(index)], {}, labels)

    def digest(self) -> str:
        """SHA-256 over the files' names and contents: identifies the set in manifests."""
        h = hashlib.sha256()
        for path in self.paths:
            h.update(os.fsencode(os.path.basename(path)) + f":{sha256(path)}\n".encode())
        return h.hexdigest()


def read_pixels(path: str, size: tuple[int, int],
                central_fraction: float = preprocessing.CENTRAL_FRACTION) -> np.ndarray:
    """One image's pixels, or ImageError with the reason it cannot be used."""
    image = preprocessing.load_image(path)  # checks it is a regular file before opening
    if min(image.size) < MIN_SIDE:
        raise preprocessing.ImageError(f"{image.size[0]}x{image.size[1]} is smaller than "
                                       f"{MIN_SIDE}x{MIN_SIDE}")
    return preprocessing.resize_pixels(image, size, central_fraction)


def try_read(path: str, size: tuple[int, int],
             central_fraction: float = preprocessing.CENTRAL_FRACTION
             ) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) or (None, why it was skipped): the one read-and-skip step."""
    try:
        return read_pixels(path, size, central_fraction), None
    except (preprocessing.ImageError, OSError, ValueError, SyntaxError) as error:
        return None, str(error).replace(f"{path}: ", "")


def image_files(folder: str | os.PathLike, what: str = "calibration") -> list[str]:
    """The image files under `folder`, or a DataError saying why there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        where = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"The {what} folder {folder} {where}; give a folder of images.")
    candidates = preprocessing.list_images(folder)
    if not candidates:
        raise DataError(f"The {what} folder {folder} holds no image files (.jpg, .png, ...); "
                        "add a few hundred photos from the deployment domain.")
    return candidates


def load_folder(folder: str | os.PathLike, size: tuple[int, int], limit: int | None = None,
                what: str = "calibration", labels_of=None,
                central_fraction: float = preprocessing.CENTRAL_FRACTION) -> ImageSet:
    """Read up to `limit` usable images under `folder` (sorted, recursive)."""
    candidates = image_files(folder, what)
    paths, pixels, skipped, labels = [], [], {}, []
    for path in tqdm(candidates, desc=f"Reading {what} images", unit="img", file=sys.stderr,
                     disable=len(candidates) < 50):
        if limit is not None and len(paths) >= limit:
            break
        label = labels_of(path) if labels_of is not None else None
        if labels_of is not None and label is None:
            skipped[path] = "not in a class sub-folder"
            continue
        image, why = try_read(path, size, central_fraction)
        if image is None:
            skipped[path] = why
            continue
        pixels.append(image)
        paths.append(path)
        labels.append(label)
    if not paths:
        reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in list(skipped.items())[:3])
        raise DataError(f"No usable image in the {what} folder {folder}: all "
                        f"{len(skipped)} file(s) were skipped ({reasons}).")
    return ImageSet(paths, np.stack(pixels), skipped, labels if labels_of else None)


def split(images: ImageSet, calibration_samples: int, held_out_samples: int = 100,
          seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Calibration images and held-out images (never the same), by a seeded shuffle.

    Half the images, up to `held_out_samples`, are held out to measure drift; the rest,
    up to `calibration_samples`, calibrate.
    """
    if len(images) < 2:
        raise DataError(f"Only {len(images)} usable image: calibration and the held-out "
                        "drift check need at least 2 (give a folder with more photos).")
    order = np.random.default_rng(seed).permutation(len(images))
    held_out = min(max(1, len(images) // 2), held_out_samples)
    n_calibration = min(calibration_samples, len(images) - held_out)
    return (images.subset(order[:n_calibration]),
            images.subset(order[len(images) - held_out:]))


def read_classes_tsv(path: Path) -> dict[str, int]:
    """wnid -> ImageNet index from a `classes.tsv` with a `wnid<TAB>imagenet_index` header."""
    lines = read_labels_file(path)  # a regular UTF-8 text file, or one sentence why not
    rows = list(csv.DictReader(lines, delimiter="\t"))
    try:
        return {r["wnid"]: int(r["imagenet_index"]) for r in rows}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path} needs a header line `wnid<TAB>imagenet_index` and one "
                        "wnid and whole-number index per line.") from None


def folder_classes(folder: str | os.PathLike, class_names: Sequence[str] | None,
                   num_classes: int) -> dict[str, int]:
    """Sub-folder name to the model's class index.

    Uses, in order: the model's own labels (from `make train`); a `classes.tsv` (wnid,
    imagenet_index) inside or beside the folder (+1 for 1001-class models with a
    background class); otherwise it fails with what to add.
    """
    folder = Path(folder)
    names = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not names:
        raise DataError(f"{folder} has no class sub-folders; a labelled folder holds one "
                        "sub-folder of images per class.")
    if class_names:
        missing = [n for n in names if n not in class_names]
        if not missing:
            return {n: list(class_names).index(n) for n in names}
    for tsv in (folder / "classes.tsv", folder.parent / "classes.tsv"):
        if tsv.exists():
            rows = read_classes_tsv(tsv)
            offset = 1 if num_classes == 1001 else 0
            missing = [n for n in names if n not in rows]
            if not missing:
                return {n: rows[n] + offset for n in names}
    raise DataError(f"Cannot map the sub-folders of {folder} ({', '.join(names[:3])}, ...) to "
                    "the model's classes: add a classes.tsv (wnid<TAB>imagenet_index) or use "
                    "a model trained on these folders (make train).")


def class_folders(folder: str | os.PathLike) -> list[str]:
    """The class names of a training folder: its sub-folders, sorted."""
    names = sorted(d.name for d in Path(folder).iterdir() if d.is_dir()) \
        if Path(folder).is_dir() else []
    if len(names) < 2:
        raise DataError(f"{folder} needs one sub-folder of images per class (at least 2), "
                        f"found {len(names)}.")
    return names


def load_labelled(folder: str | os.PathLike, size: tuple[int, int],
                  class_names: Sequence[str] | None, num_classes: int,
                  limit: int | None = None, what: str = "evaluation",
                  central_fraction: float = preprocessing.CENTRAL_FRACTION) -> ImageSet:
    mapping = folder_classes(folder, class_names, num_classes)
    root = Path(folder)
    return load_folder(folder, size, limit, what=what,
                       labels_of=lambda p: mapping.get(Path(p).relative_to(root).parts[0]),
                       central_fraction=central_fraction)


def labelled_files(folder: str | os.PathLike, class_names: Sequence[str] | None,
                   num_classes: int) -> list[tuple[str, int]]:
    """(path, label) of every image in a labelled folder, in the order evaluations use."""
    mapping = folder_classes(folder, class_names, num_classes)
    root = Path(folder)
    files = ((path, mapping.get(Path(path).relative_to(root).parts[0]))
             for path in preprocessing.list_images(folder))
    return [(path, label) for path, label in files if label is not None]


def stream_labelled(folder: str | os.PathLike, size: tuple[int, int],
                    class_names: Sequence[str] | None, num_classes: int
                    ) -> Iterator[tuple[str, np.ndarray | None, int, str | None]]:
    """(path, pixels or None, label, skip reason) one image at a time: memory stays flat."""
    for path, label in labelled_files(folder, class_names, num_classes):
        pixels, why = try_read(path, size)
        yield path, pixels, label, why
