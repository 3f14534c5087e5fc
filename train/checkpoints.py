"""Pretraining checkpoints: written so a kill at any instruction leaves a resumable run, read without executing
anything from the files.

A checkpoint is a folder OUTPUT/checkpoints/checkpoint_N:
    model.safetensors, optimizer.bin, random_states_R.pkl   accelerator.save_state (model, optimizer, RNG states)
    scheduler.json, train_state.json                          JSON: the LR schedule and the step / data position
    run_config.json, config.json, tokenizer/                  what --export-only needs

Safety: nothing is registered with `accelerator.register_for_checkpointing`, whose `custom_checkpoint_*.pkl` files
accelerate unpickles with `weights_only=False`; the scheduler and train state travel as JSON instead. Accelerate
reads the optimizer and the RNG states with `torch.load(weights_only=True)` and the model from safetensors, so a
planted pickle is refused, never run.

Atomicity: a checkpoint is written to `checkpoint_N.partial`, completed with train_state.json, then renamed; old
checkpoints are deleted only after the new one is complete. A folder without train_state.json is never resumed
from, and leftovers of a killed save are removed by the next save.

Integrity: train_state.json records the SHA-256 of every other file of the checkpoint; a file that differs (bytes
flipped on disk or in a copy, which stay finite weights and load without complaint) makes the checkpoint unusable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from train.folders import fsync_tree
from train.settings import ConfigError

logger = logging.getLogger("train.checkpoints")

STATE_FILE = "train_state.json"
SCHEDULER_FILE = "scheduler.json"
RUN_CONFIG_FILE = "run_config.json"
_NAME = re.compile(r"checkpoint_([0-9]+)")


class TrainState:
    """The step and data position and the last figures: what a resume needs besides weights and optimizer."""

    def __init__(self):
        self.step = 0  # optimizer steps done
        self.micro_batches = 0  # micro-batches consumed by EACH process (the sampler's position)
        self.samples = 0  # rows seen, all processes
        self.bad_steps = 0  # optimizer steps skipped for a non-finite loss or gradient
        self.train_losses: dict = {}
        self.validation: dict = {}
        self.history: list = []  # {"step", "train" | "validation": {...}} at each log / evaluation
        self.train_rows: Optional[int] = None  # the training split's size: a resume must see the same data
        self.n3s_table: Optional[dict] = None  # its N3S table (train.pretrain.n3s_identity): a resume needs the same
        # the training losses summed since the last log ({"sum": [...], "steps": n}, mean over processes): a resume
        # between two logs logs the same means as an uninterrupted run. None in checkpoints older than it.
        self.loss_window: Optional[dict] = None
        # what tells the run's inputs from others at the same paths (train.pretrain): the tokenizer's content hash,
        # the dataset's split fingerprints and sizes, and the resolved folder of each path setting. None in older
        # checkpoints.
        self.tokenizer: Optional[str] = None
        self.data_identity: Optional[dict] = None
        self.paths: Optional[dict] = None

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_batches": self.micro_batches, "samples": self.samples,
                "bad_steps": self.bad_steps, "train_losses": dict(self.train_losses),
                "validation": dict(self.validation), "history": list(self.history), "train_rows": self.train_rows,
                "n3s_table": self.n3s_table, "loss_window": self.loss_window, "tokenizer": self.tokenizer,
                "data_identity": self.data_identity, "paths": self.paths}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.micro_batches = int(state["micro_batches"])
        self.samples = int(state["samples"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.train_losses = dict(state.get("train_losses", {}))
        self.validation = dict(state.get("validation", {}))
        self.history = list(state.get("history", []))
        self.train_rows = state.get("train_rows")
        self.n3s_table = state.get("n3s_table")
        self.loss_window = state.get("loss_window")
        self.tokenizer = state.get("tokenizer")
        self.data_identity = state.get("data_identity")
        self.paths = state.get("paths")


def checkpoint_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list:
    """Complete-looking checkpoint_N folders (no `.partial` suffix), newest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)), reverse=True)


def _next_number(output_dir) -> int:
    folder = checkpoint_dir(output_dir)
    numbers = [int(m.group(1)) for p in folder.glob("checkpoint_*") if (m := re.match(r"checkpoint_([0-9]+)", p.name))]
    return max(numbers, default=-1) + 1


