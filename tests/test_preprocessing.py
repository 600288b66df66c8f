"""The one preprocessing equals TF-slim's eval preprocessing, computed by TensorFlow."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from build.keras_env import tf
from build import train
from runtime import preprocessing


def slim_preprocess_for_eval(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """slim's inception_preprocessing.preprocess_for_eval, op for op, in TensorFlow."""
    x = tf.image.convert_image_dtype(image, dtype=tf.float32)
    x = tf.image.central_crop(x, central_fraction=0.875)
    x = tf.compat.v1.image.resize_bilinear(x[tf.newaxis], [height, width],
                                           align_corners=False)[0]
    return ((x - 0.5) * 2.0).numpy()


def random_image(rng, max_side: int = 900) -> np.ndarray:
    h, w = rng.integers(16, max_side, 2)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_every_pixel_within_one_step_of_slim_on_many_sizes():
    rng = np.random.default_rng(0)
    for _ in range(150):
        image = random_image(rng)
        height, width = (int(s) for s in rng.integers(8, 340, 2))
        ours = preprocessing.resize_pixels(Image.fromarray(image), (height, width))
        slim = slim_preprocess_for_eval(image, height, width)
        slim_pixels = np.clip(np.rint((slim + 1) * 127.5), 0, 255)
        assert ours.shape == (height, width, 3) and ours.dtype == np.uint8
        assert np.max(np.abs(ours.astype(np.int16) - slim_pixels)) <= 1, image.shape
        # and the float model's input is slim's to within that step
        assert np.max(np.abs(preprocessing.normalize(ours) - slim)) <= 1 / 127.5 + 1e-6


def test_resize_is_tensorflows_kernel_in_float():
    rng = np.random.default_rng(1)
    for _ in range(60):
        image = random_image(rng, 400)
        size = tuple(int(s) for s in rng.integers(1, 500, 2))  # shrink and enlarge
        theirs = tf.compat.v1.image.resize_bilinear(image[np.newaxis].astype(np.float32),
                                                    size, align_corners=False)[0].numpy()
        np.testing.assert_allclose(preprocessing.resize_bilinear(image, size), theirs,
                                   atol=2e-3)


def test_no_antialiasing_when_shrinking():
    """A one-pixel checkerboard shrunk 4x: slim samples it (black or white), Pillow's
    antialiased filter would average it to grey."""
    board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[:, :, None], 3, axis=2)
    ours = preprocessing.resize_pixels(Image.fromarray(image), (64, 64), central_fraction=1.0)
    assert set(np.unique(ours)) <= {0, 255}
    pillow = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
    assert 100 < pillow.mean() < 155 and len(np.unique(pillow)) <= 3


def test_training_augmentation_resizes_with_the_same_kernel():
    """build.train's augmentation (a TF graph) resizes a crop exactly as the device does."""
    rng = np.random.default_rng(2)
    image = random_image(rng, 300)
    augment = train._augment((37, 53), min_crop_area=1.0, flip=False)
    x, _ = augment(tf.constant([1, 2], tf.int64), tf.constant(image), 0)
    expected = preprocessing.normalize(preprocessing.resize_bilinear(image, (37, 53)))
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)


def test_training_batches_depend_on_the_seed_alone():
    """Augmentation runs on parallel tf.data calls; its crops and flips are stateless, so
    two epochs of the same seed are the same batches (QAT on the reference model changed
    55 or 67 answers from one run of the same command to the next when they were not)."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (48, 40, 40, 3), dtype=np.uint8)
    y = np.arange(48) % 3

    def epoch(seed: int) -> list[np.ndarray]:
        config = train.TrainConfig(data="", out="", input_size=(32, 32), batch_size=8,
                                   seed=seed, min_crop_area=0.3)
        train_ds, _ = train.datasets(config, x, y, x[:4], y[:4])
        return [images.numpy() for images, _ in train_ds]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(first) == 6
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("size", [(299, 299), (128, 128)])
def test_same_size_crop_is_passed_through(size):
    """An image whose central crop already has the model's size is not resampled."""
    side = int(round(size[0] / 0.875))
    image = np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)
    left, top, right, bottom = preprocessing.central_crop_box(side, side)
    ours = preprocessing.resize_pixels(Image.fromarray(image), (bottom - top, right - left))
    assert np.array_equal(ours, image[top:bottom, left:right])


def test_scaling_is_stated_once():
    assert preprocessing.INPUT_RANGE == (-1.0, 1.0)
    pixels = np.arange(256, dtype=np.uint8)
    np.testing.assert_allclose(preprocessing.normalize(pixels),
                               pixels * preprocessing.PIXEL_SCALE + preprocessing.PIXEL_OFFSET,
                               atol=1e-6)
