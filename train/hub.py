"""Push an exported model folder (save_pretrained output) to the Hugging Face Hub in one commit.

Generic on purpose: works for any folder holding `config.json` + `model.safetensors` (plain transformers
models as well as remote-code models such as DBetaModel, whose .py files are uploaded like any other file).
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import logging
import lzma
import zipfile
import zlib
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors")
SHARDED_WEIGHTS_INDEX = "model.safetensors.index.json"  # accepted in place of model.safetensors
MODEL_CARD = "model_card.md"  # older exports' card: uploaded as README.md when the folder has no README.md
# Directories and file patterns that are never uploaded (caches, training state, VCS metadata).
SKIP_DIRS = frozenset({"__pycache__", "checkpoints", ".git", ".cache", ".ipynb_checkpoints"})
SKIP_FILES = ("*.pyc", "*.pyo", ".DS_Store")
# Pickle formats run code when loaded: whoever downloads the repo would be exposed, so a folder holding one (a
# Trainer checkpoint's optimizer.pt, training_args.bin, a pytorch_model.bin) is not uploaded at all.
PICKLE_FILES = ("*.pt", "*.pth", "*.bin", "*.pkl", "*.pickle", "*.ckpt", "*.joblib", "*.sav", "*.pkl.*", "*.pth.*",
                "*.pt.*", "*.pickle.*", "*.npz")  # compared in lower case
_COMPRESSED = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}
_ZLIB = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")  # joblib's zlib dumps


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then its JSON header ('{')."""
    return len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def is_pickle(path: Path) -> bool:
    """Whether a file is (or compresses, or zips as torch.save does) a pickle of protocol 2 or later, whatever its
    name: such a file starts with PROTO (0x80, then 2-5). Older text protocols are caught by name only."""
    def pickled(head: bytes) -> bool:
        return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5

    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if _is_safetensors(head, Path(path).stat().st_size):  # its header length may start with 0x80 0x02
            return False
        if pickled(head):
            return True
        if head.startswith(b"\x93NUMPY"):  # an object array is a pickle that np.load(allow_pickle=True) runs
            with open(path, "rb") as f:
                header = f.read(512)
                return b"'|O'" in header or b"'O'" in header
        for magic, opener in _COMPRESSED.items():
            if head.startswith(magic):
                with opener(path, "rb") as f:
                    return pickled(f.read(2))
        if head.startswith(_ZLIB):
            with open(path, "rb") as f:
                return pickled(zlib.decompressobj().decompress(f.read(4096), 2))
        if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):  # torch.save's zip: <name>/data.pkl
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") or name.endswith(".npy") for name in archive.namelist())
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError, zlib.error):
        return False  # unreadable as an archive: not a loadable pickle either
    return False


def non_finite_tensors(files: dict) -> list:
    """"FILE: TENSOR" for each floating-point tensor of the upload's safetensors files holding a NaN or infinity."""
    from train.checkpoints import safetensors_non_finite

    found = []
    for name, path in files.items():
        if not name.endswith(".safetensors"):
            continue
        try:
            found += [f"{name}: {key}" for key in safetensors_non_finite(path)]
        except Exception as err:  # noqa: BLE001 - safetensors' own error type: a damaged file
            raise RuntimeError(f"{path}: not a readable safetensors file ({err})") from None
    return found


def validate_export(folder: str | Path) -> Path:
    """Return the folder as a Path, or raise FileNotFoundError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Export folder not found or not a directory: {folder}")
    for name in REQUIRED_FILES:
        if (folder / name).is_file():
            continue
        if name == "model.safetensors" and (folder / SHARDED_WEIGHTS_INDEX).is_file():
            continue
        raise FileNotFoundError(
            f"Export folder {folder} is missing {name}; expected a save_pretrained() output "
            f"containing {' and '.join(REQUIRED_FILES)}."
        )
    if not (folder / "model.safetensors").is_file():  # sharded: every file the index names must be there
        import json

        index = folder / SHARDED_WEIGHTS_INDEX
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise FileNotFoundError(f"Export folder {folder}: {index.name} does not read as a weights index "
                                    f"({type(err).__name__}: {err})") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing or not shards:
            raise FileNotFoundError(
                f"Export folder {folder} is missing {len(missing)} of the {len(shards)} weight file(s) "
                f"{index.name} names: {', '.join(missing[:10]) or 'none named'}; the upload would not load."
            )
    return folder


def _skipped(rel: Path) -> bool:
    return any(part in SKIP_DIRS for part in rel.parts[:-1]) or any(
        fnmatch.fnmatch(rel.name, pat) for pat in SKIP_FILES
    )


def collect_files(folder: str | Path) -> dict[str, Path]:
    """Map path_in_repo -> local file for everything that should be uploaded.

    README.md (the card exports write) is uploaded as is; an older export's model_card.md becomes README.md
    when there is no README.md, and is left out when there is one (it would be a second, stale card).
    """
    folder = Path(folder)
    files: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if not _skipped(rel):
            files[rel.as_posix()] = path
    if MODEL_CARD in files:
        card = files.pop(MODEL_CARD)
        if "README.md" in files:
            logger.warning("%s has both README.md and %s; uploading README.md as the card", folder, MODEL_CARD)
        else:
            files["README.md"] = card
    return files


def push_export(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload `folder` to `repo_id` in a single commit and return the commit URL.

    The repo is created if needed. `endpoint` defaults to HF_ENDPOINT (read by huggingface_hub at import time).
    The local folder is only read, never modified. Any Hub/network failure is re-raised as a RuntimeError
    naming the repo and the endpoint, with the original exception chained.
    """
    folder = validate_export(folder)
    files = collect_files(folder)
    pickles = sorted(name for name, path in files.items()
                     if any(fnmatch.fnmatch(Path(name).name.lower(), p) for p in PICKLE_FILES) or is_pickle(path))
    if pickles:
        raise RuntimeError(f"Refusing to push {folder}: pickle file(s) {', '.join(pickles[:10])} would run code on "
                           "whoever loads them; push a save_pretrained() folder (safetensors weights) only.")
    damaged = non_finite_tensors(files)
    if damaged:
        raise RuntimeError(f"Refusing to push {folder}: NaN or infinite values in {', '.join(damaged[:10])}"
                           f"{' ...' if len(damaged) > 10 else ''}; whoever downloads it would get a model the "
                           "strict loader refuses, or wrong features.")
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{repo_id!r} at {api.endpoint}"
    if constants.is_offline_mode():
        raise RuntimeError(f"Cannot push {folder} to {where}: HF_HUB_OFFLINE is set; unset it to upload.")
    message = commit_message or f"Upload {folder.name} ({len(files)} files)"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, constants.DEFAULT_REVISION):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    except Exception as exc:  # HfHubHTTPError, network errors, invalid README metadata, ...
        raise RuntimeError(f"Failed to push {folder} to {where}: {type(exc).__name__}: {exc}") from exc
    logger.info("Pushed %d files from %s to %s: %s", len(files), folder, where, info.commit_url)
    return info.commit_url
