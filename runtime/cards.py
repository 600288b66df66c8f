"""The model card: its file name, and finding the float card of the run a `.tflite`
came from (standard library only: `build/` writes cards, `quantize/` reads them)."""
from __future__ import annotations

from pathlib import Path

from runtime.fileio import read_json, read_labels_file

CARD_FILE = "model_card.json"


def float_card_of(model_path: Path) -> dict | None:
    """The card of `<run>/float`, or of the float folder the run's manifest names (relative
    to the run); for a deploy bundle, its `labels.txt` as `{"labels": [...]}`; else None."""
    run = model_path.parent
    candidates = [run / "float" / CARD_FILE]
    if (run / "manifest.json").exists():
        float_model = read_json(run / "manifest.json", "manifest").get("float_model")
        folder = float_model.get("folder") if isinstance(float_model, dict) else None
        if isinstance(folder, str):
            candidates.append(run / folder / CARD_FILE)
    for path in candidates:
        if path.exists():
            return read_json(path, "model card")
    labels = run / "labels.txt"
    return {"labels": read_labels_file(labels)} if labels.exists() else None
