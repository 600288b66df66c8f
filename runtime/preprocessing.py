"""The one definition of how an image becomes model input.

Calibration, evaluation and the device runtime all call these functions, so the int8
ranges are measured on exactly what the device will feed. It follows TF-slim's eval
preprocessing: central crop of 0.875 of each side, bilinear resize to the model's size,
then scale to [-1, 1]. Resizing is Pillow's bilinear filter (antialiased when shrinking).
numpy and Pillow only: this module runs on the device.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps

CENTRAL_FRACTION = 0.875
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

ImageLike = Union[str, os.PathLike, Image.Image]


class ImageError(ValueError):
    """An image could not be read or used; the message names the file and the reason."""


def describe() -> dict:
    """The preprocessing, as recorded in model cards and manifests."""
    return {"name": "slim-inception-eval", "central_fraction": CENTRAL_FRACTION,
            "resize": "bilinear (Pillow, antialiased)", "input_range": [-1.0, 1.0],
            "formula": "pixels / 127.5 - 1", "color": "RGB"}


def load_image(image: ImageLike) -> Image.Image:
    """Open any common image as 8-bit RGB, upright per its EXIF orientation."""
    if isinstance(image, Image.Image):
        img = image
    else:
        try:
            img = Image.open(image)
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ImageError(f"{image}: not a readable image ({error})") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit greyscale PNG/TIFF
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(wide / 257.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # drops alpha like TF's decode with channels=3


def central_crop_box(width: int, height: int,
                     fraction: float = CENTRAL_FRACTION) -> tuple[int, int, int, int]:
    """tf.image.central_crop's box: the start rounds down, the size is what remains."""
    top = int((height - height * fraction) / 2)
    left = int((width - width * fraction) / 2)
    return left, top, width - left, height - top


def resize_pixels(image: ImageLike, size: tuple[int, int],
                  central_fraction: float = CENTRAL_FRACTION) -> np.ndarray:
    """Central crop and resize to `size` (height, width): uint8 HxWx3, the raw pixels."""
    img = load_image(image)
    box = central_crop_box(*img.size, fraction=central_fraction)
    height, width = size
    resized = img.resize((width, height), Image.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.uint8)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to the float range the network was trained on: [-1, 1]."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def preprocess(image: ImageLike, size: tuple[int, int]) -> np.ndarray:
    """Float32 HxWx3 in [-1, 1]: the float model's input."""
    return normalize(resize_pixels(image, size))


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder` (recursively), by suffix, in a stable sorted order."""
    found = []
    for root, _, files in os.walk(folder):
        found.extend(os.path.join(root, f) for f in files
                     if f.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)
