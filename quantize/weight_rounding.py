"""Weight rounding that knows the inputs: GPTQ (Frantar et al., 2022) on each int8
convolution.

Rounding every weight to its nearest int8 step minimises the error of the weights, not of
the convolution's output. The output error of rounding W to W_q is
(W - W_q) H (W - W_q)^T per output channel, H = E[x x^T] over the layer's input patches,
so errors that cancel on the inputs the layer actually sees cost nothing. GPTQ rounds one
input column at a time (largest diagonal of H first) and spreads each column's rounding
error over the columns not yet rounded, through the Cholesky factor of H^-1: a greedy
least-squares rounding. H comes from the float graph on the calibration images (one pass,
a sample of each image's patches), so layers are rounded independently and the result
does not depend on the order of layers.

InceptionV3's first convolution shows why: it reads raw pixels (0-255, folded
normalisation), whose large common level turns small weight errors into large output
errors; GPTQ cuts its output error 1.5-10x per channel on the reference model. Over the
whole network (reference model, 3,925 val images) it takes a fifth off the typical change
of the gap between the float model's two best logits, the error that flips near-ties.
"""
from __future__ import annotations

import numpy as np

from quantize.activation_stats import inspecting_interpreter
from runtime import tflite_graph as tg

DAMPING = 0.01          # of H's mean diagonal, added to it: GPTQ's default
BLOCK = 128             # columns updated at once (lazy batch updates; same result)
PATCHES_PER_IMAGE = 1024  # sampled per layer and image: H of a 147x147 layer in seconds


def conv_patches(x: np.ndarray, options, kernel: tuple[int, int], count: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Up to `count` of the rows a CONV_2D multiplies, at output positions drawn at random
    from one image x [1, H, W, C]: [rows, KH * KW * C] in the weights' (kh, kw, c) order,
    with TFLite's SAME or VALID padding."""
    kh, kw = kernel
    sh, sw = options.strideH, options.strideW
    dh, dw = options.dilationHFactor, options.dilationWFactor
    _, height, width, _ = x.shape
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if options.padding == tg.PADDING.SAME:
        oh, ow = -(-height // sh), -(-width // sw)
        ph, pw = max((oh - 1) * sh + eh - height, 0), max((ow - 1) * sw + ew - width, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (height - eh) // sh + 1, (width - ew) // sw + 1
    positions = np.arange(oh * ow)
    if len(positions) > count:
        positions = rng.choice(positions, count, replace=False)
    rows = (positions // ow)[:, None] * sh + np.repeat(np.arange(kh) * dh, kw)[None, :]
    cols = (positions % ow)[:, None] * sw + np.tile(np.arange(kw) * dw, kh)[None, :]
    return x[0][rows, cols].reshape(len(positions), -1)


def input_correlations(calibrated: bytes, samples: np.ndarray, num_threads: int = 1,
                       seed: int = 0) -> dict[str, "Correlation"]:
    """H = sum of x x^T, and the mean row, over sampled input patches of every CONV_2D of
    the float graph, by the name of the op's output (which the quantized graph keeps)."""
    m = tg.load(calibrated)
    graph = m.subgraphs[0]
    convs = {tg.tensor_name(graph.tensors[op.outputs[0]]): op for op in graph.operators
             if tg.code(m, op) == tg.OP.CONV_2D}
    interpreter = inspecting_interpreter(calibrated, num_threads)
    input_index = interpreter.get_input_details()[0]["index"]
    rng = np.random.default_rng(seed)
    sums = {name: Correlation() for name in convs}
    for sample in samples:
        interpreter.set_tensor(input_index, sample[np.newaxis].astype(np.float32))
        interpreter.invoke()
        for name, op in convs.items():
            kernel = tuple(graph.tensors[op.inputs[1]].shape[1:3])
            sums[name].add(conv_patches(interpreter.get_tensor(op.inputs[0]),
                                        op.builtinOptions, kernel, PATCHES_PER_IMAGE, rng))
    for correlation in sums.values():
        correlation.total()
    return sums


class Correlation:
    """sum x x^T over rows added a few at a time, multiplied in batches of about
    FLUSH_VALUES values (a late layer gives a few rows per image: one product each would
    spend its time on the K x K sum, not the product; a cap in values, not rows, keeps
    what waits for all layers of InceptionV3 at 299x299 under a gigabyte)."""
    FLUSH_VALUES = 2 ** 21

    def __init__(self) -> None:
        self.pending: list[np.ndarray] = []
        self.values = 0
        self.sum: np.ndarray | float = 0.0
        self.row_sum: np.ndarray | float = 0.0
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        self.pending.append(rows.astype(np.float32))
        self.values += rows.size
        if self.values >= self.FLUSH_VALUES:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            rows = np.concatenate(self.pending)
            self.sum = self.sum + (rows.T @ rows).astype(np.float64)
            self.row_sum = self.row_sum + rows.sum(axis=0, dtype=np.float64)
            self.rows += len(rows)
        self.pending, self.values = [], 0

    def total(self) -> np.ndarray:
        self._flush()
        return self.sum

    def mean(self) -> np.ndarray:
        """The mean row: each tap's own mean input (a tap that reads padding sees zeros)."""
        self._flush()
        return self.row_sum / max(self.rows, 1)


def gptq_codes(weights: np.ndarray, correlation: np.ndarray, scales: np.ndarray,
               damping: float = DAMPING) -> np.ndarray:
    """`weights` [O, ...] as symmetric int8 codes on per-output-channel `scales`, each
    input column rounded in turn and its error carried to the columns not yet rounded."""
    w = weights.reshape(len(weights), -1).astype(np.float64).copy()
    h = correlation.astype(np.float64).copy()
    # An input that is always zero (a ReLU channel that never fires, a tap that only ever
    # reads padding) gets a unit diagonal: rounded to nearest, its error carried nowhere.
    # Not zeroed: bias correction takes each tap to see its channel's mean.
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[order][:, order]
    h[np.diag_indices_from(h)] += damping * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    s = scales.astype(np.float64)
    codes = np.zeros_like(w)
    for start in range(0, w.shape[1], BLOCK):
        end = min(start + BLOCK, w.shape[1])
        errors = np.zeros((len(w), end - start))
        for i in range(start, end):
            codes[:, i] = np.clip(np.rint(w[:, i] / s), -127, 127)
            error = (w[:, i] - codes[:, i] * s) / u[i, i]
            w[:, i + 1:end] -= np.outer(error, u[i, i + 1:end])
            errors[:, i - start] = error
        w[:, end:] -= errors @ u[start:end, end:]
    out = np.empty_like(codes)
    out[:, order] = codes
    return out.reshape(weights.shape).astype(np.int8)


def rounded(calibrated: bytes, scales: dict[str, np.ndarray],
            correlations: dict[str, Correlation]) -> dict[str, np.ndarray]:
    """GPTQ's int8 codes of every convolution that has a scale and a correlation, by the
    name of the op's output: computed once, for every graph quantized from `calibrated`."""
    m = tg.load(calibrated)
    graph = m.subgraphs[0]
    found = {}
    for op in graph.operators:
        name = tg.tensor_name(graph.tensors[op.outputs[0]])
        if name in scales and name in correlations:
            weights = tg.buffer_array(m, graph.tensors[op.inputs[1]])
            found[name] = gptq_codes(weights, correlations[name].total(), scales[name])
    return found
