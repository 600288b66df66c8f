"""The device runtime: no TensorFlow, every I/O type, the interpreter's own answer, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import flatbuffers
import numpy as np
import pytest

from conftest import CALIBRATION_DIR, ROOT
from quantize import pipeline
from runtime import preprocessing
from runtime.classify import Classifier, softmax
from runtime.interpreter import RuntimeLoadError, interpreter_module

PHOTOS = preprocessing.list_images(CALIBRATION_DIR)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """A small non-Inception classifier converted for every input/output type."""
    from build.keras_env import keras, tf
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((40, 48, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(12)(x)
    model = keras.Model(inputs, logits)
    probabilities = keras.Model(inputs, keras.layers.Softmax()(logits))

    def samples():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 40, 48, 3)).astype(np.float32)]

    out = tmp_path_factory.mktemp("small")
    made = {}
    for name, io_type, ops, net in [
        ("float32", None, None, model), ("softmax", None, None, probabilities),
        ("int8", tf.int8, tf.lite.OpsSet.TFLITE_BUILTINS_INT8, model),
        ("uint8", tf.uint8, tf.lite.OpsSet.TFLITE_BUILTINS_INT8, model),
        ("int16", tf.int16,
         tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, model)]:
        converter = tf.lite.TFLiteConverter.from_keras_model(net)
        if io_type is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [ops]
            converter.inference_input_type = converter.inference_output_type = io_type
        made[name] = out / f"small_{name}.tflite"
        made[name].write_bytes(converter.convert())
    dense = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)])
    made["not_an_image"] = out / "dense.tflite"
    made["not_an_image"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(dense).convert())
    return made


def by_hand(model_path: Path, image: str, k: int = 5):
    """What the TFLite interpreter gives when called directly: the reference."""
    interpreter = interpreter_module().Interpreter(model_path=str(model_path),
                                                   num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    height, width = inp["shape"][1:3]
    pixels = preprocessing.resize_pixels(image, (height, width))
    scale, zero = inp["quantization"]
    normalized = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1)
    if inp["dtype"] == np.float32:
        x = normalized
    elif scale == 1.0:  # the input quantization spans pixel values: raw pixels, shifted
        x = pixels.astype(np.int32) + zero
    else:
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(normalized / np.float32(scale) + zero), info.min, info.max)
    interpreter.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])[0].astype(np.float64)
    scale, zero = out["quantization"]
    if scale:
        y = (y - zero) * scale
    if not (np.all(y >= 0) and abs(y.sum() - 1) < 0.05):
        y = softmax(y)
    order = np.argsort(-y, kind="stable")[:k]
    return order.tolist(), y[order]


@pytest.mark.parametrize("variant", ["float32", "float16", "dynamic", "int8", "uint8",
                                     "int16x8"])
def test_our_models_top_k_equals_interpreter_by_hand(tiny_run, variant):
    out, _ = tiny_run
    path = out / pipeline.model_file(variant)
    classifier = Classifier(path)
    assert classifier.verified  # the quantize manifest sits beside the model
    for photo in PHOTOS[:4]:
        top = classifier.classify(photo, k=5)
        ids, scores = by_hand(path, photo)
        assert [c.id for c in top] == ids
        np.testing.assert_allclose([c.score for c in top], scores, rtol=1e-5, atol=1e-7)
        assert top[0].label  # ImageNet labels ship with the runtime


@pytest.mark.parametrize("name", ["float32", "softmax", "int8", "uint8", "int16"])
def test_any_classifier_of_this_shape_every_io_type(small_models, name):
    classifier = Classifier(small_models[name])
    assert classifier.size == (40, 48) and classifier.num_classes == 12
    assert classifier.labels is None
    for photo in PHOTOS[:3]:
        top = classifier.classify(photo, k=3)
        ids, scores = by_hand(small_models[name], photo, k=3)
        assert [c.id for c in top] == ids
        np.testing.assert_allclose([c.score for c in top], scores, rtol=1e-5, atol=1e-7)
    probabilities = Classifier(small_models[name]).classify(PHOTOS[0], k=12)
    assert abs(sum(c.score for c in probabilities) - 1) < 0.02


def test_every_kernel_choice_runs_the_same_model(small_models):
    """The interpreter's kernel options (the bench prices them per CPU class) give the
    same answers; a name it does not know is refused."""
    from runtime.interpreter import KERNELS, xnnpack_partitions
    outputs = {}
    for kernels in KERNELS:
        classifier = Classifier(small_models["int8"], num_threads=1, kernels=kernels)
        # Taken by XNNPACK in one piece, or not at all where it is left out.
        assert xnnpack_partitions(classifier.interpreter) == \
            (0 if kernels in ("builtin", "reference") else 1), kernels
        outputs[kernels] = np.stack([classifier.outputs(photo) for photo in PHOTOS[:3]])
    for kernels, found in outputs.items():
        np.testing.assert_allclose(found, outputs["reference"], atol=0.25, err_msg=kernels)
    with pytest.raises(ValueError, match="Unknown kernels 'fast'"):
        Classifier(small_models["int8"], kernels="fast")


def test_importing_and_running_the_runtime_never_imports_tensorflow(tiny_run):
    out, _ = tiny_run
    code = (
        "import sys, runtime.__main__, runtime.bench, runtime.classify\n"
        "from runtime.classify import Classifier\n"
        f"print(Classifier({str(out / pipeline.model_file('int8'))!r})"
        f".classify({PHOTOS[0]!r})[0].label)\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tf_keras', 'keras')]\n"
        "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def _edgetpu_compiled(model_path: Path, target: Path) -> Path:
    """A model whose first op is the custom op edgetpu_compiler emits."""
    from tensorflow.lite.python import schema_py_generated as schema
    m = schema.ModelT.InitFromPackedBuf(bytearray(model_path.read_bytes()), 0)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "edgetpu-custom-op"
    code.version = 1
    m.operatorCodes.append(code)
    m.subgraphs[0].operators[0].opcodeIndex = len(m.operatorCodes) - 1
    m.subgraphs[0].operators[0].builtinOptions = None
    m.subgraphs[0].operators[0].builtinOptionsType = 0
    builder = flatbuffers.Builder(0)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(bytes(builder.Output()))
    return target


def test_edgetpu_without_library_or_delegate_is_one_clear_sentence(small_models, tmp_path):
    compiled = _edgetpu_compiled(small_models["uint8"], tmp_path / "m_edgetpu.tflite")
    with pytest.raises(RuntimeLoadError, match="Edge TPU delegate.*libedgetpu.*not installed"):
        Classifier(compiled)  # a compiled model asks for the delegate by itself
    with pytest.raises(RuntimeLoadError, match="compiled for the Edge TPU"):
        Classifier(compiled, edgetpu=False)
    with pytest.raises(RuntimeLoadError, match="libedgetpu"):
        Classifier(small_models["uint8"], edgetpu=True, device="usb:0")


@pytest.mark.parametrize("make, message", [
    (lambda p, m: None, "No model file"),
    (lambda p, m: p.write_text("hello, not a model"), "not a TFLite model"),
    (lambda p, m: p.write_bytes(m.read_bytes()[:4000]), "Cannot load"),
    (lambda p, m: p.write_bytes(b""), "not a TFLite model"),
])
def test_bad_model_files(make, message, small_models, tmp_path):
    path = tmp_path / "model.tflite"
    make(path, small_models["int8"])
    with pytest.raises(RuntimeLoadError, match=message):
        Classifier(path)


def test_model_without_image_input(small_models):
    with pytest.raises(RuntimeLoadError, match="not an image classifier"):
        Classifier(small_models["not_an_image"])


def test_manifest_mismatch_is_refused(tiny_run, tmp_path):
    out, _ = tiny_run
    manifest = json.loads((out / "manifest.json").read_text())
    damaged = tmp_path / pipeline.model_file("int8")
    data = bytearray((out / damaged.name).read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeLoadError, match="does not match its SHA-256"):
        Classifier(damaged)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_cli_classify_batch_with_one_bad_image(tiny_run, tmp_path):
    out, _ = tiny_run
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    result = _cli("classify", "--model", out / pipeline.model_file("uint8"), "--json",
                  "--top-k", "3", PHOTOS[0], bad, PHOTOS[1])
    assert result.returncode == 2
    answers = json.loads(result.stdout)
    assert [("error" in a) for a in answers] == [False, True, False]
    assert len(answers[0]["top_k"]) == 3 and answers[0]["top_k"][0]["label"]
    assert "broken.jpg" in result.stderr


def test_cli_missing_model_is_exit_2_and_one_line(tmp_path):
    result = _cli("classify", "--model", tmp_path / "none.tflite", PHOTOS[0])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: No model file at "
                                                  f"{tmp_path / 'none.tflite'}."]


def test_cli_bench_prints_percentiles(tiny_run):
    out, _ = tiny_run
    result = _cli("bench", "--model", out / pipeline.model_file("int8"), "--runs", "5",
                  "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"]
    assert figures["init_ms"] > 0 and figures["peak_rss_mb"] > 0


THREAD_COUNT = """
import os, sys
sys.path.insert(0, {root!r})
from runtime.classify import Classifier
import numpy as np
clf = Classifier({model!r}, num_threads={threads})
clf.run(clf.input_tensor(np.zeros((*clf.size, 3), np.uint8)))
print(len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_num_threads_takes_effect(tiny_run):
    """The interpreter's thread pool has the threads asked for: each extra thread is one
    more thread of the process after an invoke (counted, not timed: a busy machine
    cannot change it)."""
    out, _ = tiny_run
    model = str(out / "inception_v3_int8.tflite")
    counts = {}
    for threads in (1, 2, 4):
        result = subprocess.run([sys.executable, "-c", THREAD_COUNT.format(
            root=str(ROOT), model=model, threads=threads)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-1000:]
        counts[threads] = int(result.stdout.split()[-1])
    assert counts[2] - counts[1] == 1 and counts[4] - counts[1] == 3, counts


def test_bundle_runs_on_its_own_and_checks_its_model(tiny_run, tmp_path):
    import tarfile
    from quantize.bundle import make_bundle
    out, _ = tiny_run
    archive = make_bundle(out / pipeline.model_file("uint8"), tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    bundle = tmp_path / "inception_v3_uint8"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"inception_v3_uint8.tflite", "requirements.txt", "runtime/classify.py",
            "runtime/labels/imagenet_1000.txt"} <= set(manifest["files"])
    assert "ai-edge-litert==" in (bundle / "requirements.txt").read_text()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "runtime", "classify", "--model", "inception_v3_uint8.tflite",
         "--json", PHOTOS[0]], cwd=bundle, capture_output=True, text=True, env=env)
    result = run()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["top_k"][0]["label"]
    model = bundle / "inception_v3_uint8.tflite"
    data = bytearray(model.read_bytes())
    data[-64] ^= 0x01
    model.write_bytes(bytes(data))
    result = run()
    assert result.returncode == 2 and "does not match its SHA-256" in result.stderr
    assert make_bundle(out / pipeline.model_file("uint8"), tmp_path / "c.tar.gz") \
        .read_bytes() == archive.read_bytes()  # reproducible
