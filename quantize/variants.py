"""The TFLite variants: one table, one converter function.

Every variant is converted from a batch-1 concrete function, so shapes are static (the
Edge TPU compiler needs that) and outputs are logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from build.float_model import logits_model, pixel_input_model
from build.keras_env import keras, tf
from runtime.errors import InputError
from runtime.preprocessing import normalize


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    calibrated: bool = False        # needs representative images
    full_integer: bool = False      # converted all-integer: an Edge TPU candidate
    pixel_input: bool = False       # takes raw 0..255 pixels (normalisation inside)
    accuracy_first: bool = False    # made by quantize/recipe.py (float logits, ranges, ...)
    pool_islands: bool = False      # the CPU file's average pools run in float (XNNPACK)
    integer_io: str = "int8"        # input (and integer output) type of integer graphs
    edgetpu: bool = False           # the all-integer file for the Coral Edge TPU
    fallback: bool = False          # its first layers in float (quantize/fallback.py)
    trained: bool = False           # from quantization-aware training (make qat)


VARIANTS = {v.name: v for v in (
    Variant("float32", "float reference, no quantization"),
    Variant("float16", "float16 weights, float compute"),
    Variant("dynamic", "int8 weights, float activations (dynamic range)"),
    Variant("int8", "accuracy-first int8: per-channel int8 weights, int8 input (pixel - 128), "
            "float logits", calibrated=True, full_integer=True, pixel_input=True,
            accuracy_first=True, pool_islands=True),
    Variant("int8-fallback", "the accuracy-first int8 with its first layers in float "
            "(within FALLBACK_BUDGET of the multiply-adds): closer to float, slower",
            calibrated=True, full_integer=True, pixel_input=True, accuracy_first=True,
            pool_islands=True, fallback=True),
    Variant("uint8", "accuracy-first int8 with uint8 input (raw pixels), float logits",
            calibrated=True, full_integer=True, pixel_input=True, accuracy_first=True,
            pool_islands=True, integer_io="uint8"),
    Variant("coral", "all-integer uint8 for the Coral Edge TPU (raw pixels in, uint8 logits "
            "out): compile it with edgetpu_compiler", calibrated=True, full_integer=True,
            pixel_input=True, accuracy_first=True, integer_io="uint8", edgetpu=True),
    Variant("int8-stock", "the converter's default full-integer int8, int8 input and output",
            calibrated=True, full_integer=True),
    Variant("int16x8", "16-bit activations, 8-bit weights, float input and output",
            calibrated=True),
    # QAT ranges come from the fake-quant layers; the converter still wants samples to
    # make the input and output integer.
    Variant("qat", "quantization-aware trained (make qat, distilled from float), int8 input "
            "(pixel - 128), float logits (all-integer with INT8_POOLS=int8)", calibrated=True,
            full_integer=True, pixel_input=True, pool_islands=True, trained=True),
    Variant("qat-fallback", "the qat file with its first layers in float (within "
            "FALLBACK_BUDGET of the multiply-adds): closer to float, slower", calibrated=True,
            full_integer=True, pixel_input=True, pool_islands=True, trained=True,
            fallback=True),
)}
POST_TRAINING = [name for name, v in VARIANTS.items() if not v.trained]
TRAINED = [name for name, v in VARIANTS.items() if v.trained]


def parse_variants(text: str | None) -> list[str]:
    """`VARIANTS=int8,uint8` (commas or spaces); empty means all."""
    names = [n for n in (text or "").replace(",", " ").split() if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise InputError(f"Unknown variant(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(VARIANTS)}.")
    return names or list(POST_TRAINING)


def graph_for(model: keras.Model, variant: Variant) -> keras.Model:
    """The Keras graph a variant converts: logits only, pixel input where the variant wants
    (the qat model takes pixels itself: quantize/qat.py folds the normalisation in)."""
    if variant.pixel_input and not variant.trained:
        return pixel_input_model(model)
    return logits_model(model)


def make_converter(graph: keras.Model, variant: Variant,
                   representative: Callable[[], Iterable[list[np.ndarray]]] | None = None
                   ) -> tf.lite.TFLiteConverter:
    # A bare tf.Module carries the function and variables: handing the converter the Keras
    # model instead makes it re-trace every layer while saving it (5x slower, same bytes).
    spec = tf.TensorSpec([1, *graph.input_shape[1:]], tf.float32)
    module = tf.Module()
    module.variables_ = list(graph.variables)
    module.serve = tf.function(lambda x: graph(x, training=False), input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    if variant.name == "float32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant.name == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return converter
    if variant.name == "dynamic":
        return converter
    if representative is None:
        raise InputError(f"The {variant.name} variant needs calibration images.")
    converter.representative_dataset = representative
    if variant.name == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        return converter
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io_type = tf.uint8 if variant.integer_io == "uint8" else tf.int8
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type
    return converter


def convert(model: keras.Model, variant: Variant,
            representative: Callable[[], Iterable[list[np.ndarray]]] | None = None) -> bytes:
    return make_converter(graph_for(model, variant), variant, representative).convert()


def graph_inputs(pixels: np.ndarray, variant: Variant) -> np.ndarray:
    """uint8 images in the variant graph's input domain: float pixels or [-1, 1]."""
    return pixels.astype(np.float32) if variant.pixel_input else normalize(pixels)


def representative_dataset(pixels: np.ndarray, variant: Variant
                           ) -> Callable[[], Iterable[list[np.ndarray]]]:
    """Calibration samples, one batch-1 array each, in the variant graph's input domain."""
    def samples():
        for image in pixels:
            yield [graph_inputs(image, variant)[np.newaxis]]
    return samples
