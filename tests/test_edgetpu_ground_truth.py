"""The Edge TPU readiness predictor against what Coral's real compiler did, op by op."""
from __future__ import annotations

import pytest

from quantize import edgetpu
from runtime import tflite_graph as tg

from conftest import ROOT

FOLDERS = (ROOT / "tests" / "data" / "coral-compiled", ROOT.parent / "shared" / "coral-compiled")
PAIRS = {  # model: what Coral's README says the compiler left on the CPU
    "mobilenet_v1_0.25_128_quant": [],
    "keras_lstm_mnist_ptq": [],
    "posenet_mobilenet_v1_075_353_481_16_quant_decoder": ["PosenetDecoderOp"],
    "deeplab_mobilenet_edgetpu_slim_cityscapes_quant": ["RESIZE_BILINEAR", "ARG_MAX"],
    "deeplabv3_mnv2_dm05_pascal_quant": ["RESIZE_BILINEAR", "QUANTIZE", "CONCATENATION",
                                         "CONV_2D", "CONV_2D", "RESIZE_BILINEAR",
                                         "RESIZE_BILINEAR", "ARG_MAX"],
    "movenet_single_pose_lightning_ptq": None,  # the float/int32 post-processing: 59 ops
}


def pair(name: str) -> tuple[bytes, bytes]:
    for folder in FOLDERS:
        source, compiled = folder / f"{name}.tflite", folder / f"{name}_edgetpu.tflite"
        if source.is_file() and compiled.is_file():
            return source.read_bytes(), compiled.read_bytes()
    pytest.skip(f"{name}: not in tests/data/coral-compiled/ nor ../shared/coral-compiled/")


def left_on_cpu(compiled: bytes) -> tuple[list[str], set[str]]:
    """The compiled file's ops other than the Edge TPU op: names, and output tensors."""
    m = tg.load(compiled)
    graph = m.subgraphs[0]
    ops = [op for op in graph.operators if tg.op_name(m, op) != "edgetpu-custom-op"]
    return ([tg.op_name(m, op) for op in ops],
            {tg.tensor_name(graph.tensors[op.outputs[0]]) for op in ops})


@pytest.mark.parametrize("name", PAIRS)
def test_predictor_names_exactly_the_ops_the_compiler_mapped(name):
    source, compiled = pair(name)
    cpu_names, cpu_outputs = left_on_cpu(compiled)
    if PAIRS[name] is not None:
        assert cpu_names == PAIRS[name]
    ready = edgetpu.readiness(source)
    ops = edgetpu.read_ops(source)
    predicted = {ops[i].outputs[0].name for i in ready["on_cpu"]}
    wrong = sorted((predicted ^ cpu_outputs))
    assert not wrong, f"{len(wrong)} ops placed wrongly, e.g. {wrong[:3]}"
    assert ready["ops_on_edgetpu"] == len(ops) - len(cpu_outputs)
    assert ready["single_subgraph"] == (not cpu_names)


def test_every_pair_was_checked_here_or_is_in_shared():
    """The four small pairs ship with the tests: the check never silently skips them."""
    shipped = {p.name for p in FOLDERS[0].glob("*.tflite")}
    assert len(shipped) >= 8 and (FOLDERS[0] / "LICENSE").is_file()
