"""Hostile input, 300+ cases through every command, made at test time from small files.

Each case says what must happen: exit 0 for input that is odd but usable, 2 for input
that is not (one `error:` line naming it), never a traceback, never a hang (a FIFO is
never opened), no file of the user's changed, and nothing half-written left behind.
Commands run in this process through their real entry point (`runtime.cli.run(main)`),
on one set of tiny models, so the corpus takes well under two minutes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CALIBRATION_DIR
from runtime import cli

IS_ROOT = os.geteuid() == 0
PHOTO = CALIBRATION_DIR / "skimage_astronaut.jpg"


@dataclass
class Case:
    id: str
    command: str          # runtime, bundle, evaluate, quantize, build, train, bench
    argv: list[str]
    exit: int             # 0 usable, 2 bad input
    names: list[str] = field(default_factory=list)  # the error must name one of these


def entry(command: str):
    if command == "runtime":
        from runtime.__main__ import main
    elif command == "bundle":
        from quantize.bundle import main
    elif command == "evaluate":
        from quantize.evaluate import main
    elif command == "quantize":
        from quantize.__main__ import main
    elif command == "build":
        from build.__main__ import main
    elif command == "train":
        from build.train import main
    else:
        from benchmarks.__main__ import main
    return main


# --- the files a hostile user gives -------------------------------------------------

def _convert(tf, fn, specs) -> bytes:
    concrete = tf.function(fn).get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def make_models(folder: Path) -> dict[str, Path]:
    """Tiny graphs: one good classifier and every contract a classifier can break."""
    from build.keras_env import tf
    w = tf.constant(np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32))

    def logits(x):
        return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), w)

    spec = tf.TensorSpec
    graphs = {
        "good": (logits, [spec([1, 24, 24, 3])]),
        "dynamic_batch": (logits, [spec([None, 24, 24, 3])]),
        "dynamic_spatial": (logits, [spec([1, None, None, 3])]),
        "batch4": (logits, [spec([4, 24, 24, 3])]),
        "grey_input": (lambda x: tf.matmul(tf.reduce_mean(x, axis=[1, 2]), w[:1]),
                       [spec([1, 24, 24, 1])]),
        "vector_input": (lambda x: tf.matmul(x, w), [spec([1, 3])]),
        "two_inputs": (lambda x, y: logits(x) + logits(y), [spec([1, 24, 24, 3])] * 2),
        "scalar_output": (lambda x: tf.reduce_sum(x), [spec([1, 24, 24, 3])]),
        "spatial_output": (lambda x: tf.tile(x[:, :4, :4, :1], [1, 1, 1, 10]),
                           [spec([1, 24, 24, 3])]),
        "one_class": (lambda x: tf.reduce_mean(x, axis=[1, 2, 3])[:, None],
                      [spec([1, 24, 24, 3])]),
        "two_outputs": (lambda x: (logits(x), logits(x) * 2), [spec([1, 24, 24, 3])]),
        "int_input": (lambda x: logits(tf.cast(x, tf.float32)),
                      [spec([1, 24, 24, 3], tf.int32)]),
    }
    paths = {}
    for name, (fn, specs) in graphs.items():
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(_convert(tf, fn, specs))
    good = paths["good"].read_bytes()
    damaged = {
        "empty": b"", "one_byte": b"T", "header_only": good[:8], "text": b"hello world\n" * 9,
        "random": np.random.default_rng(1).bytes(4096),
        "random_with_magic": good[:8] + np.random.default_rng(2).bytes(4096),
        "truncated_10": good[:len(good) // 10], "truncated_50": good[:len(good) // 2],
        "truncated_90": good[:len(good) * 9 // 10], "truncated_last": good[:-1],
        "zip": _zip_bytes(), "png_named_tflite": PHOTO.read_bytes()[:4096],
    }
    for offset in (4, 16, 32, 64):  # the root table and vtable offsets
        flipped = bytearray(good)
        flipped[offset] ^= 0xFF
        damaged[f"flipped_{offset}"] = bytes(flipped)
    for name, data in damaged.items():
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(data)
    paths["missing"] = folder / "missing.tflite"
    paths["directory"] = folder / "directory.tflite"
    paths["directory"].mkdir()
    paths["fifo"] = folder / "fifo.tflite"
    os.mkfifo(paths["fifo"])
    paths["dangling_link"] = folder / "dangling.tflite"
    paths["dangling_link"].symlink_to(folder / "nowhere.tflite")
    paths["dev_zero"] = Path("/dev/zero")
    return paths


def _zip_bytes() -> bytes:
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("a.txt", "x")
    return buffer.getvalue()


# Models the runtime must run (exit 0) and those it must refuse (exit 2).
USABLE_MODELS = {"good", "dynamic_batch"}


def make_images(folder: Path) -> dict[str, Path]:
    """Every format Pillow reads, odd modes and sizes, and files that are not images."""
    folder.mkdir()
    photo = Image.open(PHOTO).convert("RGB").resize((64, 48))
    good = {}
    for fmt, suffix in [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"),
                        ("TIFF", "tif"), ("WEBP", "webp"), ("PPM", "ppm"), ("ICO", "ico"),
                        ("TGA", "tga"), ("PCX", "pcx")]:
        good[f"format_{suffix}"] = (photo, fmt, suffix)
    modes = {"grey": photo.convert("L"), "bilevel": photo.convert("1"),
             "rgba": photo.convert("RGBA"), "palette": photo.convert("P"),
             "la": photo.convert("LA"), "int32": photo.convert("I"),
             "float": photo.convert("F"), "cmyk": photo.convert("CMYK"),
             "tiny_1x1": photo.resize((1, 1)), "tiny_2x3": photo.resize((2, 3)),
             "tall_4x400": photo.resize((4, 400)), "wide_900x5": photo.resize((900, 5))}
    suffix_of = {"cmyk": ("JPEG", "jpg"), "float": ("TIFF", "tif"), "int32": ("TIFF", "tif")}
    for name, image in modes.items():
        fmt, suffix = suffix_of.get(name, ("PNG", "png"))
        good[name] = (image, fmt, suffix)
    paths = {}
    for name, (image, fmt, suffix) in good.items():
        paths[name] = folder / f"{name}.{suffix}"
        image.save(paths[name], fmt)
    grey16 = Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16))
    paths["grey_16bit"] = folder / "grey_16bit.png"
    grey16.save(paths["grey_16bit"])
    paths["palette_transparent"] = folder / "palette_transparent.png"
    photo.convert("P").save(paths["palette_transparent"], transparency=0)
    paths["animated"] = folder / "animated.gif"
    photo.save(paths["animated"], save_all=True, append_images=[photo.rotate(90)] * 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    paths["exif_rotated"] = folder / "exif_rotated.jpg"
    photo.save(paths["exif_rotated"], exif=exif)
    paths["png_named_jpg"] = folder / "png_named.jpg"
    photo.save(paths["png_named_jpg"], "PNG")
    paths["unicode_name"] = folder / "фото 写真 ✓.jpg"
    photo.save(paths["unicode_name"], "JPEG")
    paths["spaces_name"] = folder / "a photo (1).jpg"
    photo.save(paths["spaces_name"], "JPEG")
    paths["non_utf8_name"] = Path(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))
    photo.save(paths["non_utf8_name"], "JPEG")
    paths["bomb_100mp"] = folder / "bomb_100mp.png"  # over Pillow's pixel limit: skipped
    Image.new("L", (10_000, 10_001)).save(paths["bomb_100mp"], optimize=True)
    jpeg = paths["format_jpg"].read_bytes()
    bad = {"truncated_jpg": jpeg[: len(jpeg) // 3], "header_only.jpg": jpeg[:20],
           "empty.jpg": b"", "text.jpg": b"not an image\n", "random.png": os.urandom(2048),
           "html.jpg": b"<html><body>404</body></html>", "zero_bytes.png": b"\0" * 4096}
    for name, data in bad.items():
        path = folder / (name if "." in name else f"{name}.jpg")
        path.write_bytes(data)
        paths[name.split(".")[0]] = path
    paths["fifo"] = folder / "fifo.jpg"
    os.mkfifo(paths["fifo"])
    paths["folder_named_jpg"] = folder / "folder.jpg"
    paths["folder_named_jpg"].mkdir()
    paths["dangling_link"] = folder / "dangling.jpg"
    paths["dangling_link"].symlink_to(folder / "nowhere.jpg")
    paths["missing"] = folder / "missing.jpg"
    return paths


UNUSABLE_IMAGES = {"truncated_jpg", "header_only", "empty", "text", "random", "html",
                   "zero_bytes", "fifo", "folder_named_jpg", "dangling_link", "missing",
                   "bomb_100mp"}


def make_labels(folder: Path, classes: int) -> dict[str, tuple[Path, int]]:
    """Labels files and the exit status each must give with a `classes`-class model."""
    folder.mkdir()
    names = [f"class {i} é" for i in range(classes)]
    cases = {
        "good": ("\n".join(names) + "\n").encode(), "bom": ("\ufeff" + "\n".join(names)).encode(),
        "crlf": "\r\n".join(names).encode(), "latin1": "\n".join(names).encode("latin-1"),
        "utf16": "\n".join(names).encode("utf-16"), "binary": os.urandom(512),
        "short": "\n".join(names[:3]).encode(), "long": "\n".join(names * 2).encode(),
        "empty": b"", "nul": ("\n".join(names) + "\0").encode(),
    }
    usable = {"good", "bom", "crlf"}
    paths = {}
    for name, data in cases.items():
        paths[name] = (folder / f"{name}.txt", 0 if name in usable else 2)
        paths[name][0].write_bytes(data)
    fifo = folder / "fifo.txt"
    os.mkfifo(fifo)
    paths.update({"fifo": (fifo, 2), "missing": (folder / "missing.txt", 2),
                  "directory": (folder, 2)})
    return paths


MANIFESTS = {
    "not_json": (b"{nope", 2), "list": (b"[1, 2]", 2), "string": (b'"files"', 2),
    "files_string": (b'{"files": "model"}', 2), "variants_list": (b'{"variants": [1]}', 2),
    "no_sha": (b'{"files": {"good.tflite": 3}}', 2),
    "entry_without_sha": (b'{"variants": {"int8": {"file": "good.tflite"}}}', 2),
    "wrong_sha": (b'{"files": {"good.tflite": "' + b"0" * 64 + b'"}}', 2),
    "latin1": ('{"files": {"é": 1}}'.encode("latin-1"), 2),
    "empty": (b"", 2), "other_file_only": (b'{"files": {"x.tflite": "ab"}}', 0),
    "empty_object": (b"{}", 0),
}


# --- the corpus --------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_float_dir):
    root = tmp_path_factory.mktemp("hostile")
    (root / "models").mkdir()
    models = make_models(root / "models")
    images = make_images(root / "images")
    labels = make_labels(root / "labels", classes=10)
    labelled = root / "labelled"
    for klass in ("a", "b"):
        (labelled / klass).mkdir(parents=True)
        shutil.copy(PHOTO, labelled / klass / "photo.jpg")
    (labelled / "classes.tsv").write_text("wnid\timagenet_index\na\t0\nb\t1\n")
    cases = model_cases(models, labelled) + image_cases(models["good"], images) + \
        label_cases(models["good"], labels) + manifest_cases(root, models["good"]) + \
        folder_cases(root, models["good"], tiny_float_dir, images) + \
        option_cases(root, models["good"], tiny_float_dir) + \
        output_cases(root, models["good"], tiny_float_dir)
    return root, cases


def model_cases(models: dict[str, Path], labelled: Path) -> list[Case]:
    cases = []
    for name, path in models.items():
        usable = 0 if name in USABLE_MODELS else 2
        photo = str(PHOTO)
        cases += [
            Case(f"classify-model-{name}", "runtime",
                 ["classify", "--model", str(path), photo], usable, [path.name]),
            Case(f"bench-model-{name}", "runtime",
                 ["bench", "--model", str(path), "--runs", "1", "--warmup", "0"], usable,
                 [path.name]),
            Case(f"bundle-model-{name}", "bundle",
                 ["--model", str(path), "--out", str(path.parent / f"b-{name}.tar.gz")],
                 usable, [path.name]),
            Case(f"eval-model-{name}", "evaluate",
                 ["--model", str(path), "--data", str(labelled)], usable, [path.name]),
        ]
    return cases


def image_cases(model: Path, images: dict[str, Path]) -> list[Case]:
    cases = []
    for name, path in images.items():
        exit = 2 if name in UNUSABLE_IMAGES else 0
        cases.append(Case(f"classify-image-{name}", "runtime",
                          ["classify", "--model", str(model), str(path)], exit, [path.name]))
        cases.append(Case(f"classify-json-image-{name}", "runtime",
                          ["classify", "--json", "--model", str(model), str(PHOTO), str(path)],
                          exit, [path.name]))
    return cases


def label_cases(model: Path, labels: dict[str, tuple[Path, int]]) -> list[Case]:
    return [Case(f"labels-{name}", "runtime",
                 ["classify", "--model", str(model), "--labels", str(path), str(PHOTO)], exit,
                 [path.name])
            for name, (path, exit) in labels.items()]


def manifest_cases(root: Path, model: Path) -> list[Case]:
    cases = []
    for name, (data, exit) in MANIFESTS.items():
        folder = root / "manifests" / name
        folder.mkdir(parents=True)
        copy = folder / model.name
        copy.write_bytes(model.read_bytes())
        (folder / "manifest.json").write_bytes(data)
        cases.append(Case(f"manifest-classify-{name}", "runtime",
                          ["classify", "--model", str(copy), str(PHOTO)], exit, ["manifest"]))
        cases.append(Case(f"manifest-bundle-{name}", "bundle",
                          ["--model", str(copy), "--out", str(root / f"m-{name}.tar.gz")],
                          exit, ["manifest"]))
    for name, card in {"not_json": b"{", "list": b"[]", "empty": b""}.items():
        folder = root / "cards" / name
        folder.mkdir(parents=True)
        (folder / "model_card.json").write_bytes(card)
        (folder / "inception_v3.keras").write_bytes(b"PK")
        cases.append(Case(f"card-quantize-{name}", "quantize",
                          ["--model", str(folder), "--calib", str(CALIBRATION_DIR),
                           "--out", str(root / f"q-card-{name}")], 2, ["model card"]))
    return cases


def folder_cases(root: Path, model: Path, float_dir: Path, images: dict[str, Path]
                 ) -> list[Case]:
    folders = root / "folders"
    folders.mkdir()
    (folders / "empty").mkdir()
    (folders / "garbage").mkdir()
    for name in ("a.jpg", "b.png", "c.gif"):
        (folders / "garbage" / name).write_bytes(b"garbage")
    (folders / "loop").mkdir()
    (folders / "loop" / "self").symlink_to(folders / "loop")
    (folders / "fifos").mkdir()
    os.mkfifo(folders / "fifos" / "a.jpg")
    (folders / "one_class").mkdir()
    (folders / "one_class" / "cat").mkdir()
    (folders / "file").write_text("x")
    kinds = {"missing": folders / "nowhere", "file": folders / "file",
             "empty": folders / "empty", "garbage": folders / "garbage",
             "loop": folders / "loop", "fifos": folders / "fifos",
             "one_class": folders / "one_class"}
    cases = []
    for name, folder in kinds.items():
        cases += [
            Case(f"calib-{name}", "quantize",
                 ["--model", str(float_dir), "--calib", str(folder), "--variants", "int8",
                  "--out", str(root / f"q-{name}")], 2, [folder.name]),
            Case(f"eval-{name}", "evaluate", ["--model", str(model), "--data", str(folder)],
                 2, [folder.name]),
            Case(f"train-{name}", "train", ["--data", str(folder), "--epochs", "1",
                                            "--out", str(root / f"t-{name}")], 2,
                 [folder.name]),
            Case(f"quantize-eval-{name}", "quantize",
                 ["--model", str(float_dir), "--eval", str(folder), "--variants", "int8",
                  "--out", str(root / f"qe-{name}")], 2, [folder.name]),
        ]
    # A labelled folder of every hostile image plus two photos per class: evaluated,
    # the unusable ones counted as skipped.
    mixed = folders / "mixed"
    for klass in ("a", "b"):
        (mixed / klass).mkdir(parents=True)
        for i, photo in enumerate(sorted(CALIBRATION_DIR.glob("*.jpg"))[:2]):
            (mixed / klass / f"p{i}.jpg").write_bytes(photo.read_bytes())
    for name, path in images.items():
        if path.is_file() and not path.is_symlink():
            (mixed / "a" / path.name).write_bytes(path.read_bytes())
    os.mkfifo(mixed / "b" / "fifo.jpg")
    (mixed / "b" / "dangling.jpg").symlink_to(mixed / "nowhere.jpg")
    (mixed / "classes.tsv").write_text("wnid\timagenet_index\na\t0\nb\t1\n")
    cases.append(Case("eval-mixed", "evaluate", ["--model", str(model), "--data", str(mixed)],
                      0))
    for name, tsv in {"no_header": b"a\t0\nb\t1\n", "not_a_number": b"wnid\timagenet_index\na\tx\n",
                      "latin1": "wnid\timagenet_index\n\xe9\t0\n".encode("latin-1"),
                      "empty": b""}.items():
        folder = folders / f"tsv_{name}"
        for klass in ("b", "c"):
            (folder / klass).mkdir(parents=True)
            shutil.copy(mixed / "b" / "p0.jpg", folder / klass)
        (folder / "classes.tsv").write_bytes(tsv)
        cases.append(Case(f"eval-classes-tsv-{name}", "evaluate",
                          ["--model", str(model), "--data", str(folder)], 2, ["classes.tsv"]))
    return cases


NUMBERS = ["0", "-1", "x", "nan", "inf", "1e999", ""]


def option_cases(root: Path, model: Path, float_dir: Path) -> list[Case]:
    """Every numeric option, out of range or not a number: usage errors (exit 2)."""
    photo = str(PHOTO)
    base = {
        "runtime-classify": ("runtime", ["classify", "--model", str(model), photo],
                             ["--top-k", "--threads"]),
        "runtime-bench": ("runtime", ["bench", "--model", str(model)],
                          ["--runs", "--threads"]),
        "quantize": ("quantize", ["--model", str(float_dir), "--out", str(root / "q-opt")],
                     ["--calib-samples", "--held-out-samples", "--eval-samples", "--threads",
                      "--qat-epochs", "--qat-learning-rate", "--num-classes",
                      "--depth-multiplier"]),
        "build": ("build", ["--out", str(root / "b-opt")],
                  ["--num-classes", "--depth-multiplier", "--min-depth"]),
        "train": ("train", ["--data", str(CALIBRATION_DIR), "--out", str(root / "t-opt")],
                  ["--epochs", "--batch-size", "--learning-rate", "--limit-per-class",
                   "--val-fraction", "--min-crop-area", "--depth-multiplier"]),
        "evaluate": ("evaluate", ["--model", str(model), "--data", str(CALIBRATION_DIR)],
                     ["--limit"]),
        "bench": ("bench", ["--run", str(root / "no-run")], ["--runs", "--eval-samples"]),
    }
    zero_means_all = {("bench", "--eval-samples")}
    cases = []
    for name, (command, argv, options) in base.items():
        for option in options:
            for value in NUMBERS:
                if value == "0" and (name, option) in zero_means_all:
                    continue
                cases.append(Case(f"{name}{option}={value or 'empty'}", command,
                                  argv + [f"{option}={value}"], 2, [option]))
    for name, command, argv, option in [
            ("runtime-bench", "runtime", ["bench", "--model", str(model)], "--warmup"),
            ("quantize", "quantize", ["--model", str(float_dir)], "--seed"),
            ("train", "train", ["--data", str(CALIBRATION_DIR)], "--seed")]:
        for value in ("-1", "x", "1.5"):
            cases.append(Case(f"{name}{option}={value}", command, argv + [f"{option}={value}"],
                              2, [option]))
    for option in ("--max-top1-drop", "--min-agreement", "--fallback-budget"):
        for value in ("-1", "101", "nan", "x"):
            cases.append(Case(f"quantize{option}={value}", "quantize",
                              ["--model", str(float_dir), f"{option}={value}"], 2, [option]))
    for value in ("0", "74", "-1", "x", "10x", "299x299x3", "", "1e9", "75x0"):
        for command, argv in [("build", ["--out", str(root / "b-size")]),
                              ("quantize", ["--out", str(root / "q-size")])]:
            cases.append(Case(f"{command}--input-size={value or 'empty'}", command,
                              argv + [f"--input-size={value}"], 2, ["INPUT_SIZE", "input"]))
    for value in ("x", "", "0", "-2", "1,x"):
        cases.append(Case(f"bench--threads={value or 'empty'}", "bench",
                          ["--run", str(root / "no-run"), f"--threads={value}"], 2,
                          ["THREADS", "threads", "no-run"]))
    cases += [
        Case("quantize-unknown-variant", "quantize",
             ["--model", str(float_dir), "--variants", "int7"], 2, ["int7"]),
        Case("quantize-drop-without-eval", "quantize",
             ["--model", str(float_dir), "--max-top1-drop", "1"], 2, ["EVAL"]),
        Case("build-weights-missing-file", "build",
             ["--weights", str(root / "none.h5"), "--out", str(root / "b-w")], 2, ["none.h5"]),
        Case("build-weights-garbage-file", "build",
             ["--weights", str(root / "models" / "random.tflite"), "--out",
              str(root / "b-w2")], 2, ["random.tflite"]),
        Case("runtime-no-command", "runtime", [], 2),
        Case("runtime-unknown-command", "runtime", ["explode"], 2),
        Case("bench-no-run", "bench", ["--run", str(root / "no-run")], 2, ["no-run"]),
        Case("evaluate-run-missing", "evaluate",
             ["--run", str(root / "no-run"), "--data", str(CALIBRATION_DIR)], 2, ["no-run"]),
    ]
    return cases


def output_cases(root: Path, model: Path, float_dir: Path) -> list[Case]:
    """Outputs that would overwrite something of the user's: refused before any work."""
    outs = root / "outs"
    outs.mkdir()
    (outs / "a_file").write_text("user data")
    (outs / "a_folder").mkdir()
    (outs / "a_folder" / "keep.txt").write_text("user data")
    (outs / "archive.tar.gz").write_bytes(b"not a bundle")
    locked = outs / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        Case("bundle-out-folder", "bundle",
             ["--model", str(model), "--out", str(outs / "a_folder")], 2, ["a_folder"]),
        Case("bundle-out-model", "bundle", ["--model", str(model), "--out", str(model)], 2,
             [model.name]),
        Case("bundle-out-user-file", "bundle",
             ["--model", str(model), "--out", str(outs / "archive.tar.gz")], 2,
             ["archive.tar.gz"]),
        Case("bundle-out-file-as-folder", "bundle",
             ["--model", str(model), "--out", str(outs / "a_file" / "x.tar.gz")], 2,
             ["a_file"]),
        Case("quantize-out-file", "quantize",
             ["--model", str(float_dir), "--out", str(outs / "a_file")], 2, ["a_file"]),
        Case("build-out-file", "build", ["--out", str(outs / "a_file")], 2, ["a_file"]),
        Case("train-out-file", "train",
             ["--data", str(CALIBRATION_DIR), "--out", str(outs / "a_file")], 2, ["a_file"]),
        Case("evaluate-json-folder", "evaluate",
             ["--model", str(model), "--data", str(CALIBRATION_DIR), "--json",
              str(outs / "a_folder")], 2, ["a_folder"]),
    ]
    if not IS_ROOT:  # root writes anywhere: these say nothing there
        cases += [Case("quantize-out-locked", "quantize",
                       ["--model", str(float_dir), "--out", str(locked / "run")], 2,
                       ["locked"]),
                  Case("bundle-out-locked", "bundle",
                       ["--model", str(model), "--out", str(locked / "b.tar.gz")], 2,
                       ["locked"])]
    return cases


