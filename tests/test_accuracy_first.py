"""The accuracy-first int8: each step reduces the error it targets, against the converter's
own quantization of the same small model, on the same images."""
from __future__ import annotations

import numpy as np
import pytest

from build import float_model, images
from quantize import (activation_stats, bias_correction, calibrated, drift, equalization,
                      fallback, layer_errors, logits_weights, pool_islands, ranges, recipe, report,
                      variants, weight_ranges, weight_rounding)
from runtime import tflite_graph as tg
from runtime.interpreter import interpreter_module

from conftest import CALIBRATION_DIR

INT8 = variants.VARIANTS["int8"]


@pytest.fixture(scope="module")
def setting(tiny_float_dir):
    model, card = float_model.load(tiny_float_dir)
    everything = images.load_folder(CALIBRATION_DIR, tuple(card["input_size"]))
    calibration, held_out = images.split(everything, 200, 100, 0)
    graph = variants.graph_for(model, INT8)
    calibrated_graph = calibrated.calibrate(
        graph, INT8, variants.representative_dataset(calibration.pixels, INT8))
    inputs = variants.graph_inputs(calibration.pixels, INT8)
    stats = activation_stats.collect(calibrated_graph, inputs)
    return model, calibration, held_out, calibrated_graph, inputs, stats


@pytest.fixture(scope="module")
def built(setting):
    model, calibration, held_out, *_ = setting
    reference = float_model.keras_logits(model, held_out.pixels)
    return recipe.build(model, INT8, calibration.pixels, held_out.pixels, reference,
                        recipe.Recipe(equalization=True))


def activations(model: bytes, name: str, inputs: np.ndarray) -> np.ndarray:
    """One tensor's (dequantized) values on every input, on the built-in kernels."""
    module = interpreter_module()
    interpreter = module.Interpreter(
        model_content=model, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    tensor = next(d for d in interpreter.get_tensor_details() if d["name"] == name)
    rows = []
    for x in inputs:
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.rint(x / scale + zero), info.min, info.max)
        interpreter.set_tensor(detail["index"], x[np.newaxis].astype(detail["dtype"]))
        interpreter.invoke()
        value = interpreter.get_tensor(tensor["index"]).astype(np.float64)
        if tensor["dtype"] != np.float32:
            scale, zero = tensor["quantization"]
            value = (value - zero) * scale
        rows.append(value)
    return np.stack(rows)


def tflite_logits(model: bytes, pixels: np.ndarray) -> np.ndarray:
    """An int8 graph's dequantized logits on uint8 images."""
    graph = tg.load(model).subgraphs[0]
    out = activations(model, tg.tensor_name(graph.tensors[graph.outputs[0]]),
                      variants.graph_inputs(pixels, INT8))
    return out.reshape(len(pixels), -1)


def _answer_error(logits: np.ndarray, expected: np.ndarray) -> float:
    """Mean error of the five best classes' logits, which decide the answer."""
    top5 = np.argsort(-expected, axis=1)[:, :5]
    return float(np.mean(np.abs(np.take_along_axis(logits - expected, top5, axis=1))))


def test_each_step_is_measured_from_the_converters_own_quantization(built):
    names = [s["step"] for s in built.steps]
    assert names[0] == "converter" and names[1] == "float logits"
    assert names[2].startswith("equalization (")
    assert names[3].startswith("ranges (") and names[4] == "weight ranges (MSE)"
    assert names[5] == "weight rounding (GPTQ)" and names[6].startswith("bias correction (")
    assert names[7:] == ["logits layer: int8 weights"]
    assert all(row["gap_change"] >= 0 for row in built.steps)


def test_float_logits_lift_the_8_bit_cap_and_cut_the_output_error(built):
    converter, float_logits = built.steps[0], built.steps[1]
    assert float_logits["sqnr_db"] > converter["sqnr_db"]
    m = tg.load(built.cpu)
    graph = m.subgraphs[0]
    assert graph.tensors[graph.outputs[0]].type == tg.TYPE.FLOAT32
    assert tg.op_names(built.cpu)[-3:] == ["DEQUANTIZE", "CONV_2D", "RESHAPE"]
    logits = graph.operators[-2]
    assert graph.tensors[logits.inputs[0]].type == tg.TYPE.FLOAT32
    assert graph.tensors[logits.inputs[1]].type == tg.TYPE.INT8  # step 7: int8 weights
    # the Edge TPU graph stays all-integer
    integer = tg.load(built.integer).subgraphs[0]
    assert integer.tensors[integer.outputs[0]].type == tg.TYPE.INT8


