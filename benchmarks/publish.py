"""What every benchmark page carries and where it lands: when and by which command it
was measured, then `<out>/<stem>.md` and `.json` side by side (and the page on stdout)."""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from runtime.fileio import write_json


def stamp(module: str, argv: Sequence[str] | None) -> dict:
    """`measured` (UTC, seconds) and the `command` that reproduces the figures."""
    args = sys.argv[1:] if argv is None else argv
    return {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": f"python -m {module} " + " ".join(args)}


def publish(report: dict, text: str, out: str | None, stem: str) -> None:
    print(text)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{stem}.md").write_text(text)
        write_json(Path(out) / f"{stem}.json", report)