# --- running it --------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """Every file under `root` by content (FIFOs and links by kind, never opened)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[str(path)] = ("other", stat.S_IFMT(mode))
    return found


class Hang(Exception):
    pass


def run_case(case: Case, capsys) -> tuple[int, str, str]:
    def alarm(signum, frame):
        raise Hang(case.id)
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(120)
    try:
        code = cli.run(entry(case.command), case.argv)
    except SystemExit as done:  # argparse's usage errors
        code = done.code
    except Exception:  # noqa: BLE001 (what a user would see as a traceback)
        import traceback
        traceback.print_exc()
        code = "traceback"
    finally:
        signal.alarm(0)
    out, err = capsys.readouterr()
    return code, out, err


def test_corpus_is_large(corpus):
    _, cases = corpus
    assert len(cases) >= 300
    assert len({c.id for c in cases}) == len(cases)


def test_hostile_input_gets_one_clear_sentence(corpus, capsys):
    root, cases = corpus
    before = snapshot(root)
    wrong = []
    for case in cases:
        code, out, err = run_case(case, capsys)
        problems = []
        if code != case.exit:
            problems.append(f"exit {code}, wanted {case.exit}")
        if "Traceback" in out + err:
            problems.append("traceback")
        errors = [line for line in err.splitlines() if line.startswith(("error:", "usage:"))]
        if case.exit and not errors:
            problems.append("no error line")
        if case.exit and case.names and not any(n in err for n in case.names):
            problems.append(f"the error does not name {case.names}")
        if problems:
            wrong.append(f"{case.id}: {', '.join(problems)}: {err.strip()[-300:]}")
    after = snapshot(root)
    changed = [p for p in before if before[p] != after.get(p)]
    partial = [p for p in after if ".partial-" in p or ".old-" in p]
    assert not wrong, "\n".join(wrong)
    assert not changed, changed
    assert not partial, partial