def test_integer_logits_spend_their_steps_on_the_answer(setting, built):
    # The all-integer (Edge TPU) graph's 8-bit logits span the lowest fifth-best logit to
    # the 99th percentile of the highest, not every logit: finer steps where the answer is
    # decided (so fewer ties), than the same graph with its output range chosen like any
    # other tensor's.
    model, calibration, held_out, *_ = setting
    reference = float_model.keras_logits(model, calibration.pixels)
    low, high = ranges.answer_range(reference)
    graph = tg.load(built.integer).subgraphs[0]
    scale = float(graph.tensors[graph.outputs[0]].quantization.scale[0])
    assert scale == pytest.approx((high - low) / 255, rel=0.02)
    before = calibrated.quantize(built.calibrated, np.int8)
    pixels = np.concatenate([calibration.pixels, held_out.pixels])
    expected = float_model.keras_logits(model, pixels)

    def answer_error(model_bytes: bytes) -> float:
        return _answer_error(tflite_logits(model_bytes, pixels), expected)
    assert answer_error(built.integer) < answer_error(before)


def test_exact_pixel_input(built):
    graph = tg.load(built.cpu).subgraphs[0]
    quant = graph.tensors[graph.inputs[0]].quantization
    assert (float(quant.scale[0]), int(quant.zeroPoint[0])) == (1.0, -128)


def _int8_sqnr(candidate, calibration, held_out, reference) -> float:
    graph = calibrated.calibrate(variants.graph_for(candidate, INT8), INT8,
                                 variants.representative_dataset(calibration.pixels, INT8))
    return recipe.held_out_drift(calibrated.quantize(graph, np.int8), held_out.pixels,
                                 reference)["sqnr_db"]


def _skewed(model, skew):
    """A copy of `model` that `skew` rescales (the same function)."""
    from build.keras_env import keras
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    skew(copy)
    return copy


def _equalization_wins_back_the_skew(setting, skewed, monkeypatch, only: str) -> None:
    """Equalizing `skewed` with only the `only` kind of chain keeps the function and wins
    back more than 3 dB of int8 SQNR on held-out images."""
    model, calibration, held_out, *_ = setting
    other = "concat_chains" if only == "chains" else "chains"
    expected = len(getattr(equalization, only)(skewed))
    monkeypatch.setattr(equalization, other, lambda m: [])
    equalized, count = equalization.equalize(skewed, calibration.pixels[:32])
    assert count == expected
    reference = float_model.keras_logits(model, held_out.pixels)
    for candidate in (skewed, equalized):
        np.testing.assert_allclose(float_model.keras_logits(candidate, held_out.pixels),
                                   reference, atol=1e-4 * np.abs(reference).max())
    assert _int8_sqnr(equalized, calibration, held_out, reference) > \
        _int8_sqnr(skewed, calibration, held_out, reference) + 3


def test_equalization_keeps_the_function_and_cuts_the_error_of_uneven_channels(
        setting, monkeypatch):
    # The same function with one channel of every equalizable activation 30x wider than
    # the rest (its readers' weights 30x smaller): what one int8 range per tensor fits worst.
    def skew(copy):
        chains = equalization.chains(copy)
        assert len(chains) >= 10
        for source, _, readers in chains:
            s = np.ones(readers[0].get_weights()[0].shape[2], np.float32)
            s[0] = 1 / 30
            equalization.rescale(source, readers, s)
    _equalization_wins_back_the_skew(setting, _skewed(setting[0], skew), monkeypatch,
                                     "chains")


def test_concat_equalization_fits_every_branch_of_a_block_in_its_one_range(
        setting, monkeypatch):
    # TFLite gives a concatenation and all its inputs one range: here one channel of each
    # Inception block's branches is 30x wider than the rest. The reduction blocks pass the
    # block before them through a max pool, so the readers of two blocks undo one scale.
    def skew(copy):
        concats = equalization.concat_chains(copy)
        names = [chain.concat.name.split("/")[1] for chain in concats]
        assert names == ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                         "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b",
                         "Mixed_7c"]
        for chain in concats:
            width = sum(segment.width for segment in chain.segments)
            assert width == chain.concat.output.shape[-1]
            s, start = np.ones(width, np.float32), 0
            for segment in chain.segments:
                if segment.source is not None:
                    s[start] = 1 / 30
                start += segment.width
            equalization.rescale_concat(chain, s)
        assert [segment.upstream is not None for segment in concats[3].segments] == \
            [False, False, True]  # Mixed_6a: two conv branches and Mixed_5d max-pooled
    _equalization_wins_back_the_skew(setting, _skewed(setting[0], skew), monkeypatch,
                                     "concat_chains")


