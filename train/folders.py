"""Publishing a file or a folder whole: written beside its destination, then renamed into place, so a run
stopped at any moment leaves the old one or the new one, never part of one."""

from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

__all__ = ["write_file", "write_text", "write_json", "write_result", "retract_result", "published_folder",
           "staging_folder", "replace_folder", "fsync_tree"]


def write_file(path, write) -> None:
    """`write(tmp)` writes the file to a hidden temporary beside `path` (same suffix, so a plotting library picks
    the same format), which then replaces `path`."""
    path = Path(path)
    # one temporary per process: two runs publishing the same file (a shared feature cache) must not rename
    # each other's half-written file
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        fsync_tree(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_tree(path) -> None:
    """Flush a file, or every file below a folder, to the disk before a rename publishes it: after a power cut the
    rename may be on the disk while the data the page cache held is not, leaving a published file empty."""
    path = Path(path)
    for item in (path.rglob("*") if path.is_dir() else [path]):
        if item.is_file() and not item.is_symlink():
            with open(item, "rb") as f:
                os.fsync(f.fileno())


def write_text(path, text: str) -> None:
    write_file(path, lambda tmp: tmp.write_text(text))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_result(index, text: str, companions=(), retract_first: bool = True) -> None:
    """A result set: `companions` [(path, text)] (a Markdown table of the result) and then its index file `index`
    (the JSON readers trust, naming the others). The old index is removed before anything of the set is written
    (`retract_first`; callers that write further companions themselves remove it before those), so a run stopped
    midway leaves no index beside files of another run: without an index the set is incomplete."""
    index = Path(index)
    if retract_first:
        retract_result(index)
    for path, companion in companions:
        write_text(path, companion)
    write_text(index, text)


def retract_result(index) -> None:
    """Remove a published result set: the files its index lists under "outputs" (only files of that name beside
    it, FILE.*: an edited index cannot point anywhere else), then the index. A new run that writes fewer
    companions (no plots, no scores) would otherwise leave the old run's beside its own index. Removed in that
    order, a stop midway leaves the old index naming missing files, which the next run retracts again."""
    index = Path(index)
    try:
        listed = json.loads(index.read_text()).get("outputs") or {}
        values = list(listed.values()) if isinstance(listed, dict) else []
    except (OSError, ValueError, AttributeError):
        values = []
    names = [Path(v).name for value in values for v in (value if isinstance(value, list) else [value])
             if isinstance(v, str)]
    for name in names:
        if name.startswith(f"{index.stem}.") and name != index.name:
            (index.parent / name).unlink(missing_ok=True)
    index.unlink(missing_ok=True)


def _real(out) -> Path:
    """A symlinked destination is published where the link points: the link stays, the folder it names changes."""
    out = Path(out)
    return out.resolve() if out.is_symlink() else Path(os.path.abspath(out))  # "." has no name to stage beside


@contextmanager
def published_folder(out):
    """Yields an empty staging folder beside `out`; when the block ends without an error it replaces `out` whole
    (`replace_folder`), else it is removed and `out` stays as it was. One writer at a time per folder: an advisory
    flock on a hidden `.NAME.lock` beside it makes a second run exporting to the same folder wait (saying so on
    stderr), where both
    shared one staging folder and each removed the other's (two runs published one model's weights under the
    other's card, helper). The kernel drops the lock when its holder ends in any way."""
    import fcntl

    out = _real(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say why the run stands still rather than seem to hang
            print(f"waiting for another process writing {out} to finish (it holds {lock.name})", file=sys.stderr,
                  flush=True)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        staging = staging_folder(out)
        try:
            yield staging
            replace_folder(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def staging_folder(out: Path) -> Path:
    """An empty `.NAME.partial` beside `out` (what a stopped run left there is removed; a folder a stop between
    `replace_folder`'s two renames left as `.NAME.old` is put back first)."""
    out = _real(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not out.exists():
        os.rename(old, out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def replace_folder(staging: Path, out: Path) -> None:
    """Move `staging` to `out`. An existing `out` is kept (as `.NAME.old`) until the new folder is in place, so a
    run stopped at any point leaves the old folder (for the moment between the renames, as `.NAME.old`, which the
    next `staging_folder` puts back) or the new one, never a mix."""
    out = _real(out)
    fsync_tree(staging)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)