def test_bundle_of_a_usable_model_is_a_bundle(corpus, capsys):
    root, _ = corpus
    out = root / "fresh.tar.gz"
    assert cli.run(entry("bundle"), ["--model", str(root / "models" / "good.tflite"),
                                     "--out", str(out)]) == 0
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("good/manifest.json"))
    assert "good.tflite" in manifest["files"]
    # Its own earlier archive may be replaced; the bytes are the same.
    first = out.read_bytes()
    assert cli.run(entry("bundle"), ["--model", str(root / "models" / "good.tflite"),
                                     "--out", str(out)]) == 0
    assert out.read_bytes() == first


def test_a_reader_that_stops_early_ends_the_command_quietly(corpus, tmp_path):
    """`python -m runtime classify ... | head -n 1`: no BrokenPipeError traceback."""
    import subprocess
    import sys
    root, _ = corpus
    model = root / "models" / "good.tflite"
    err = tmp_path / "stderr.txt"
    command = (f"{sys.executable} -m runtime classify --top-k 10 --model {model} "
               f"{' '.join([str(PHOTO)] * 300)} 2>{err} | head -n 1")
    done = subprocess.run(command, shell=True, cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == str(PHOTO)
    assert "Traceback" not in err.read_text(), err.read_text()


def test_odd_calibration_files_are_skipped_and_named_in_the_report(tiny_float_dir, tmp_path,
                                                                    capsys):
    """A calibration folder with a non-UTF-8 file name, a FIFO, garbage and a bomb beside
    real photos: the run succeeds, and the report names what it skipped."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for photo in sorted(CALIBRATION_DIR.glob("*.jpg"))[:6]:
        shutil.copy(photo, folder)
    shutil.copy(PHOTO, os.fsdecode(bytes(folder) + b"/caf\xe9 skipped?.jpg"))
    (Path(os.fsdecode(bytes(folder) + b"/bad\xff.png"))).write_bytes(b"garbage")
    os.mkfifo(folder / "fifo.jpg")
    out = tmp_path / "run"
    code = cli.run(entry("quantize"), ["--model", str(tiny_float_dir), "--calib", str(folder),
                                       "--variants", "int8", "--no-layer-errors",
                                       "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    skipped = json.loads((out / "report.json").read_text())["skipped_files"]
    assert len(skipped) == 2 and any("fifo.jpg" in name for name in skipped)
    assert "Traceback" not in capsys.readouterr().err


def test_a_failed_quantize_removes_the_float_model_it_built(tmp_path, capsys):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.jpg").write_bytes(b"not a photo")
    out = tmp_path / "run"
    code = cli.run(entry("quantize"), ["--weights", "random", "--input-size", "75",
                                       "--depth-multiplier", "0.25", "--calib", str(garbage),
                                       "--variants", "int8", "--out", str(out)])
    assert code == 2 and "No usable image" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [garbage]
