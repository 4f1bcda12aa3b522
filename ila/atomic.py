"""Atomic outputs: every file is written beside its destination, then moved into place in one step.

A crash or a full disk leaves either the old file or the new one, never half of one: a write that fails
removes its temporary file and raises a one-line `UserError` naming the destination. Temporary files
left by a killed process (`.NAME.XXXX.tmp...`) are found and removed by `remove_stale_temporaries`.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ila.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")
_WRITE_FAILED = ("write", "failed")   # torch's zip writer (inline_container) reports OS errors as RuntimeError text


def output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create folder `path` (and its parents); a one-line UserError when it is a file or cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{what} {path} is a file, not a folder; choose another path") from None
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {os_reason(e)}") from None
    return path


def os_reason(e: BaseException) -> str:
    """A short reason for an OS-level failure, without the path repeated."""
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno).lower()
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first[:160]


def _is_write_failure(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("inline_container" in text or all(w in text for w in _WRITE_FAILED))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write to; on leaving the block it replaces `path` (or vanishes on error).

    A full disk, a read-only folder or an output path that is a folder raises a one-line UserError
    naming `path`; whatever was at `path` before is left as it was."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    output_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {os_reason(e)}") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs get the usual permissions
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            if not _is_write_failure(e):
                raise
            reason = os_reason(e)
            if isinstance(e, RuntimeError) and _disk_full(path.parent):
                reason = os.strerror(errno.ENOSPC).lower()
            raise UserError(f"cannot write {path}: {reason}; the previous file there (if any) is unchanged") \
                from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in `folder` (not recursive); returns them.

    Call it only while no other process writes into `folder` (see `ila.engine.runlock`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if _TEMPORARY.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