def test_mse_ranges_reduce_the_measured_layer_errors(setting):
    *_, calibrated_graph, inputs, stats = setting
    minmax = ranges.choose(stats, "minmax")
    mse = ranges.choose(stats, "mse")
    predicted = [(ranges.expected_error(s, *mse[n]), ranges.expected_error(s, *minmax[n]))
                 for n, s in stats.items()]
    assert all(a <= b * (1 + 1e-9) for a, b in predicted)
    measured = {}
    for method, chosen in (("minmax", minmax), ("mse", mse)):
        rows = layer_errors.layer_statistics(calibrated.with_ranges(calibrated_graph, chosen),
                                             inputs[:4])
        measured[method] = np.mean([r["rmse"] for r in rows])
    assert measured["mse"] < measured["minmax"]


def test_percentile_clips_only_the_tails():
    stats = activation_stats.TensorStats(0.0, 100.0)
    values = np.concatenate([np.random.default_rng(0).uniform(0, 10, 100_000), [100.0]])
    stats.add(values)
    low, high = ranges.percentile_range(stats)
    assert low == 0.0 and 9.5 < high < 10.5


def test_answer_range_is_not_one_images():
    # 8-bit logits: from the lowest fifth-best logit to the 99th percentile of the best,
    # so one image with a towering logit does not coarsen every other image's steps.
    logits = np.random.default_rng(0).normal(0, 2, (200, 10))
    logits[:, 0] += 12
    logits[7, 0] = 70.0
    low, high = ranges.answer_range(logits)
    assert low == pytest.approx(min(np.sort(logits, axis=1)[:, -5].min(), 0.0))
    best = np.sort(logits[:, 0])
    assert best[-3] <= high <= best[-2] < 25  # the 99th percentile, not 70


def test_weight_ranges_round_every_convolution_closer_and_keep_its_bias(setting):
    """The graph written with MSE weight scales, read back against the converter's own:
    its int8 weights, dequantized, are closer to the float weights in all (the error the
    step targets: about 1 % less here and on the reference model, where the int8's flips
    went from 44, 41 and 43 to 29, 35 and 38 over three calibration samples), never
    further in any convolution, and each bias keeps its float value."""
    _, _, _, calibrated_graph, _, _ = setting
    stock = calibrated.quantize(calibrated_graph, np.int8)
    ranged = weight_ranges.apply(stock, calibrated_graph, weight_ranges.choose(calibrated_graph))
    exact = _weighted_ops(calibrated_graph)
    stock_ops, ranged_ops = _weighted_ops(stock), _weighted_ops(ranged)
    errors = {}
    for name, (weights, _, _, _) in exact.items():
        errors[name] = [float(np.sum((weights - ops[name][0]) ** 2))
                        for ops in (stock_ops, ranged_ops)]
        _, stock_bias, step, _ = stock_ops[name]
        _, ranged_bias, ranged_step, _ = ranged_ops[name]
        assert np.all(np.abs(ranged_bias - stock_bias) <= ranged_step / 2 + 1e-9), name
    assert all(r <= s * (1 + 1e-6) for s, r in errors.values())
    total_stock, total_ranged = np.sum(list(errors.values()), axis=0)
    assert total_ranged < total_stock


def test_conv_patches_are_the_rows_tflite_multiplies(setting):
    """Every convolution of the float graph (strided, 1x7, 7x1, SAME and VALID): its
    sampled input rows times its weights, plus bias, through its ReLU, are its output at
    those positions, as LiteRT computed it."""
    *_, calibrated_graph, inputs, _ = setting
    m = tg.load(calibrated_graph)
    graph = m.subgraphs[0]
    convs = [op for op in graph.operators if tg.op_name(m, op) == "CONV_2D"]
    shapes = set()
    for op in convs:
        weights = tg.buffer_array(m, graph.tensors[op.inputs[1]]).astype(np.float64)
        bias = tg.buffer_array(m, graph.tensors[op.inputs[2]]).astype(np.float64)
        name = tg.tensor_name(graph.tensors[op.outputs[0]])
        x = activations(calibrated_graph, tg.tensor_name(graph.tensors[op.inputs[0]]),
                        inputs[:1])[0]
        y = activations(calibrated_graph, name, inputs[:1])[0].reshape(-1, len(weights))
        rows = weight_rounding.conv_patches(x, op.builtinOptions, weights.shape[1:3],
                                            10 ** 9, np.random.default_rng(0))
        computed = rows @ weights.reshape(len(weights), -1).T + bias
        if op.builtinOptions.fusedActivationFunction == 1:  # RELU
            computed = np.maximum(computed, 0)
        assert computed.shape == y.shape, name
        np.testing.assert_allclose(computed, y, atol=1e-4 * np.abs(y).max() + 1e-6,
                                   err_msg=name)
        shapes.add((weights.shape[1:3], op.builtinOptions.strideH, op.builtinOptions.padding))
    assert len(shapes) >= 5, shapes


