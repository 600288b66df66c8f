"""`make bundle`: one archive with a model, its labels, the runtime and its requirements.

Unpack it on the device, `pip install -r requirements.txt`, then
`python3 -m runtime classify --model <model> photo.jpg`. The manifest's SHA-256 sums are
checked by the runtime whenever it loads the model from the bundle.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

from runtime import cli
from runtime.cards import float_card_of
from runtime import tflite_graph as tg
from runtime.classify import Classifier
from runtime.interpreter import check_model_file, is_edgetpu_model
from runtime.errors import InputError
from runtime.fileio import check_output, regular_file, sha256, staged_file

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_FILES = sorted(p for p in (ROOT / "runtime").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
README = """\
InceptionV3 on the device
=========================
64-bit OS, Python 3.11 or newer:  pip install -r requirements.txt  (ai-edge-litert)
64-bit OS, Python 3.9 or 3.10 (Raspberry Pi OS Bullseye):
                                   pip install -r requirements-py39.txt  (ai-edge-litert)
The legacy interpreter instead:    pip install -r requirements-tflite-runtime.txt
                                   (x86-64: Python 3.9-3.11; aarch64: 3.9-3.10)
32-bit Raspberry Pi OS: the package index has no TFLite interpreter wheel for it (neither
ai-edge-litert nor tflite-runtime); install a 64-bit Raspberry Pi OS.
{coral}
    python3 -m runtime classify --model {model} photo.jpg
    python3 -m runtime bench --model {model}
"""
CORAL_COMPILED = """\
Coral Edge TPU: {model} is compiled for it. Install libedgetpu1-std from Coral's apt
repository and plug the accelerator in; the runtime loads the delegate by itself.
"""
CORAL_UNCOMPILED = """\
Coral Edge TPU: {model} is the all-integer graph the Edge TPU takes, not yet compiled
(edgetpu_compiler was not installed where it was made). Compile it on an x86-64 Linux
host: edgetpu_compiler {model}, then bundle again (make bundle VARIANT=coral). As it is,
it runs on the CPU.
"""
CPU_ONLY = """\
This model is for the CPU. For a Coral Edge TPU bundle the Coral file:
make bundle VARIANT=coral.
"""


def coral_model(model: Path) -> Path:
    """The compiled `*_edgetpu.tflite` beside a Coral file, when the compiler made one."""
    compiled = model.with_name(f"{model.stem}_edgetpu.tflite")
    return compiled if model.stem.endswith("_coral") and compiled.is_file() else model


def readme(model: Path) -> str:
    if model.stem.endswith("_edgetpu"):
        coral = CORAL_COMPILED
    elif model.stem.endswith("_coral"):
        coral = CORAL_UNCOMPILED
    else:
        coral = CPU_ONLY
    return README.format(model=model.name, coral=coral.format(model=model.name))


def requirements() -> dict[str, str]:
    """The bundle's requirement files by name: the pipeline's own pins for Python 3.11+,
    and the Python 3.9 and tflite-runtime files as they are (comments dropped)."""
    pins = {line.split("==")[0].lower(): line.strip() for line in
            (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    files = {"requirements.txt": "\n".join(
        [pins["ai-edge-litert"], pins["numpy"], pins["pillow"]]) + "\n"}
    for name in ("requirements-py39.txt", "requirements-tflite-runtime.txt"):
        files[name] = "".join(line + "\n" for line in (ROOT / name).read_text().splitlines()
                              if line and not line.startswith("#"))
    return files


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible archive
    tar.addfile(info, io.BytesIO(data))


def is_bundle(path: Path) -> bool:
    """True for an archive `make_bundle` wrote (it may be replaced; nothing else may)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            return any(name.count("/") == 1 and name.endswith("/manifest.json")
                       for name in tar.getnames())
    except (OSError, tarfile.TarError, EOFError):
        return False


def check_paths(model: Path, out: Path) -> None:
    """The model must be one the runtime loads; the archive may replace only an older
    bundle, never the model, a folder or any other file of the user's."""
    if is_edgetpu_model(check_model_file(model)):
        try:  # the delegate is not here: the graph must at least parse
            tg.load(model.read_bytes())
        except Exception:  # noqa: BLE001 (any parse failure of untrusted bytes)
            raise InputError(f"{model} is damaged: its graph does not parse; compile it "
                             "again.") from None
    else:
        Classifier(model, num_threads=1)  # an unreadable or non-classifier model stops here
    if out.exists() or out.is_symlink():
        if out.resolve() == model.resolve():
            raise InputError(f"The archive path {out} is the model itself; give another "
                             "--out.")
        if not out.is_file() or out.is_symlink() or not is_bundle(out):
            raise InputError(f"{out} exists and is not a bundle; give an archive path that "
                             "is free (--out DIR/name.tar.gz), or remove it.")


def bundle_files(model: Path) -> dict[str, bytes]:
    """Every file of the bundle by its name inside it, the manifest of their sums last."""
    files: dict[str, bytes] = {
        model.name: model.read_bytes(), "README.txt": readme(model).encode(),
        **{name: text.encode() for name, text in requirements().items()},
    }
    labels = (float_card_of(model) or {}).get("labels")  # trained models name their classes
    if isinstance(labels, list) and labels:
        files["labels.txt"] = ("\n".join(map(str, labels)) + "\n").encode()
    for path in RUNTIME_FILES:
        files[str(path.relative_to(ROOT))] = path.read_bytes()
    manifest = {"files": {name: hashlib.sha256(data).hexdigest()
                          for name, data in sorted(files.items())}}
    files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files


def make_bundle(model: Path, out: Path) -> Path:
    """Write the bundle of `model` to `out` in one rename (nothing partial on failure)."""
    model = regular_file(model, "model")
    check_output(out, "file")
    check_paths(model, out)
    files = bundle_files(model)
    with staged_file(out) as archive:
        with open(archive, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(files):
                _add(tar, f"{model.stem}/{name}", files[name])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quantize.bundle", description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--out", help="archive path (default: <model>_bundle.tar.gz beside it)")
    args = p.parse_args(argv)
    model = coral_model(Path(args.model))
    out = Path(args.out) if args.out else model.with_name(f"{model.stem}_bundle.tar.gz")
    make_bundle(model, out)
    print(f"Wrote {out} ({out.stat().st_size / 1e6:.1f} MB): model {sha256(model)[:12]}..., "
          "labels, runtime, requirements, manifest")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
