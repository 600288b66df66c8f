"""Checksums and all-or-nothing output folders (standard library only: runs on the device)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from runtime.errors import InputError

MAX_TEXT_BYTES = 64 << 20  # manifests, model cards and labels files are kilobytes


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` if it is a regular file; never opens it, so a FIFO or a device cannot hang
    or feed a read, and a folder or a missing path gets one sentence naming it."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"No {what} at {path}.") from None
    except OSError as error:
        raise InputError(f"Cannot read the {what} {path}: {error.strerror}.") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise InputError(f"The {what} {path} is {kind}; give a file.")
    return path


def _small_file(path: str | os.PathLike, what: str, fix: str) -> bytes:
    """The bytes of a regular file no larger than a text file of its kind can be."""
    path = regular_file(path, what)
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise InputError(f"The {what} {path} is {path.stat().st_size:,} bytes, too large to "
                         f"be one; {fix}.")
    return path.read_bytes()


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from a regular file, or one sentence saying why it is not one."""
    raw = _small_file(path, what, "restore it")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"The {what} {path} is not valid JSON ({error}); restore it.") \
            from None
    if not isinstance(data, dict):
        raise InputError(f"The {what} {path} holds a JSON {type(data).__name__}, not an "
                         "object; restore it.")
    return data


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One label per line, UTF-8 (a byte-order mark is allowed); anything else is named."""
    raw = _small_file(path, "labels file", "give one class name per line")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"The labels file {path} is not UTF-8 text; save it as UTF-8, one "
                         "class name per line.") from None
    if "\0" in text:
        raise InputError(f"The labels file {path} is binary, not text; give one class name "
                         "per line.")
    return text.splitlines()


def check_output(path: str | os.PathLike, kind: str = "folder") -> Path:
    """Before any work starts: `path` can be made or replaced as a `kind` ("folder" or
    "file") without touching anything else of the user's."""
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise InputError(f"The output folder {path} is a file; give a folder (OUT=).")
    if kind == "file" and path.is_dir():
        raise InputError(f"The output file {path} is a folder; give a file name.")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"Cannot write {path}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write {path}: {ancestor} is not writable; give another "
                         "place.")
    return path


def write_json(path: str | os.PathLike, data) -> None:
    """Stable bytes (sorted keys, fixed indentation, trailing newline), in one rename."""
    with staged_file(path) as staged:
        staged.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(folder: Path, name: str) -> None:
    """Remove `.<name>.partial-<pid>-*` staging left by a killed run (its pid is gone)."""
    for entry in folder.glob(f".{name}.partial-*"):
        pid = entry.name[len(f".{name}.partial-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _staging_name(out: Path) -> str:
    return f".{out.name}.partial-{os.getpid()}-"


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder; on success move its entries into `out_dir`.

    Nothing reaches `out_dir` unless the block finishes: an error removes the staging
    folder and leaves `out_dir` as it was. Each entry lands by rename (replacing an older
    entry of the same name), so readers never see a half-written file. Staging left by a
    run that was killed (kill -9 cannot be caught) is removed by the next run.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"The output folder {out} is a file; give a folder (OUT=).")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name)
    staging = Path(tempfile.mkdtemp(prefix=_staging_name(out), dir=out.parent))
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


@contextlib.contextmanager
def staged_file(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `out`; on success it replaces `out` in one rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name)
    fd, name = tempfile.mkstemp(prefix=_staging_name(out), dir=out.parent)
    os.close(fd)
    try:
        yield Path(name)
        os.replace(name, out)
    finally:
        Path(name).unlink(missing_ok=True)