def test_gptq_rounding_cuts_the_output_error_on_images_it_never_saw(setting):
    """The error GPTQ targets is a convolution's output error, (W - W_q) H (W - W_q)^T:
    with H from the calibration images and the same per-channel scales, its rounding
    beats round-to-nearest on held-out images' H, in all and at the first convolution
    (raw pixels, where it matters most; on the reference model it took a fifth off the
    typical change of the float model's top-two logit gap and flips went 29 -> 23)."""
    _, _, held_out, calibrated_graph, inputs, _ = setting
    scales = weight_ranges.choose(calibrated_graph)
    codes = weight_rounding.rounded(
        calibrated_graph, scales, weight_rounding.input_correlations(calibrated_graph, inputs))
    unseen = weight_rounding.input_correlations(
        calibrated_graph, variants.graph_inputs(held_out.pixels, INT8))
    m = tg.load(calibrated_graph)
    graph = m.subgraphs[0]
    errors = []
    for op in graph.operators:
        name = tg.tensor_name(graph.tensors[op.outputs[0]])
        if name not in codes:
            continue
        w = tg.buffer_array(m, graph.tensors[op.inputs[1]]).astype(np.float64)
        s = scales[name].reshape(-1, 1, 1, 1)
        errors.append([_output_error(w, q * s, unseen[name].total())
                       for q in (weight_ranges.int8_codes(w, scales[name]), codes[name])])
    nearest, gptq = np.sum(errors, axis=0)
    assert len(errors) > 50
    assert gptq < 0.8 * nearest, (gptq, nearest)
    assert errors[0][1] < 0.5 * errors[0][0], errors[0]


def _output_error(weights: np.ndarray, rounded: np.ndarray, correlation: np.ndarray) -> float:
    error = (weights - rounded).reshape(len(weights), -1)
    return float(np.einsum("ok,kl,ol->", error, correlation, error))


def _weighted_ops(model: bytes) -> dict:
    """Each convolution's (dequantized weights, float bias, bias step, op) by its output
    name."""
    m = tg.load(model)
    graph = m.subgraphs[0]
    found = {}
    for op in graph.operators:
        if tg.op_name(m, op) != "CONV_2D":
            continue
        weights, bias = graph.tensors[op.inputs[1]], graph.tensors[op.inputs[2]]
        values = tg.buffer_array(m, weights).astype(np.float64)
        bias_values = tg.buffer_array(m, bias).astype(np.float64)
        step = np.zeros(len(values))
        if weights.type == tg.TYPE.INT8:
            values = values * np.asarray(weights.quantization.scale).reshape(-1, 1, 1, 1)
            step = np.asarray(bias.quantization.scale, np.float64)
            bias_values = bias_values * step
        found[tg.tensor_name(graph.tensors[op.outputs[0]])] = (values, bias_values, step, op)
    return found


def test_bias_correction_cancels_the_mean_shift_of_rounded_weights(setting):
    *_, calibrated_graph, inputs, stats = setting
    quantized = calibrated.quantize(calibrated_graph)
    corrected, info = bias_correction.correct(quantized, calibrated_graph, stats)
    assert info["layers"] > 50
    m = tg.load(quantized)
    graph = m.subgraphs[0]
    convs = [tg.tensor_name(graph.tensors[op.outputs[0]]) for op in graph.operators
             if tg.op_name(m, op) == "CONV_2D"]
    shift = {"before": 0.0, "after": 0.0}
    for name in convs[1:-1:6]:  # a sample of the trunk's convolutions
        reference = activations(calibrated_graph, name, inputs)
        for key, model in (("before", quantized), ("after", corrected)):
            error = (reference - activations(model, name, inputs)).reshape(
                -1, reference.shape[-1]).mean(axis=0)
            shift[key] += float(np.abs(error).sum())
    assert shift["after"] < 0.8 * shift["before"], shift


def test_bias_correction_by_tap_means_is_exact_where_taps_read_padding(setting):
    """After GPTQ, which may move a weight far where its tap only reads padding, the
    channel-mean rule adds a shift no output has; each tap's own mean (from GPTQ's patch
    sample) leaves the sampled convolutions' output means closer to float."""
    *_, calibrated_graph, inputs, stats = setting
    scales = weight_ranges.choose(calibrated_graph)
    measured = weight_rounding.input_correlations(calibrated_graph, inputs)
    gptq = weight_ranges.apply(calibrated.quantize(calibrated_graph), calibrated_graph, scales,
                               weight_rounding.rounded(calibrated_graph, scales, measured))
    tap_means = {name: correlation.mean() for name, correlation in measured.items()}
    models = {"channel": bias_correction.correct(gptq, calibrated_graph, stats)[0],
              "tap": bias_correction.correct(gptq, calibrated_graph, stats, tap_means)[0]}
    m = tg.load(gptq)
    graph = m.subgraphs[0]
    convs = [tg.tensor_name(graph.tensors[op.outputs[0]]) for op in graph.operators
             if tg.op_name(m, op) == "CONV_2D"]
    shift = {"channel": 0.0, "tap": 0.0}
    for name in convs[1:-1:6]:
        reference = activations(calibrated_graph, name, inputs)
        for key, model in models.items():
            error = (reference - activations(model, name, inputs)).reshape(
                -1, reference.shape[-1]).mean(axis=0)
            shift[key] += float(np.abs(error).sum())
    assert shift["tap"] < 0.85 * shift["channel"], shift  # 0.75 here


