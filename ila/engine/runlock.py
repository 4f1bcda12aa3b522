"""One writer per run directory: an advisory lock held for as long as a process writes there.

`ila train` (its main process) takes `RUN_DIR/.lock` before it writes anything. A second process that
asks for the same directory is refused with a line naming the holder (pid, host, command, since when).
The lock is an `fcntl.flock` on an open file, so the kernel drops it when the holder exits for any
reason, `kill -9` included: a stale lock file never blocks a later run. Once the lock is held, the
temporary files of writes that an earlier, killed process left behind are removed.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ila.atomic import output_dir, remove_stale_temporaries
from ila.errors import UserError

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(run_dir):` holds the directory's lock (or raises UserError if another process has it)."""

    def __init__(self, run_dir: str | Path, what: str = "run directory"):
        self.run_dir, self.what = Path(run_dir), what
        self._file = None

    def acquire(self) -> "RunLock":
        output_dir(self.run_dir, self.what)
        path = self.run_dir / LOCK_NAME
        try:
            f = open(path, "a+")
        except OSError as e:
            raise UserError(f"cannot lock {self.what} {self.run_dir}: {os.strerror(e.errno or 0).lower()}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _describe(f.read())
            f.close()
            raise UserError(f"{self.what} {self.run_dir} is in use by {holder}; wait for it to finish, stop it, "
                            f"or choose another --output") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                            "command": " ".join(sys.argv)[:300]}) + "\n")
        f.flush()
        self._file = f
        for stale in remove_stale_temporaries(self.run_dir):
            print(f"removed {stale.name}, left by an interrupted write", file=sys.stderr)
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"process {int(info['pid'])} on {info['host']} (since {since}: {str(info['command'])[:120]})"
    except (ValueError, KeyError, TypeError):
        return "another process"
