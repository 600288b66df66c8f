"""Per-layer quantization error, from TFLite's quantization debugger.

The debugger runs the float and the quantized op side by side on each image and reports
the error of every quantized tensor; dividing the RMS error by the tensor's scale puts
all layers on one footing (about 0.29 is pure rounding noise), so the worst layers stand
out. It runs on the calibrated graph the int8 model was quantized from (with the ranges
the recipe chose), so it describes the shipped model. The report lists the worst layers;
the fallback search (quantize/fallback.py) returns them to float in this order.
"""
from __future__ import annotations

import csv
import io
import math
import re
import warnings

import numpy as np
from tensorflow.lite.python import convert as tflite_convert

from build.keras_env import tf

ROUNDING_NOISE = 1 / math.sqrt(12)  # rms error of uniform rounding, in units of the scale


def layer_name(tensor_name: str) -> str:
    """`inception_v3/InceptionV3/Mixed_5b/.../Relu/Relu;...` to the slim scope (the qat
    file's too, whose layers tfmot named `quant_<layer>`)."""
    name = tensor_name.split(";")[0]
    name = re.sub(r"^(inception_v3\w*/)+(quant_)?", "", name)
    return re.sub(r"(/Relu)+$|/BiasAdd$|/Conv2D$", "", name)


def layer_statistics(calibrated: bytes, inputs: np.ndarray) -> list[dict]:
    """Every quantized tensor's error on `inputs` (in the graph's input domain)."""
    debug_model = tflite_convert.mlir_quantize(calibrated, enable_numeric_verify=True)

    def dataset():
        for x in inputs:
            yield [x[np.newaxis].astype(np.float32)]

    with warnings.catch_warnings():  # the debugger runs TF's own (deprecated) interpreter
        warnings.simplefilter("ignore", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=dataset)
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    layers = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        rmse = math.sqrt(float(row["mean_squared_error"]))
        layers.append({"tensor": layer_name(row["tensor_name"]), "node": row["tensor_name"],
                       "op": row["op_name"], "rmse": rmse,
                       "max_abs_error": float(row["max_abs_error"]), "scale": scale,
                       "rmse_over_scale": rmse / scale if scale else 0.0})
    return layers


def worst_first(layers: list[dict]) -> list[dict]:
    return sorted(layers, key=lambda r: -r["rmse_over_scale"])


def summary(layers: list[dict], images: int, worst: int = 5) -> dict:
    """What the report keeps: every layer, the worst few, and the noise floor."""
    return {"layers": layers, "worst": worst_first(layers)[:worst], "images": int(images),
            "rounding_noise_rmse_over_scale": ROUNDING_NOISE}