def test_fallback_prefixes_are_the_stem_chain_up_to_each_weighted_layer(built):
    """Every op up to each weighted one, from the input to the first fork (MaxPool_5a's
    output, which Mixed_5b's four branches read): Conv2d_1a to Conv2d_4a."""
    found = fallback.prefixes(built.cpu)
    macs = fallback.multiply_adds(built.cpu)
    assert [layer for layer, _ in found] == list(macs)[:5]
    assert [layer_errors.layer_name(layer) for layer, _ in found] == [
        f"InceptionV3/{name}" for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3",
                                           "Conv2d_3b_1x1", "Conv2d_4a_3x3")]
    m = tg.load(built.cpu)
    names = [tg.tensor_name(m.subgraphs[0].tensors[op.outputs[0]])
             for op in m.subgraphs[0].operators]
    for layer, nodes in found:
        assert nodes == names[:names.index(layer) + 1]
    assert any("MaxPool" in node for node in found[3][1])  # the stem's pool, kept float


def test_a_float_first_layer_computes_what_the_int8_one_rounds(setting, built):
    """The first convolution in float, with the int8 file's weights dequantized, then one
    QUANTIZE onto its int8 output: the same codes as the int8 convolution (which sums the
    same products exactly and rounds once), but where float32 lands on the other side of
    a half step. So the weights, the bias and the ReLU are the int8 file's."""
    _, calibration, *_ = setting
    layer, nodes = fallback.prefixes(built.cpu)[0]
    floated = fallback.float_prefix(built.cpu, nodes)
    assert tg.op_names(floated)[:4] == ["DEQUANTIZE", "CONV_2D", "QUANTIZE", "CONV_2D"]
    inputs = variants.graph_inputs(calibration.pixels[:8], INT8)
    graph = tg.load(built.cpu).subgraphs[0]
    step = next(t.quantization.scale[0] for t in graph.tensors if tg.tensor_name(t) == layer)
    int8, float_then_rounded = (np.rint(activations(model, layer, inputs) / step)
                                for model in (built.cpu, floated))
    assert np.abs(int8 - float_then_rounded).max() <= 1
    assert np.mean(int8 == float_then_rounded) > 0.999


def _coarse_stem(setting):
    """The setting's int8 with the first convolution's output range 100 times its largest
    value: rounding that activation is then the int8's largest error (logits float)."""
    graph = setting[3]
    first = next(iter(fallback.multiply_adds(graph)))
    low, high = calibrated.activation_ranges(graph)[first]
    coarse = calibrated.with_ranges(graph, {first: (low, 100 * high)})
    return calibrated.quantize(coarse, np.int8, calibrated.logits_nodes(coarse),
                               float_output=True)


def test_fallback_keeps_the_prefix_that_removes_a_coarse_activation(setting):
    """Only a prefix that holds the activation's reader as well removes its rounding: the
    first convolution alone in float still writes it through the coarse range. Scored as
    the pipeline scores, on the calibration and held-out images."""
    model, calibration, held_out, *_ = setting
    start = _coarse_stem(setting)
    pixels = np.concatenate([calibration.pixels, held_out.pixels])
    reference = float_model.keras_logits(model, pixels)
    scores = {}

    def score(candidate):
        scores[candidate] = scores.get(candidate) or recipe.held_out_drift(
            candidate, pixels, reference)
        return scores[candidate]
    start_error = score(start)["gap_change"]
    chosen, layers = fallback.search(start, score, budget=1.0, max_layers=3)
    assert len(layers) >= 2, layers
    assert layers[-1]["gap_change"] < 0.5 * start_error, layers
    assert layers[0]["gap_change"] > 0.8 * start_error, layers
    assert tg.op_names(chosen)[:len(layers) + 2] == \
        ["DEQUANTIZE", *["CONV_2D"] * len(layers), "QUANTIZE"]  # one rounding, after
    graph = tg.load(chosen).subgraphs[0]
    first_ops = graph.operators[1:len(layers) + 1]
    assert all(graph.tensors[op.outputs[0]].type == tg.TYPE.FLOAT32 for op in first_ops)
    nothing, none = fallback.search(start, score, budget=1e-6, max_layers=8)
    assert nothing is start and none == []
    lines = report._fallback_lines("int8-fallback", {"budget": 1.0, "float_layers": layers})
    assert sum(line.startswith("- `InceptionV3/Conv2d_") for line in lines) == len(layers)
    assert "none did" in "".join(report._fallback_lines("qat-fallback", {
        "budget": 1e-6, "float_layers": []}))


