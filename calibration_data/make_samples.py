"""Regenerate the shipped calibration photos from the packages that install them.

Every photo here is public domain, CC0 or CC BY 2.0 (see README.md). They are re-encoded
as JPEG with the longer side at most 512 pixels; greyscale photos stay greyscale so that
calibration also exercises the conversion to RGB.
Run: .venv/bin/python calibration_data/make_samples.py
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SKIMAGE = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
           "retina.jpg", "coins.png", "moon.png", "camera.png", "grass.png", "gravel.png",
           "brick.png"]


def sources() -> dict[str, Path]:
    import matplotlib
    import sklearn
    import skimage
    skimage_data = Path(os.path.dirname(skimage.__file__)) / "data"
    found = {f"skimage_{Path(name).stem}": skimage_data / name for name in SKIMAGE}
    sklearn_images = Path(os.path.dirname(sklearn.__file__)) / "datasets" / "images"
    found.update({f"sklearn_{n}": sklearn_images / f"{n}.jpg" for n in ("china", "flower")})
    found["matplotlib_grace_hopper"] = (Path(matplotlib.get_data_path()) / "sample_data"
                                        / "grace_hopper.jpg")
    return found


def main() -> None:
    for name, path in sources().items():
        image = Image.open(path)
        image = image.convert("L" if image.mode in ("L", "I;16", "I") else "RGB")
        image.thumbnail((512, 512), Image.LANCZOS)
        image.save(HERE / f"{name}.jpg", quality=90, optimize=True)
        print(f"{name}.jpg {image.size[0]}x{image.size[1]} {image.mode}")


if __name__ == "__main__":
    main()
