"""Check a model against the SHA-256 in a `manifest.json` beside it (bundle or quantize run)."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.fileio import sha256
from runtime.interpreter import RuntimeLoadError

MANIFEST = "manifest.json"


def expected_sha256(model_path: Path) -> str | None:
    manifest = model_path.parent / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        raise RuntimeLoadError(f"{manifest} is not valid JSON ({error}); restore it from the "
                               "bundle or delete it.") from None
    files = dict(data.get("files", {}))
    files.update({v["file"]: v["sha256"] for v in data.get("variants", {}).values()})
    return files.get(model_path.name)


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
