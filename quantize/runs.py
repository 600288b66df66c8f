"""Finding the float model card of the quantize run a `.tflite` came from (stdlib only)."""
from __future__ import annotations

import json
from pathlib import Path

CARD_FILE = "model_card.json"  # the one definition; build.float_model uses it too


def float_card_of(model_path: Path) -> dict | None:
    """The card of `<run>/float`, or of the float folder the run's manifest names; for a
    deploy bundle, its `labels.txt` as `{"labels": [...]}`; else None."""
    candidates = [model_path.parent / "float" / CARD_FILE]
    manifest = model_path.parent / "manifest.json"
    if manifest.is_file():
        folder = json.loads(manifest.read_text()).get("float_model", {}).get("folder")
        if folder:
            candidates.append(Path(folder) / CARD_FILE)
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    labels = model_path.parent / "labels.txt"
    return {"labels": labels.read_text().splitlines()} if labels.is_file() else None
