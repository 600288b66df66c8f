"""Edge TPU readiness: which ops the Edge TPU compiler can map, and the compiler itself.

The rules are Coral's documented requirements ("TensorFlow models on the Edge TPU"):
8-bit quantized tensors, sizes fixed at compile time, at most 3 dimensions larger than 1
(the innermost), and only the listed operations, each with its own limits; they are
checked against what the real `edgetpu_compiler` did to six models
(tests/data/coral-compiled/, tests/test_edgetpu_ground_truth.py), which fixed three of
them: TILE maps; a bilinear or nearest resize maps only when it does not enlarge a side
more than twice (1x1 -> 33x33 and 33x33 -> 513x513 stayed on the CPU, 33x33 -> 33x33
mapped); an LSTM's variable state tensors (int16) do not count as activations.

The compiler makes one Edge TPU subgraph. It follows the data, not the op order: ops on
the CPU before it (an input CAST and QUANTIZE) are fine, but an op that reads a tensor
computed on the CPU after the Edge TPU part began runs on the CPU too, and so does
everything downstream of it. One unsupported op early in the graph costs most of the
speed.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime import tflite_graph as tg

# Coral's supported operations, by TFLite builtin name.
SUPPORTED_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D",
    "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN",
    "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT",
    "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TILE",
    "TRANSPOSE", "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM",
}
RESIZE_OPS = {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}
MAX_RESIZE_GROWTH = 2  # per side: larger upscales stayed on the CPU (ground truth)
NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
SOFTMAX_MAX_ELEMENTS = 16000

_ACTIVATIONS = {v: k for k, v in vars(tg.schema.ActivationFunctionType).items()
                if not k.startswith("_")}
EIGHT_BIT = {"int8", "uint8"}


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: list[int]
    constant: bool
    dynamic: bool
    variable: bool = False    # state an op keeps between calls (an LSTM's cell state)


@dataclass
class Op:
    index: int
    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    producers: list[int] = field(default_factory=list)  # ops whose outputs it reads
    fused_activation: str | None = None
    dilation: tuple[int, int] | None = None
    problems: list[str] = field(default_factory=list)


def read_ops(model: bytes) -> list[Op]:
    """The main subgraph's ops in execution order, with their tensors and options."""
    m = tg.load(model)
    graph = m.subgraphs[0]

    def tensor(i: int) -> Tensor:
        t = graph.tensors[i]
        buffer = m.buffers[t.buffer] if t.buffer < len(m.buffers) else None
        constant = bool(buffer is not None and buffer.data is not None and len(buffer.data)) \
            or bool(buffer is not None and getattr(buffer, "size", 0))
        signature = list(t.shapeSignature) if t.shapeSignature is not None else []
        return Tensor(tg.tensor_name(t), tg.TYPE_NAMES.get(t.type, str(t.type)),
                      [int(d) for d in (t.shape if t.shape is not None else [])], constant,
                      any(d < 0 for d in signature), bool(t.isVariable))

    written_by = {out: index for index, op in enumerate(graph.operators) for out in op.outputs}

    ops = []
    for index, op in enumerate(graph.operators):
        name = tg.op_name(m, op)
        if tg.code(m, op) == tg.OP.CUSTOM:
            name = f"CUSTOM:{name}"
        options = op.builtinOptions
        fused = getattr(options, "fusedActivationFunction", None)
        fused_name = _ACTIVATIONS.get(fused, str(fused)) if fused else None
        dilation = None
        if hasattr(options, "dilationHFactor"):
            dilation = (options.dilationHFactor, options.dilationWFactor)
        producers = sorted({written_by[i] for i in op.inputs if i in written_by})
        ops.append(Op(index, name, [tensor(i) for i in op.inputs if i >= 0],
                      [tensor(i) for i in op.outputs], producers, fused_name, dilation))
    return ops


