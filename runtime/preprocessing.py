"""The one definition of how an image becomes model input.

Training, calibration, evaluation and the device runtime all use it, so the int8 ranges
are measured on exactly what the device will feed, and the float model sees what it was
trained on. It is TF-slim's eval preprocessing (`inception_preprocessing.
preprocess_for_eval`), numerically:

1. `tf.image.central_crop(image, 0.875)`: the box starts at int((side - 0.875 side) / 2);
2. `tf.image.resize_bilinear(image, size, align_corners=False)`: TF1's bilinear resize,
   which slim calls, with its legacy sample grid (`half_pixel_centers=False`: output
   pixel i reads source position i * in / out) and no antialiasing. Pillow's bilinear
   filter antialiases when it shrinks, which a model trained under slim never saw
   (1-2 points of top-1 with slim-trained ImageNet weights), so the resize is here in
   numpy, computed in float32 as TensorFlow's kernel does;
3. scale to [-1, 1]: pixels / 127.5 - 1 (slim: (x / 255 - 0.5) * 2).

The resized image is kept as uint8 pixels (rounded to nearest), the interchange every
stage shares and what a raw-pixel model takes; tests/test_preprocessing.py checks every
pixel against TensorFlow within one step. numpy and Pillow only: this runs on the device.
"""
from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from runtime.errors import InputError
from runtime.fileio import regular_file

CENTRAL_FRACTION = 0.875
# The input scaling, stated once: model input = pixels / PIXELS_PER_UNIT + PIXEL_OFFSET.
# Everything else (the pixel-input models' Rescaling layer, training, the QAT input range,
# the runtime's reading of a model's input quantization) derives from these two numbers.
PIXELS_PER_UNIT = 127.5
PIXEL_OFFSET = -1.0
PIXEL_SCALE = 1 / PIXELS_PER_UNIT
INPUT_RANGE = (PIXEL_OFFSET, 255 / PIXELS_PER_UNIT + PIXEL_OFFSET)  # (-1.0, 1.0)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

ImageLike = Union[str, os.PathLike, Image.Image]


class ImageError(InputError):
    """An image could not be read or used; the message names the file and the reason."""


def describe() -> dict:
    """The preprocessing, as recorded in model cards and manifests."""
    return {"name": "slim-inception-eval", "central_fraction": CENTRAL_FRACTION,
            "resize": "bilinear, TF1 resize_bilinear(align_corners=False), no antialias",
            "input_range": list(INPUT_RANGE), "formula": "pixels / 127.5 - 1",
            "pixel_scale": PIXEL_SCALE, "pixel_offset": PIXEL_OFFSET, "color": "RGB"}


def load_image(image: ImageLike) -> Image.Image:
    """Open any common image as 8-bit RGB, upright per its EXIF orientation."""
    if isinstance(image, Image.Image):
        img = image
    else:
        try:
            regular_file(image, "image")
        except InputError as error:
            raise ImageError(str(error)) from None
        try:
            with warnings.catch_warnings():  # over Pillow's pixel limit: skipped, not used
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(image)
                img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
                Image.DecompressionBombError) as error:
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


def _sample_grid(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF's legacy bilinear sample grid on one axis: (lower, upper, weight of upper).

    Output index i reads source position i * (in / out), in float32 like TF's kernel,
    between the pixels floor and ceil of it (clamped to the image).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    position = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(position)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
    return lower.astype(np.intp), upper, (position - lower).astype(np.float32)


def resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`tf.image.resize_bilinear(align_corners=False)` of an HxWxC array: float32 HxWxC.

    Only the two source rows and columns each output pixel reads are touched, so the cost
    is that of the output, whatever the photo's size.
    """
    height, width = size
    top, bottom, y_weight = _sample_grid(pixels.shape[0], height)
    left, right, x_weight = _sample_grid(pixels.shape[1], width)
    rows_top = pixels[top].astype(np.float32)
    rows_bottom = pixels[bottom].astype(np.float32)
    x_weight = x_weight[None, :, None]
    upper = rows_top[:, left] + (rows_top[:, right] - rows_top[:, left]) * x_weight
    lower = rows_bottom[:, left] + (rows_bottom[:, right] - rows_bottom[:, left]) * x_weight
    return upper + (lower - upper) * y_weight[:, None, None]


def to_pixels(values: np.ndarray) -> np.ndarray:
    """Float pixel values (0..255) rounded to the uint8 interchange."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def resize_pixels(image: ImageLike, size: tuple[int, int],
                  central_fraction: float = CENTRAL_FRACTION) -> np.ndarray:
    """Central crop and resize to `size` (height, width): uint8 HxWx3, the raw pixels."""
    img = load_image(image)
    left, top, right, bottom = central_crop_box(*img.size, fraction=central_fraction)
    crop = np.asarray(img, dtype=np.uint8)[top:bottom, left:right]
    if crop.shape[:2] == tuple(size):
        return np.ascontiguousarray(crop)
    return to_pixels(resize_bilinear(crop, size))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to the float range the network was trained on: [-1, 1]."""
    return pixels.astype(np.float32) / np.float32(PIXELS_PER_UNIT) + np.float32(PIXEL_OFFSET)


def preprocess(image: ImageLike, size: tuple[int, int]) -> np.ndarray:
    """Float32 HxWx3 in [-1, 1]: the float model's input."""
    return normalize(resize_pixels(image, size))


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder` (recursively), by suffix, in a stable sorted order."""
    found = []
    for root, _, files in os.walk(folder):  # never follows folder symlinks: no loops
        found.extend(os.path.join(root, f) for f in files
                     if f.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)