def test_int8_logits_weights_shrink_the_layer_and_their_bias_takes_back_the_rounding(
        setting, built):
    """The float logits layer with int8 weights: a quarter of its bytes, output still float,
    and the float bias cancels the mean shift the rounded weights cause (without it, each
    class's logit is off by (W - W_q) E[x] on average)."""
    _, calibration, *_ = setting
    pixels = calibration.pixels[:64]
    stats = activation_stats.collect(built.calibrated, variants.graph_inputs(pixels, INT8))
    before = calibrated.quantize(built.calibrated, np.int8,
                                 calibrated.logits_nodes(built.calibrated), float_output=True)
    after = logits_weights.int8_weights(before, built.calibrated, stats)
    uncorrected = logits_weights.int8_weights(before, built.calibrated, {})
    graph = tg.load(before).subgraphs[0]
    weights = graph.tensors[graph.operators[-2].inputs[1]]
    assert len(before) - len(after) == pytest.approx(3 * np.prod(weights.shape), rel=0.01)
    expected = tflite_logits(before, pixels)

    def mean_shift(model: bytes) -> float:  # per class, over the images
        return float(np.mean(np.abs(np.mean(tflite_logits(model, pixels) - expected, 0))))
    assert mean_shift(after) < 0.5 * mean_shift(uncorrected)
    assert logits_weights.int8_weights(after, built.calibrated, stats) == after  # once only


def test_int8_logits_weights_round_as_the_convolutions_do(setting, built):
    """With the recipe's scales and GPTQ codes the logits layer's int8 weights answer
    closer to its float weights than nearest rounding on max-abs scales, on images GPTQ
    never saw (on the reference model: median top-two gap change 0.0305 -> 0.0286)."""
    model, calibration, held_out, calibrated_graph, inputs, stats = setting
    scales = weight_ranges.choose(built.calibrated)
    codes = weight_rounding.rounded(
        built.calibrated, scales, weight_rounding.input_correlations(built.calibrated, inputs))
    before = calibrated.quantize(built.calibrated, np.int8,
                                 calibrated.logits_nodes(built.calibrated), float_output=True)
    nearest = logits_weights.int8_weights(before, built.calibrated, stats)
    gptq = logits_weights.int8_weights(before, built.calibrated, stats, scales, codes)
    graph = tg.load(gptq).subgraphs[0]
    op = graph.operators[-2]
    name = tg.tensor_name(graph.tensors[op.outputs[0]])
    assert np.array_equal(tg.buffer_array(tg.load(gptq), graph.tensors[op.inputs[1]]),
                          codes[name])
    expected = tflite_logits(before, held_out.pixels)

    def error(model: bytes) -> float:
        return float(np.mean((tflite_logits(model, held_out.pixels) - expected) ** 2))
    assert error(gptq) < 0.95 * error(nearest), (error(gptq), error(nearest))  # 0.90


def test_the_final_pool_hands_its_float_average_to_the_float_logits_layer(built):
    """The CPU file's final pool feeds the float logits layer its float average: no int8
    rounding for a DEQUANTIZE to undo (on the reference model, where the pool averages
    4 x 4 values, the median top-two gap change went 0.0325 -> 0.0306; this test model's
    last map is 1 x 1, where there is nothing to round). `integer_pools` undoes it."""
    handed = pool_islands.float_pools(built.cpu)
    rounded = pool_islands.float_pools(built.cpu, keep=(9,))  # the last pool stays int8
    assert tg.op_names(handed)[-3:] == ["AVERAGE_POOL_2D", "CONV_2D", "RESHAPE"]
    assert tg.op_names(rounded)[-4:] == ["AVERAGE_POOL_2D", "DEQUANTIZE", "CONV_2D",
                                         "RESHAPE"]
    assert pool_islands.integer_pools_of(handed) == []
    assert tg.op_names(pool_islands.integer_pools(handed)) == tg.op_names(built.cpu)


def test_gate_names_the_variants_below_the_agreement():
    results = {"int8": {"drift": {"top1_agreement": 0.995}},
               "int8-stock": {"drift": {"top1_agreement": 0.98}}}
    gate = report.apply_gate(results, None, min_agreement=99.0)
    assert gate["failed"] == ["int8-stock"] and "agreement 98.00 %" in \
        report.gate_failures(gate)
    assert results["int8"]["gate"] == "pass" and results["int8-stock"]["gate"] == "fail"
    assert report.apply_gate(results, None, None)["failed"] == []