def check_op(op: Op) -> list[str]:
    """Why the Edge TPU compiler would not map `op` (empty when it would)."""
    problems = []
    if op.name not in SUPPORTED_OPS:
        problems.append(f"{op.name} is not an Edge TPU operation")
    activations = (t for t in op.inputs + op.outputs if not (t.constant or t.variable))
    for t in activations:  # weights may be 4-D
        if t.dtype not in EIGHT_BIT:
            problems.append(f"tensor {t.name} is {t.dtype}, not 8-bit")
        if t.dynamic:
            problems.append(f"tensor {t.name} has a dynamic size")
        if len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]):
            problems.append(f"tensor {t.name} {t.shape} has more than 3 dimensions above 1 "
                            "(batch must be 1)")
    if op.name in NO_FUSED_ACTIVATION and op.fused_activation not in (None, "NONE"):
        problems.append(f"{op.name} with a fused {op.fused_activation}")
    if op.name == "CONV_2D" and op.dilation and op.dilation[0] != op.dilation[1]:
        problems.append(f"CONV_2D dilation {op.dilation} differs in x and y")
    if op.name == "SOFTMAX":
        shape = op.inputs[0].shape
        if sum(d > 1 for d in shape) > 1 or max(shape, default=0) > SOFTMAX_MAX_ELEMENTS:
            problems.append(f"SOFTMAX on {shape}: only 1-D up to {SOFTMAX_MAX_ELEMENTS}")
    if op.name in RESIZE_OPS and len(op.inputs[0].shape) == 4:
        growth = max(o / max(i, 1) for i, o in zip(op.inputs[0].shape[1:3],
                                                   op.outputs[0].shape[1:3]))
        if growth > MAX_RESIZE_GROWTH:
            problems.append(f"{op.name} enlarges a side {growth:.1f}x (the compiler keeps "
                            f"upscales over {MAX_RESIZE_GROWTH}x on the CPU)")
    if op.name == "CONCATENATION":
        constants = [t for t in op.inputs if t.constant]
        if constants and len(op.inputs) > 2:
            problems.append("CONCATENATION of a constant with more than one other input")
    return problems


def place(ops: list[Op]) -> list[bool]:
    """Which ops the compiler maps (True) in its one Edge TPU subgraph.

    An op maps when it passes `check_op` and reads nothing that the CPU computed after the
    Edge TPU part began; an op on the CPU is "after" when anything it reads came from the
    Edge TPU or from such an op. Ops are in execution order, so producers come first.
    """
    mapped, after = [], []
    for op in ops:
        late = [p for p in op.producers if after[p]]
        if late and not op.problems:
            op.problems.append(f"reads the output of op #{late[0]}, which runs on the CPU "
                               "after the Edge TPU part")
        mapped.append(not op.problems)
        after.append(not mapped[-1] and any(mapped[p] or after[p] for p in op.producers))
    return mapped


def readiness(model: bytes) -> dict:
    """Per-op mapping verdicts and whether the whole graph is one Edge TPU subgraph."""
    ops = read_ops(model)
    for op in ops:
        op.problems = check_op(op)
    mapped = place(ops)
    first_bad = next((op for op, ok in zip(ops, mapped) if not ok), None)
    counts: dict[str, dict[str, int]] = {}
    for op, ok in zip(ops, mapped):
        entry = counts.setdefault(op.name, {"count": 0, "mappable": 0})
        entry["count"] += 1
        entry["mappable"] += ok
    return {
        "single_subgraph": first_bad is None,
        "ops": len(ops),
        "ops_on_edgetpu": sum(mapped),
        "on_cpu": [op.index for op, ok in zip(ops, mapped) if not ok],
        "first_unmapped": None if first_bad is None else
        {"index": first_bad.index, "op": first_bad.name, "why": first_bad.problems},
        "op_counts": counts,
        "problems": [{"index": op.index, "op": op.name, "why": op.problems}
                     for op, ok in zip(ops, mapped) if not ok],
    }


def compile_model(model_path: Path, out_dir: Path) -> dict:
    """Run edgetpu_compiler when installed; keep its log and the `_edgetpu.tflite`."""
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        return {"compiled": False, "note": "edgetpu_compiler is not on the PATH (Coral's "
                "Debian package edgetpu-compiler, x86-64 Linux only); readiness comes from "
                "the op rules alone."}
    result = subprocess.run([compiler, "-s", "-o", str(out_dir), str(model_path)],
                            capture_output=True, text=True)
    log = out_dir / f"{model_path.stem}_edgetpu_compiler.txt"
    log.write_text(result.stdout + result.stderr)
    compiled = out_dir / f"{model_path.stem}_edgetpu.tflite"
    return {"compiled": result.returncode == 0 and compiled.is_file(),
            "returncode": result.returncode, "log": log.name,
            "model": compiled.name if compiled.is_file() else None}


def compile_bytes(model: bytes, file_name: str, out_dir: Path) -> dict:
    """compile_model on a graph held in memory, named `file_name` for the compiler."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / file_name
        source.write_bytes(model)
        return compile_model(source, out_dir)


def ops_as_dicts(model: bytes) -> list[dict]:
    return [asdict(op) for op in read_ops(model)]
