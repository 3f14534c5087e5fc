"""One output folder belongs to one run at a time.

The lock is an advisory `fcntl.flock` on OUTPUT/run.lock, held for the life of the process that takes it. The kernel
releases it when that process ends in any way (kill -9 included), so a lock left by a dead run is simply taken
over; the file's content (pid, host, command, start time) only serves the error message. A flock belongs to the
open file, which forked children (DataLoader workers, process pools) share: each child closes its copy at once,
or a run killed alone would stay locked until its workers noticed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = "run.lock"
_HELD = []  # the lock files this process holds


def _close_in_child() -> None:
    for f in _HELD:
        f.close()  # the child's descriptor only: the parent's still holds the lock
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderInUseError(RuntimeError):
    pass


class RunLock:
    def __init__(self, folder):
        self.path = Path(folder) / LOCK_FILE
        self._file = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise FolderInUseError(f"{self.path.parent} is in use by another run ({holder}); wait for it to end, "
                                   "stop it (SIGTERM saves a checkpoint), or choose another --output-dir") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        f.flush()
        self._file = f
        _HELD.append(f)
        return self

    def release(self) -> None:
        if self._file is not None:
            if self._file in _HELD:
                _HELD.remove(self._file)
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
