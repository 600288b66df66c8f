"""Check a model against the SHA-256 in a `manifest.json` beside it (bundle or quantize run)."""
from __future__ import annotations

from pathlib import Path

from runtime.fileio import read_json, sha256
from runtime.interpreter import RuntimeLoadError

MANIFEST = "manifest.json"


def expected_sha256(model_path: Path) -> str | None:
    """The SHA-256 the manifest beside `model_path` gives it (a bundle's `files`, a quantize
    run's `variants`), None without a manifest; a malformed manifest is an error."""
    path = model_path.parent / MANIFEST
    if not path.exists():
        return None
    data = read_json(path, "manifest")
    files, runs = data.get("files", {}), data.get("variants", {})
    if not isinstance(files, dict) or not isinstance(runs, dict) or \
            not all(isinstance(v, dict) for v in runs.values()):
        raise RuntimeLoadError(f"{path} is malformed (`files` and `variants` must be objects); "
                               "restore it from the bundle or the run, or delete it.")
    sums = dict(files)
    sums.update({v.get("file"): v.get("sha256") for v in runs.values()})
    expected = sums.get(model_path.name)
    if model_path.name in sums and not (isinstance(expected, str) and len(expected) == 64):
        raise RuntimeLoadError(f"{path} gives {model_path.name} no SHA-256; restore it from "
                               "the bundle or the run, or delete it.")
    return expected


def verify(model_path: str | Path) -> bool:
    """True when a manifest vouches for the file; raises when the file differs from it."""
    path = Path(model_path)
    expected = expected_sha256(path)
    if expected is None:
        return False
    actual = sha256(path)
    if actual != expected:
        raise RuntimeLoadError(f"{path.name} does not match its SHA-256 in {MANIFEST} "
                               f"({actual[:12]}... vs {expected[:12]}...): the copy is "
                               "damaged or was replaced; copy the bundle again.")
    return True
