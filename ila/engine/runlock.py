"""One writer per run directory: an advisory lock held for as long as a process writes there.

`ila train` (its main process) takes `RUN_DIR/.lock` before it writes anything, `ila eval` its output folder's. A
second process that asks for the same directory is refused with a line naming the holder (its process id and
since when). The lock is an `fcntl.flock` on an open file, so the kernel drops it when the holder exits for any
reason, `kill -9` included: a stale lock file never blocks a later run. Once the lock is held, the temporary
files of writes that an earlier, killed process left behind are removed.

The lock file holds the holder's process id and start time only (no host name, no command line: run folders
are shared and uploaded), and is emptied when the lock is released, on every exit path. A folder the lock
created that holds nothing else when it is released (a run that failed before writing anything) is removed
with its lock file.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from ila import jsonsafe
from ila.atomic import output_dir, remove_stale_temporaries
from ila.errors import UserError

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(run_dir):` holds the directory's lock (or raises UserError if another process has it)."""

    def __init__(self, run_dir: str | Path, what: str = "run directory"):
        self.run_dir, self.what = Path(run_dir), what
        self._file = None
        self._created = False

    def acquire(self) -> "RunLock":
        self._created = not os.path.lexists(self.run_dir)
        path = self.run_dir / LOCK_NAME
        for _ in range(10):
            output_dir(self.run_dir, self.what)
            try:
                f = open(path, "a+")
            except FileNotFoundError:            # a holder that created the folder just removed it: again
                continue
            except OSError as e:
                raise UserError(f"cannot lock {self.what} {self.run_dir}: {os.strerror(e.errno or 0).lower()}") \
                    from None
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = _describe(f.read())
                f.close()
                raise UserError(f"{self.what} {self.run_dir} is in use by {holder}; wait for it to finish, stop "
                                f"it, or choose another --output") from None
            if _same_file(f, path):
                break
            f.close()                            # locked a lock file its holder removed on release: take the new one
        else:
            raise UserError(f"cannot lock {self.what} {self.run_dir}: its lock file keeps changing")
        self._file = f
        try:
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "since": round(time.time(), 3)}) + "\n")
            f.flush()
        except OSError:
            pass                                 # the lock holds without its note (a full disk is reported later)
        for stale in remove_stale_temporaries(self.run_dir):
            print(f"removed {stale.name}, left by an interrupted write", file=sys.stderr)
        return self

    def release(self) -> None:
        """Empty the lock file (or remove it, with the folder the lock created, when nothing else is there), then
        unlock. Safe to call more than once."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.seek(0)
            f.truncate()
            if self._created and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
                os.unlink(self.run_dir / LOCK_NAME)       # still locked: a waiting process sees it changed
                os.rmdir(self.run_dir)
        except OSError:
            pass
        finally:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            finally:
                f.close()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(f, path: Path) -> bool:
    try:
        a, b = os.fstat(f.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _describe(text: str) -> str:
    try:
        info = jsonsafe.loads(text, "lock file")
        pid = int(info["pid"])
        if pid <= 0:
            raise ValueError(pid)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
    except (ValueError, KeyError, TypeError, OverflowError, OSError, UserError):
        return "another process"
    return f"process {pid} on {'this' if _alive(pid) else 'another'} machine (since {since})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                              # there, run by someone else
    except (OverflowError, ValueError, OSError):
        return False
    return True
