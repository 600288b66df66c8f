"""The tools a user would pick instead, given our float model and our calibration images.

ONNX Runtime: tf2onnx exports the same Keras graph the TFLite variants come from, and
`quantize_static` makes a QDQ model with per-channel int8 weights, min/max-calibrated on
the images our int8 variant was calibrated on. Activations are uint8 on x86 (ONNX Runtime's
fast path there: its x86 int8 kernels are u8 x s8, which VNNI multiplies natively) and int8
on ARM, as ONNX Runtime's quantization guide advises.

OpenVINO: the ONNX float model read by OpenVINO, and NNCF post-training quantization on
the same images, in its default mode (performance preset, fast bias correction) and in its
most accurate one (mixed preset, full bias correction). OpenVINO runs float models in bf16
where the CPU has AMX or AVX512-BF16 unless told otherwise; the float peer is pinned to f32
so that it is the float reference it claims to be, and a bf16 row (where the CPU has it)
shows what the default gives.

All of this is optional (`make setup-peers`): a missing package skips its peer with a note.
Exports are cached in `<run>/peers/`, keyed by the float model and calibration set.
"""
from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path

import numpy as np

from benchmarks.candidates import Spec
from quantize.measure import measured

INPUT_NAME = "input"
PEER_PACKAGES = {"onnxruntime": ("tf2onnx", "onnx", "onnxruntime"),
                 "openvino": ("tf2onnx", "onnx", "openvino", "nncf")}


def missing_packages(peer: str) -> list[str]:
    return [p for p in PEER_PACKAGES[peer] if importlib.util.find_spec(p) is None]


def _key(float_sha: dict, calibration_sha: str) -> dict:
    import importlib.metadata as md
    versions = {p: md.version(p) for ps in PEER_PACKAGES.values() for p in ps
                if importlib.util.find_spec(p) is not None}
    return {"float_model": float_sha, "calibration": calibration_sha, "versions": versions}


def export_onnx(float_dir: Path, out: Path) -> dict:
    """The float Keras graph (logits, NHWC input) as ONNX, via tf2onnx."""
    from build import float_model
    model, _ = float_model.load(float_dir)
    with measured() as cost:  # about 7 GB at 299 x 299
        onnx_of(model, out)
    return cost


def onnx_of(model, out: Path) -> None:
    """A Keras model's logits graph, batch 1, input named INPUT_NAME, as ONNX (tf2onnx)."""
    import tf2onnx
    from build import float_model
    function, signature = float_model.logits_function(model, INPUT_NAME)
    tf2onnx.convert.from_function(function, input_signature=signature, opset=17,
                                  output_path=str(out))


def quantize_onnx(float_onnx: Path, calibration: np.ndarray, out: Path) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter({INPUT_NAME: x[np.newaxis]} for x in calibration)

        def get_next(self):
            return next(self.samples, None)

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    activations = QuantType.QUInt8 if x86 else QuantType.QInt8
    prepared = out.with_name(out.stem + "_preprocessed.onnx")
    with measured() as cost:
        quant_pre_process(str(float_onnx), str(prepared))
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=activations,
                        weight_type=QuantType.QInt8)
    prepared.unlink()
    cost["activations"] = "uint8" if x86 else "int8"
    return cost


def quantize_openvino(float_onnx: Path, calibration: np.ndarray, out_float: Path,
                      out_int8: Path, out_accurate: Path) -> dict:
    """NNCF twice: its default and its most accurate mode, so our int8 is compared with
    NNCF at its best."""
    import openvino as ov
    with measured() as cost:
        model = ov.convert_model(str(float_onnx))
        ov.save_model(model, str(out_float), compress_to_fp16=False)
        nncf_int8(model, calibration, out_int8)
        nncf_int8(model, calibration, out_accurate, accurate=True)
    return cost


