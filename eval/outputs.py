"""Where the evaluation commands write, checked before any work: FILE.json with FILE.md (and plots, FILE.*.png)
beside it, never on top of what the run reads or of another of its outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

__all__ = ["check_json_output", "check_outputs", "record_files", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # what the plots can be saved as


def record_files(record) -> list:
    """The files a --record argument is read from: the path itself and, for a WFDB record named with or without
    a suffix, its header and signal files."""
    path = Path(str(record))
    stem = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat", ".mat") else path
    return [path] + [stem.with_name(stem.name + suffix) for suffix in (".hea", ".dat", ".mat")]


def check_outputs(outputs: Dict[str, Optional[object]], reads: Iterable = ()) -> None:
    """ValueError unless the outputs ({what: path}) are distinct files and none would replace a file the run reads:
    one of `reads`, or a file already inside a folder of `reads` (the model folder, the data root). New files in
    those folders are allowed; a read that is no path (None, a loaded model) has no file to protect."""
    seen: Dict[Path, str] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ValueError(f"{what} and {seen[resolved]} are the same file ({path}): one would overwrite the other")
        seen[resolved] = what
        for source in reads:
            if not isinstance(source, (str, os.PathLike)):
                continue
            read = Path(source).resolve()
            if resolved == read or (read.is_dir() and read in resolved.parents and resolved.exists()):
                inside = "" if resolved == read else f"a file in {source}, "
                raise ValueError(f"{what} {path} would replace {inside}{'which' if inside else 'what'} this run "
                                 "reads; write it elsewhere")


def check_json_output(output, reads: Sequence = ()) -> Optional[Path]:
    """`output` as a Path (None stays None); ValueError unless it ends in .json (the files written beside it take
    its name with another suffix: an `--output x.md` would be overwritten by the Markdown table) and neither it nor
    its table would replace what the run reads (`check_outputs`)."""
    if output is None:
        return None
    path = Path(output)
    if path.suffix.lower() != ".json":
        raise ValueError(f"output {path} must be a .json file: the Markdown table and plots are written beside it "
                         f"({path.with_suffix('.md').name}, ...)")
    check_outputs({"the output": path, "its Markdown table": path.with_suffix(".md")}, reads)
    return path
