"""Checksums and all-or-nothing output folders (standard library only: runs on the device)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data) -> None:
    """Stable bytes: sorted keys, fixed indentation, trailing newline."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder; on success move its entries into `out_dir`.

    Nothing reaches `out_dir` unless the block finishes: an error removes the staging
    folder and leaves `out_dir` as it was. Each entry lands by rename (replacing an older
    entry of the same name), so readers never see a half-written file.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        out.mkdir(exist_ok=True)
        for entry in sorted(staging.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=out))
                target.rename(old / entry.name)
                entry.rename(target)
                shutil.rmtree(old)
            else:
                os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