def nncf_int8(model, calibration: np.ndarray, out: Path, accurate: bool = False) -> None:
    """NNCF post-training int8 of an OpenVINO model: its default mode (performance preset,
    fast bias correction), or its most accurate (mixed preset: asymmetric activations;
    full bias correction)."""
    import nncf
    import openvino as ov
    options = {"preset": nncf.QuantizationPreset.MIXED, "fast_bias_correction": False} \
        if accurate else {}
    dataset = nncf.Dataset([x[np.newaxis] for x in calibration])
    ov.save_model(nncf.quantize(model, dataset, subset_size=len(calibration), **options),
                  str(out))


def openvino_kernels(xml: str, threads: int, options: dict | None = None) -> dict[str, int]:
    """Which oneDNN primitives OpenVINO picked for the convolutions (e.g. AMX or VNNI
    int8): the evidence for why it is as fast as it is on this CPU."""
    import collections

    import openvino as ov
    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                    **(options or {})})
    found: collections.Counter = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            found[info["primitiveType"].astype(str)] += 1
    return dict(found.most_common())


def _openvino_uses_bf16() -> bool:
    """OpenVINO's CPU plugin picks bf16 for float models where the CPU has it."""
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def prepare(float_dir: Path, float_sha: dict, calibration: np.ndarray, calibration_sha: str,
            folder: Path, wanted: list[str]) -> tuple[list[Spec], dict]:
    """Peer candidates (exported now or taken from the cache) and notes on what is not."""
    notes, specs, costs = {}, [], {}
    available = []
    for peer in wanted:
        missing = missing_packages(peer)
        if missing:
            notes[peer] = (f"skipped: {', '.join(missing)} not installed (make setup-peers "
                           "installs the pinned peers)")
        else:
            available.append(peer)
    if not available:
        return specs, notes
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(float_sha, calibration_sha)
    stamp = folder / "peers.json"
    cached = json.loads(stamp.read_text()) if stamp.is_file() else {}
    fresh = cached.get("key") == key
    costs = cached.get("costs", {}) if fresh else {}
    float_onnx = folder / "inception_v3_float32.onnx"
    if not (fresh and float_onnx.is_file()):
        print("[peers] tf2onnx: exporting the float model to ONNX", flush=True)
        costs = {"tf2onnx": export_onnx(float_dir, float_onnx)}
    if "onnxruntime" in available:
        int8 = folder / "inception_v3_int8.onnx"
        if "onnxruntime" not in costs or not int8.is_file():
            print("[peers] onnxruntime: quantize_static (QDQ, per-channel)", flush=True)
            costs["onnxruntime"] = quantize_onnx(float_onnx, calibration, int8)
        act = costs["onnxruntime"]["activations"]
        specs += [Spec("onnxruntime float32", "onnxruntime", str(float_onnx), "onnxruntime",
                       "float32"),
                  Spec("onnxruntime int8", "onnxruntime", str(int8), "onnxruntime", "int8",
                       {"activations": act})]
    if "openvino" in available:
        ov_float, ov_int8 = folder / "openvino_float32.xml", folder / "openvino_int8.xml"
        ov_accurate = folder / "openvino_int8_accurate.xml"
        if "openvino" not in costs or not ov_accurate.is_file():
            print("[peers] openvino: NNCF post-training quantization", flush=True)
            costs["openvino"] = quantize_openvino(float_onnx, calibration, ov_float, ov_int8,
                                                  ov_accurate)
        specs += [Spec("openvino float32", "openvino", str(ov_float), "openvino", "float32",
                       {"INFERENCE_PRECISION_HINT": "f32"}),
                  Spec("openvino int8", "openvino", str(ov_int8), "openvino", "int8"),
                  Spec("openvino int8 (NNCF accurate)", "openvino", str(ov_accurate),
                       "openvino", "int8")]
        if _openvino_uses_bf16():
            specs.append(Spec("openvino float (bf16)", "openvino", str(ov_float),
                              "openvino", "bf16"))
        notes["openvino_kernels"] = {s.name: openvino_kernels(s.path, 1, s.options)
                                     for s in specs if s.kind == "openvino"}
    stamp.write_text(json.dumps({"key": key, "costs": costs}, indent=2))
    for peer in available:
        notes[peer] = "measured"
    notes["conversion"] = costs
    return specs, notes