def non_finite_tensors(named_tensors) -> list:
    """Names of the tensors holding a NaN or an infinity."""
    return [name for name, t in named_tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def safetensors_non_finite(path) -> list:
    """Names of the tensors of a safetensors file holding a NaN or an infinity (read one at a time); safetensors'
    own error for a file that does not read."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as opened:
        return non_finite_tensors((key, opened.get_tensor(key)) for key in opened.keys())


def verify_checkpoint(path: Path) -> None:
    """Raise RuntimeError naming the file if the checkpoint is incomplete, a file does not read back, or the weights
    or optimizer state hold non-finite values."""
    for name in (STATE_FILE, SCHEDULER_FILE, RUN_CONFIG_FILE, "model.safetensors"):
        if not (path / name).is_file():
            raise RuntimeError(f"{path / name} is missing (the save did not finish)")
    saved = _read(path / STATE_FILE, lambda f: json.loads(f.read_text()))
    _read(path / STATE_FILE, lambda f: TrainState().load_state_dict(saved))
    for name in (SCHEDULER_FILE, RUN_CONFIG_FILE):
        _read(path / name, lambda f: json.loads(f.read_text()))
    bad = _read(path / "model.safetensors", safetensors_non_finite)
    if bad:
        raise RuntimeError(f"{path / 'model.safetensors'} holds non-finite values in {len(bad)} tensor(s): "
                           f"{', '.join(bad[:5])}")
    for optimizer in sorted(path.glob("optimizer*.bin")):  # a NaN moment turns the weights NaN at the first step
        bad = _read(optimizer, lambda f: non_finite_tensors(optimizer_state_tensors(
            torch.load(f, map_location="cpu", weights_only=True))))
        if bad:
            raise RuntimeError(f"{optimizer} holds non-finite values in {len(bad)} tensor(s): {', '.join(bad[:5])}")
    check_digests(path, saved.get("files"))  # last: the checks above name what is wrong more precisely


def file_digests(folder: Path, skip=(STATE_FILE,)) -> dict:
    """{relative path: SHA-256} of every file below `folder` but those named in `skip`."""
    from dbeta.onnx_dbeta import file_sha256

    return {path.relative_to(folder).as_posix(): file_sha256(path)
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip)}


def check_digests(path: Path, recorded, record_file: str = STATE_FILE) -> None:
    """RuntimeError naming the first file below `path` whose SHA-256 differs from `recorded` (None: nothing recorded,
    as in checkpoints older than the digests)."""
    if recorded is None:  # a checkpoint from before digests were recorded
        return
    if not isinstance(recorded, dict):
        raise RuntimeError(f"{path / record_file} is damaged (its file digests are not a table)")
    found = file_digests(path, skip=(record_file,))
    for name, digest in recorded.items():  # a file since removed is judged by whoever needs it (an export does
        if name in found and found[name] != digest:  # without the optimizer state, a resume does not)
            raise RuntimeError(f"{path / name} is damaged: its SHA-256 differs from the one recorded when it was "
                               "saved (bytes changed on disk or in a copy)")


def _read(path: Path, reader):
    """reader(path), any error (json, safetensors, torch each raise their own) as a RuntimeError naming the file."""
    try:
        return reader(path)
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(f"{path} is damaged ({type(err).__name__}: {str(err)[:200]})") from None


def optimizer_state_tensors(saved: dict):
    """(name, tensor) for each tensor of an optimizer state_dict: state/<param>/<key>."""
    for param, entries in saved.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                yield f"state/{param}/{key}", value


def resume_from_checkpoint(accelerator, output_dir, state: TrainState, scheduler, check=None) -> Optional[Path]:
    """Load the newest checkpoint that verifies and loads, warning about each one skipped. Returns its path.

    `check(path, saved_state)` runs on each checkpoint that verifies, before its state is loaded: an error it raises
    ends the resume. A run resumed under other settings is refused there, naming them, where loading first failed
    (a frozen text encoder's optimizer has other parameter groups) and ended as "no usable checkpoint"."""
    from accelerate.utils import broadcast_object_list

    shared = [[str(p) for p in list_checkpoints(output_dir)]]
    broadcast_object_list(shared)  # every process walks the same list
    for path in map(Path, shared[0]):
        try:
            verify_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - any damage means: try the previous one
            _skip(path, err)
            continue
        saved = TrainState()
        saved.load_state_dict(json.loads((path / STATE_FILE).read_text()))  # verify_checkpoint read it
        if check is not None:
            check(path, saved)
        try:
            accelerator.load_state(str(path))
            scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text()))
        except Exception as err:  # noqa: BLE001
            _skip(path, err)
            continue
        state.load_state_dict(json.loads((path / STATE_FILE).read_text()))
        return path
    if shared[0]:  # nothing to continue: like a bad setting, nothing was trained (exit 2)
        raise ConfigError(f"no usable checkpoint in {checkpoint_dir(output_dir)} (each one was skipped: see the "
                          "warnings above); restore one, or start a new run in another --output-dir")
    return None


def _skip(path: Path, err: Exception) -> None:
    logger.warning("checkpoint %s is unusable (%s: %s); falling back to the previous checkpoint",
                   path, type(err).__name__, str(err)[:300])


def save_checkpoint(accelerator, model, scheduler, state: TrainState, settings: dict, total_limit: int,
                    model_config=None, tokenizer=None) -> Path:
    """Write checkpoint_N atomically (see the module docstring), then delete the oldest beyond `total_limit`."""
    out = Path(settings["output_dir"]).resolve()
    bad = non_finite_tensors(accelerator.unwrap_model(model).named_parameters())
    if bad:  # the loop stops before this can happen; never let a poisoned checkpoint replace a good one
        raise RuntimeError(f"refusing to checkpoint non-finite weights ({', '.join(bad[:5])})")
    accelerator.wait_for_everyone()
    number = [_next_number(out) if accelerator.is_main_process else 0]
    from accelerate.utils import broadcast_object_list

    broadcast_object_list(number)
    final = checkpoint_dir(out) / f"checkpoint_{number[0]}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        for leftover in checkpoint_dir(out).glob("checkpoint_*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process's files written before the main one records their digests
    if accelerator.is_main_process:
        (partial / RUN_CONFIG_FILE).write_text(json.dumps(settings, indent=2))
        (partial / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict()))
        if model_config is not None:
            model_config.to_json_file(str(partial / "config.json"))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial / "tokenizer"))
        (partial / STATE_FILE).write_text(json.dumps(dict(
            state.state_dict(), world_size=accelerator.num_processes,
            saved_at=datetime.now(timezone.utc).isoformat(), files=file_digests(partial)), indent=2))
        fsync_tree(partial)
        os.replace(partial, final)
        for old in list_checkpoints(out)[total_limit:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("saved checkpoint %s (step %d)", final, state.step)
    return final
