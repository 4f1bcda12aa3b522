"""Atomic outputs: every file is written beside its destination, then moved into place in one step.

A crash or a full disk leaves either the old file or the new one, never half of one: a write that fails
removes its temporary file and raises a one-line `UserError` naming the destination. Temporary files
left by a killed process (`.NAME.XXXX.tmp...`) are found and removed by `remove_stale_temporaries`.

What an output path may be (`output_file`): a new name, a regular file (replaced as a whole, its permissions
kept), or a symbolic link, which is written through: the new file goes beside the file the link points to (or
names, when it dangles) and replaces that one, so the link stays a link. A FIFO, a socket or a device node
(`/dev/null`, `/dev/full`) is refused in one line, never replaced by a regular file nor written into.

A folder of files that belong together (a pretrained folder: config.json + model.safetensors + README.md) is
written by `atomic_folder`: into a fresh temporary folder beside it, then swapped in whole (see there).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ila.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")
_FOLDER_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmpdir$")
_STAGING = re.compile(r"^\.ila-staging\.[A-Za-z0-9_]{8}\.tmpdir$")
_WRITE_FAILED = ("write", "failed")   # torch's zip writer (inline_container) reports OS errors as RuntimeError text


def output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create folder `path` (and its parents); a one-line UserError when it is a file or cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        kind = _special(path)
        raise UserError(f"{what} {path} is {kind or 'a file'}, not a folder; choose another path") from None
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {os_reason(e)}") from None
    return path


def _special(path: Path) -> str | None:
    """What `path` is when it is neither a regular file nor a folder (following links), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def output_file(path: str | Path, what: str = "") -> Path:
    """The file a write to `path` replaces: `path` itself, or for a symbolic link the file it points to (for a
    dangling one, the file it names). Checks only, creates nothing; call it before any work to fail early. A
    one-line UserError (starting with `what`, else "cannot write") when `path` is a folder, a FIFO, a socket, a
    device node or a link that loops."""
    path = Path(path)
    head = f"{what} {path}" if what else f"cannot write {path}"
    target = path
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if target.is_symlink():                 # realpath stops where links loop
            raise UserError(f"{head}: it is a symbolic link that loops; give a file name")
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return target                           # a new file (a blocked folder is output_dir's to say)
    except OSError as e:
        raise UserError(f"{head}: {os_reason(e)}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{head}: it is a folder; give a file name")
    if not stat.S_ISREG(mode):
        raise UserError(f"{head}: it is {_special(target)}, not a regular file; ila writes each output to a new "
                        f"file and moves it into place, so give a file name")
    return target


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

    A full disk, a read-only folder or an output path that is a folder, a FIFO, a socket or a device node raises
    a one-line UserError naming `path`; whatever was at `path` before is left as it was. A symbolic link is
    written through (`output_file`): the file it points to is replaced, the link stays."""
    path = Path(path)
    target = output_file(path)
    output_dir(target.parent)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode) & 0o777     # a replaced file keeps its permissions
    except OSError:
        mode = 0o666 & ~_UMASK                                   # mkstemp makes files private; outputs are not
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {os_reason(e)}") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except (OSError, RuntimeError) as e:
            if not _is_write_failure(e):
                raise
            reason = os_reason(e)
            if isinstance(e, RuntimeError) and _disk_full(target.parent):
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


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------------------- folders

@contextmanager
def atomic_folder(path: str | Path, owned: Iterable[str], what: str = "folder") -> Iterator[Path]:
    """A fresh, empty temporary folder to write the files named in `owned` into; on leaving the block they
    replace those of folder `path` all together (on an error the temporary folder vanishes and `path` is as it
    was: a failed write is a one-line UserError).

    How (Linux): the new files are written into `.NAME.XXXXXXXX.tmpdir` beside `path` and flushed to disk; then
    the two folders trade places in one step (`renameat2(RENAME_EXCHANGE)`), so `path` holds either all the old
    files or all the new ones at every instant, whenever the process is killed. Everything else the folder holds
    (a Hub clone's `.git` and `.gitattributes`, notes) is then moved back into it, and the old files are deleted.
    A process killed before that leaves the temporary folder beside `path`; the next `atomic_folder` on `path`
    moves the other files it holds back into `path` (never overwriting one that is there) and removes it.
    Writers into one parent folder take turns (an advisory lock on the parent folder).

    Where the exchange cannot happen (not Linux, a file system without it, `path` a mount point or the current
    folder, the parent folder not writable) the files are staged the same way and then moved in one by one, in
    the order of `owned`: a failed write still changes nothing, but a kill between two of those moves (a window
    of microseconds) would leave a mix. A symbolic link to a folder is written through."""
    owned = list(owned)
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else Path(os.path.abspath(path))
    if target.exists() and not target.is_dir():
        raise UserError(f"{path} is {_special(target) or 'a file'}; give a folder to write the {what} in")
    output_dir(target.parent, "folder")
    with _turn(target.parent):
        _settle_leftovers(target, owned)
        exists = target.is_dir()
        stage = None
        if not exists or _swappable(target):
            try:
                stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmpdir", dir=target.parent))
            except OSError as e:
                if not (exists and isinstance(e, PermissionError)):
                    raise UserError(f"cannot write {path}: {os_reason(e)}") from None
        inside = stage is None                           # staged inside the folder, moved in file by file
        if inside:
            try:
                stage = Path(tempfile.mkdtemp(prefix=".ila-staging.", suffix=".tmpdir", dir=target))
            except OSError as e:
                raise UserError(f"cannot write {path}: {os_reason(e)}") from None
        try:
            try:
                yield stage
                _flush(stage, owned)
                os.chmod(stage, stat.S_IMODE(os.stat(target).st_mode) if exists else 0o777 & ~_UMASK)
                _commit(stage, target, owned, inside)
            except (OSError, RuntimeError) as e:
                if not _is_write_failure(e):
                    raise
                raise UserError(f"cannot write {path}: {os_reason(e)}; the {what} there (if any) is unchanged") \
                    from None
        finally:
            _clear(stage, target, owned, inside)


def _clear(stage: Path, target: Path, owned: list[str], inside: bool) -> None:
    """Remove the staging folder: after a commit it is gone (renamed), empty, or holds the old folder swapped
    out (its other files go back into `target`); after a failure it holds only new files."""
    if not stage.is_dir():
        return
    if inside:
        shutil.rmtree(stage, ignore_errors=True)
        return
    try:
        _settle(stage, target, owned)
    except OSError as e:
        print(f"could not clear {stage} ({os_reason(e)}); the next write of {target} clears it", file=sys.stderr)


def _commit(stage: Path, target: Path, owned: list[str], inside: bool) -> None:
    """Put the staged files in place (see `atomic_folder`)."""
    if not inside and not target.exists():
        _step("rename")
        os.rename(stage, target)                     # the whole new folder appears at once
    elif not inside and _exchange(stage, target):
        pass                                         # `stage` now holds the old folder; `finally` settles it
    else:
        for name in owned:
            if (stage / name).exists():
                _step("replace")
                os.replace(stage / name, target / name)
    _sync_folder(target.parent)


def _swappable(folder: Path) -> bool:
    """Whether `folder` may trade places with a sibling: not a mount point, not holding the current folder."""
    try:
        if os.stat(folder).st_dev != os.stat(folder.parent).st_dev:
            return False
        cwd = Path(os.getcwd()).resolve()
    except OSError:
        return False
    return folder.resolve() != cwd and folder.resolve() not in cwd.parents


def _settle(leftover: Path, target: Path, owned: list[str]) -> None:
    """Empty a temporary folder beside `target`: files other than `owned` go (back) into `target` unless it has
    one of that name; the owned ones (new files never committed, or the old ones swapped out) are deleted. A
    folder left with a file that could not go back is kept and named on stderr."""
    kept = []
    for entry in sorted(leftover.iterdir()):
        if entry.name in owned and not entry.is_dir():
            _step("unlink")
            entry.unlink()
            continue
        dest = target / entry.name
        if target.is_dir() and not os.path.lexists(dest):
            _step("move back")
            os.rename(entry, dest)
        else:
            kept.append(entry.name)
    if kept:
        print(f"kept {leftover}: it holds {', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''}, which "
              f"{target} also has; look at them and remove the folder", file=sys.stderr)
        return
    _step("rmdir")
    os.rmdir(leftover)


def _settle_leftovers(target: Path, owned: list[str]) -> None:
    """Clear what an interrupted `atomic_folder` on `target` left: temporary folders beside it, staging folders
    inside it."""
    for p in sorted(target.parent.iterdir()):
        m = _FOLDER_TEMPORARY.match(p.name)
        if m and m.group("name") == target.name and p.is_dir() and not p.is_symlink():
            _settle(p, target, owned)
    if target.is_dir():
        for p in target.iterdir():
            if _STAGING.match(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


@contextmanager
def _turn(folder: Path) -> Iterator[None]:
    """An advisory lock on `folder` while a writer changes its entries (none where the file system has none)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)                               # closing drops the lock


def _flush(stage: Path, owned: list[str]) -> None:
    """The staged files on disk before they are swapped in (a power cut then leaves old or new, not empty)."""
    for name in owned:
        p = stage / name
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _sync_folder(stage)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries `a` and `b` of one folder in one step; False where the system cannot (nothing changed)."""
    fn = _renameat2()
    if fn is None:
        return False
    _step("exchange")
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EBUSY, errno.EPERM,
               errno.EACCES):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _step(name: str) -> None:
    """Called before each step that changes the folders (tests stop the process here, one step after another)."""
