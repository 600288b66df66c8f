"""Per-layer quantization error of the int8 model, from TFLite's quantization debugger.

The debugger runs the float and quantized op side by side on each image and reports the
error of every quantized tensor; dividing the RMS error by the tensor's scale puts all
layers on one footing (about 0.29 is pure rounding noise), so the worst layers stand out.
"""
from __future__ import annotations

import csv
import io
import math
import re
import warnings

import numpy as np

from build.keras_env import tf
from quantize.variants import VARIANTS, graph_for, make_converter, representative_dataset
from runtime import preprocessing

ROUNDING_NOISE = 1 / math.sqrt(12)  # rms error of uniform rounding, in units of the scale


def layer_name(tensor_name: str) -> str:
    """`inception_v3/InceptionV3/Mixed_5b/.../Relu/Relu;...` to the slim scope."""
    name = tensor_name.split(";")[0]
    name = re.sub(r"^(inception_v3\w*/)+", "", name)
    return re.sub(r"(/Relu)+$|/BiasAdd$|/Conv2D$", "", name)


def int8_layer_errors(model, calibration_pixels: np.ndarray, debug_pixels: np.ndarray,
                      worst: int = 5) -> dict:
    variant = VARIANTS["int8"]
    converter = make_converter(graph_for(model, variant), variant,
                               representative_dataset(calibration_pixels, variant,
                                                      preprocessing.normalize))
    converter.inference_input_type = tf.float32  # the debugger feeds float inputs
    converter.inference_output_type = tf.float32
    with warnings.catch_warnings():  # the debugger runs TF's own (deprecated) interpreter
        warnings.simplefilter("ignore", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset(
                debug_pixels, variant, preprocessing.normalize))
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    layers = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        rmse = math.sqrt(float(row["mean_squared_error"]))
        layers.append({"tensor": layer_name(row["tensor_name"]), "op": row["op_name"],
                       "rmse": rmse, "max_abs_error": float(row["max_abs_error"]),
                       "scale": scale, "rmse_over_scale": rmse / scale if scale else 0.0})
    ranked = sorted(layers, key=lambda r: -r["rmse_over_scale"])
    return {"layers": layers, "worst": ranked[:worst], "images": int(len(debug_pixels)),
            "rounding_noise_rmse_over_scale": ROUNDING_NOISE}
