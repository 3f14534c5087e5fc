"""Stopping a run cleanly: SIGINT/SIGTERM become a flag checked at step boundaries, and a worker started by a
launcher follows the launcher when it dies."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Optional

logger = logging.getLogger("train.signals")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads after each optimizer step; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: finishing the current step, then saving a checkpoint and exiting",
                       signal.Signals(signum).name)

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def launched_by_a_launcher() -> bool:
    """True under `accelerate launch` / torchrun, which set these variables for their workers."""
    return any(name in os.environ for name in ("LOCAL_RANK", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU"))


def follow_parent_death() -> None:
    """Ask Linux to send SIGTERM to this process when its parent (the launcher) dies.

    `accelerate launch` does not forward SIGTERM to a worker it started (it dies with 143 and the worker trains on,
    orphaned). With this, the worker receives SIGTERM when that happens, saves a checkpoint and exits. Elsewhere
    (macOS, Windows) it is a no-op; the run lock still keeps a second run out of the folder.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): a killed launcher will not stop this worker",
                           ctypes.get_errno())
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def processes_requested_from_launcher() -> int | None:
    """The `--num_processes N` of the `accelerate launch` command that started this worker (Linux), else None.

    Accelerate 1.15 routes `--cpu` to its single-process launcher whatever --num_processes says; the worker cannot
    learn the request any other way than from its parent's command line."""
    try:
        argv = open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not any(a.endswith("accelerate") or "accelerate.commands" in a for a in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                return int(argv[i + 1])
            if arg.startswith(flag + "=") and arg.split("=", 1)[1].isdigit():
                return int(arg.split("=", 1)[1])
    return None


class _TolerantStream:
    """A text stream whose writes are dropped once its reader has gone (EPIPE), instead of raising."""

    def __init__(self, stream):
        self._stream, self._closed = stream, False

    def write(self, text):
        if not self._closed:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ValueError, OSError):
                self._closed = True
        return len(text)

    def flush(self):
        if not self._closed:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._closed = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def tolerate_closed_output() -> None:
    """A worker's stdout and stderr are pipes to the launcher; when the launcher dies they have no reader, and the
    next progress-bar or log line would raise BrokenPipeError in the middle of the step that should end with a
    checkpoint. From here on such writes are dropped instead."""
    import logging

    sys.stdout, sys.stderr = _TolerantStream(sys.stdout), _TolerantStream(sys.stderr)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout._stream, sys.stderr._stream):
            handler.setStream(sys.stdout if handler.stream is sys.stdout._stream else sys.stderr)