def test_the_gate_passes_a_variant_exactly_at_its_budget():
    """3 of 300 answers lost is -1.0 points, within MAX_TOP1_DROP=1; 199 of 200 agreeing
    is 99.5 %, not below MIN_AGREEMENT=99.5 (a difference of shares is not exact)."""
    labels = np.zeros(300, int)
    reference = np.tile([[2.0, 1.0]], (300, 1))
    candidate = reference.copy()
    candidate[:3] = [1.0, 2.0]
    measured = drift.compare(reference, candidate, labels)
    assert measured["top1_change_points"] == -1.0
    results = {"int8": {"eval": measured},
               "uint8": {"drift": {"top1_agreement": 199 / 200}}}
    assert report.apply_gate({"int8": results["int8"]}, 1.0, None)["failed"] == []
    assert report.apply_gate({"uint8": results["uint8"]}, None, 99.5)["failed"] == []


def test_flips_are_told_apart():
    reference = np.array([[2.0, 1.0, 0.0]] * 3)           # float says class 0
    result = drift.compare(reference, np.array([[0.9, 1.0, 0.0],      # other
                                                [0.5, 0.9, 0.0],      # other
                                                [1.2, 1.27, 0.0]]),   # at the 8-bit cap
                           saturation=1.27)
    assert result["flips"] == {"tie": 0, "saturated": 1, "other": 2}
    # two classes on one value: a tie (the stable sort picks the first of them)
    tied = drift.compare(np.array([[0.0, 2.0, 1.0]]), np.array([[1.0, 1.0, 0.0]]))
    assert tied["flips"] == {"tie": 1, "saturated": 0, "other": 0}


def test_gap_change_is_the_typical_change_of_the_float_top_two_gap():
    reference = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 0.0, 5.0]])
    candidate = reference + np.array([[-0.5, 0.2, 9.0], [0.0, 0.0, 0.1], [0.3, 0.0, 0.3]])
    # gaps 2.0 -> 1.3, 0.5 -> 0.4, 4.0 -> 4.0 (the third class's 9.0 is not in a top two)
    assert drift.gap_change(reference, candidate) == pytest.approx(0.1)


def test_intervals():
    low, high = drift.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)
    low, high = drift.wilson_interval(990, 1000)
    assert low < 0.99 < high
    assert drift.paired_change_interval(0, 0, 100) == [0.0, 0.0]
    low, high = drift.paired_change_interval(10, 2, 1000)
    assert low < 0.8 < high


def test_quantization_aware_training_starts_where_the_recipe_is(setting, built,
                                                                 tiny_float_dir):
    # Before a single training step, the fake-quantized model must answer about as closely
    # as the converter's int8 does (on tfmot's initial [-6, 6] the five best logits' error
    # is 16 times the converter's here), a ReLU's convolution rounded once, after the
    # ReLU, as the device runs it.
    from quantize import qat
    model, calibration, held_out, *_ = setting
    _, card = float_model.load(tiny_float_dir)
    fake, folded = qat._qat_model(model, card)
    qat.calibrate_ranges(fake, folded, calibration.pixels)
    with_output_range = [layer.name for layer in fake.layers
                         if any("post_activation" in w.name for w in layer.weights)]
    assert with_output_range == ["quant_InceptionV3/Logits/Conv2d_1c_1x1"]
    pixels = np.concatenate([calibration.pixels, held_out.pixels])
    reference = float_model.keras_logits(model, pixels)
    start = _answer_error(fake.predict(pixels.astype(np.float32), verbose=0), reference)
    converter = tflite_logits(calibrated.quantize(built.calibrated, np.int8), pixels)
    assert start < 1.5 * _answer_error(converter, reference)


def test_quantization_aware_training_reads_pixels_exactly(setting, tiny_float_dir):
    """The qat model takes raw pixels, the normalisation folded into its first convolution:
    the same function as the float model on normalised images, and an input quantizer of
    scale 1 (each pixel exact) where [-1, 1] would put every pixel half a step off."""
    from quantize import qat
    model, calibration, *_ = setting
    _, card = float_model.load(tiny_float_dir)
    fake, pixel_model = qat._qat_model(model, card)
    pixels = calibration.pixels[:16]
    np.testing.assert_allclose(pixel_model.predict(pixels.astype(np.float32), verbose=0),
                               float_model.keras_logits(model, pixels), atol=2e-4)
    qat.calibrate_ranges(fake, pixel_model, calibration.pixels[:32])
    converted = variants.convert(fake, variants.VARIANTS["qat"], variants.representative_dataset(
        calibration.pixels[:8], variants.VARIANTS["qat"]))
    m = tg.load(converted)
    graph = m.subgraphs[0]
    quant = graph.tensors[graph.inputs[0]].quantization
    assert (float(quant.scale[0]), int(quant.zeroPoint[0])) == (1.0, -128)
    # The ranges TFLite shares are equal: the converter adds no op rounding a branch again
    # onto its concatenation's scale (17 did on the reference model, then 3 behind max
    # pools, whose input now takes the concatenation's range as the converter's own does).
    writer = tg.producers(graph)
    requantized = [tg.op_name(m, writer[op.inputs[0]]) for op in graph.operators
                   if tg.code(m, op) == tg.OP.QUANTIZE
                   and graph.tensors[op.inputs[0]].type == tg.TYPE.INT8]
    assert requantized == [], requantized


