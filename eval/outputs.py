"""Where the evaluation commands write: FILE.json, with FILE.md (and plots, FILE.*.png) beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["check_json_output"]


def check_json_output(output) -> Optional[Path]:
    """`output` as a Path (None stays None); ValueError unless it ends in .json, since the files written beside it
    take its name with another suffix (an `--output x.md` would be overwritten by the Markdown table)."""
    if output is None:
        return None
    path = Path(output)
    if path.suffix.lower() != ".json":
        raise ValueError(f"output {path} must be a .json file: the Markdown table and plots are written beside it "
                         f"({path.with_suffix('.md').name}, ...)")
    return path
