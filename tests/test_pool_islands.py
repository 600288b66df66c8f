"""Pool islands: XNNPACK takes the whole int8 graph, which computes what the integer one does."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from quantize import pipeline, pool_islands
from runtime import preprocessing
from runtime.classify import Classifier

from conftest import CALIBRATION_DIR


def _ops_after_delegation(model: bytes) -> collections.Counter:
    """The interpreter's nodes: the model's ops plus one DELEGATE per XNNPACK piece."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    return collections.Counter(op["op_name"] for op in interpreter._get_ops_details())


@pytest.fixture(scope="module")
def graphs(tiny_run):
    """The converter's all-integer int8 graph, with and without the islands."""
    out, _ = tiny_run
    integer = (out / pipeline.model_file("int8-stock")).read_bytes()
    return pool_islands.float_pools(integer), integer


def test_xnnpack_takes_the_island_graph_in_one_piece(graphs):
    cpu, integer = graphs
    pools = len(pool_islands.integer_pools_of(integer))
    assert pools == 10 and pool_islands.integer_pools_of(cpu) == []
    split = _ops_after_delegation(integer)
    assert split["AVERAGE_POOL_2D"] == pools and split["DELEGATE"] == pools + 1
    whole = _ops_after_delegation(cpu)
    assert whole["DELEGATE"] == 1, whole


@pytest.mark.parametrize("name", ["int8", "uint8"])
def test_the_shipped_cpu_files_are_one_xnnpack_piece(tiny_run, name):
    out, report = tiny_run
    shipped = (out / pipeline.model_file(name)).read_bytes()
    assert _ops_after_delegation(shipped)["DELEGATE"] == 1
    assert "float islands" in report["variants"][name]["graph"]
    assert report["variants"][name]["xnnpack_partitions"] == 1
    assert report["variants"]["int8-stock"]["xnnpack_partitions"] == 11  # 10 pools between


def test_round_trip_restores_the_converter_graph(graphs, tiny_float_dir, tmp_path):
    cpu, integer = graphs
    restored = pool_islands.integer_pools(cpu)
    # Same ops, tensors and buffers in the same order (the unused float twins aside).
    assert pool_islands.integer_pools_of(restored) == pool_islands.integer_pools_of(integer)
    assert len(restored) >= len(integer)
    assert pool_islands.float_pools(restored) != restored
    config = pipeline.QuantizeConfig(float_dir=tiny_float_dir, out=tmp_path / "int",
                                     variants=["int8"], calibration_dir=CALIBRATION_DIR,
                                     layer_errors=False, float_pools=False)
    report = pipeline.run(config)
    assert report["variants"]["int8"]["graph"] == "all-integer"
    shipped = (tmp_path / "int" / pipeline.model_file("int8")).read_bytes()
    assert len(pool_islands.integer_pools_of(shipped)) == 10


def test_islands_change_outputs_by_rounding_only(graphs, tmp_path):
    cpu, integer = graphs
    paths = []
    for name, model in (("cpu", cpu), ("integer", integer)):
        paths.append(tmp_path / f"{name}.tflite")
        paths[-1].write_bytes(model)
    a, b = Classifier(paths[0], num_threads=1), Classifier(paths[1], num_threads=1)
    photos = sorted(p for p in CALIBRATION_DIR.iterdir() if p.suffix.lower() in
                    (".jpg", ".jpeg", ".png"))
    step = a.output_quantization.scale
    for path in photos[:6]:
        pixels = preprocessing.resize_pixels(path, a.size)
        out_a, out_b = a.run(a.input_tensor(pixels)), b.run(b.input_tensor(pixels))
        # Each island rounds once where the integer kernel rounds once: a step or two of
        # the output scale after ten pools and the layers behind them.
        assert np.abs(out_a - out_b).max() <= 3 * step + 1e-6, path.name
        top_two = np.sort(out_b)[-2:]
        assert np.argmax(out_a) == np.argmax(out_b) or top_two[1] - top_two[0] <= 3 * step