def test_quantization_aware_training_chooses_its_ranges_on_the_file(setting, tiny_float_dir,
                                                                    monkeypatch):
    # The range method is the one whose converted CPU file answers closest to float, as
    # the recipe ranks its own candidates (on the reference model the simulation and the
    # file disagreed: 30 val flips for the simulation's choice, 23 for the file's). The
    # start left behind is that method's, converting to the file that scored best.
    from quantize import qat
    model, calibration, held_out, *_ = setting
    _, card = float_model.load(tiny_float_dir)
    fake, folded = qat._qat_model(model, card)
    pixels = np.concatenate([calibration.pixels, held_out.pixels])
    scored = []
    closeness = recipe.closeness
    monkeypatch.setattr(recipe, "closeness",
                        lambda *args: scored.append(closeness(*args)) or scored[-1])
    qat.calibrate_ranges(fake, folded, calibration.pixels[:64], pixels)
    assert len(scored) == len(recipe.AUTO_METHODS) and len(set(scored)) > 1, scored
    shipped = closeness(qat.cpu_file(fake, calibration.pixels[:64]), pixels,
                        folded.predict(pixels.astype(np.float32), verbose=0))
    assert shipped == min(scored), (shipped, scored)


def test_quantization_aware_training_starts_from_gptqs_rounding(setting, tiny_float_dir,
                                                               monkeypatch):
    # The kernels start on the int8 grid where GPTQ rounds them, as the recipe's int8
    # has them: on images they never saw, each convolution's output error from its
    # rounding, (W - W_q) H (W - W_q)^T, is a fraction of nearest rounding's on the same
    # scales (the error GPTQ targets; on this random-weight model the 8-bit activations
    # dominate the answers, so their error would not tell the two apart).
    from build.keras_env import keras
    from build.weights import short_name
    from quantize import qat, weight_rounding
    model, calibration, held_out, *_ = setting
    _, card = float_model.load(tiny_float_dir)

    def start_kernels() -> tuple[dict, keras.Model]:
        fake, folded = qat._qat_model(model, card)
        qat.calibrate_ranges(fake, folded, calibration.pixels)
        return {layer.layer.name: np.moveaxis(w.numpy(), -1, 0).astype(np.float64)
                for layer in fake.layers for w in layer.weights
                if short_name(w.name) == "kernel"}, folded
    gptq, folded = start_kernels()
    monkeypatch.setattr(weight_rounding, "gptq_codes",
                        lambda w, _, scales: weight_ranges.int8_codes(w, scales))
    nearest, _ = start_kernels()
    convs = [folded.get_layer(name) for name in gptq]
    probe = keras.Model(folded.inputs, [conv.input for conv in convs])
    errors = []
    for conv, unseen in zip(convs, qat._input_correlations(probe, convs, held_out.pixels)):
        weights = np.moveaxis(conv.get_weights()[0], -1, 0).astype(np.float64)
        errors.append([_output_error(weights, rounded[conv.name], unseen.total())
                       for rounded in (nearest, gptq)])
    near, ours = np.sum(errors, axis=0)
    assert len(errors) > 50
    assert ours < 0.8 * near, (ours, near)


def test_quantization_aware_training_holds_the_ranges(setting, tiny_float_dir):
    # tfmot in training mode moves activation ranges towards each batch's extremes and
    # resets each kernel's to its largest weight: the distillation must train the weights
    # only, so the ranges calibrate_ranges chose are the ones the converter reads.
    from build.keras_env import tf
    from build.weights import short_name
    from quantize import qat
    from runtime.preprocessing import normalize
    model, calibration, *_ = setting
    _, card = float_model.load(tiny_float_dir)
    fake, folded = qat._qat_model(model, card)
    qat.calibrate_ranges(fake, folded, calibration.pixels[:32])
    distillation = qat.Distillation(fake, float_model.logits_model(model))
    distillation.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    ranges = {w.name: w.numpy() for w in fake.weights if short_name(w.name).endswith(
        ("_min", "_max"))}
    kernels = {w.name: w.numpy() for w in fake.weights if short_name(w.name) == "kernel"}
    distillation.train_on_batch(normalize(calibration.pixels[:8]))
    assert all(np.array_equal(w.numpy(), ranges[w.name]) for w in fake.weights
               if w.name in ranges)
    assert any(not np.array_equal(w.numpy(), kernels[w.name]) for w in fake.weights
               if w.name in kernels)
