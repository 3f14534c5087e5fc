"""Fine-tune D-BETA (`DBetaForECGClassification`: the ECG encoder + one linear layer) on a downstream dataset
with `transformers.Trainer`.

    python -m train.finetune --model DIR_OR_REPO --dataset cpsc2018 --data-root /data/cpsc2018 \
        --output-dir runs/ft-cpsc [--task ...] [--epochs 10] [--lr 1e-4] [--batch-size 16] \
        [--gradient-accumulation-steps 1] [--bf16] [--class-weights auto|none] [--early-stopping-patience 3] \
        [--resume] [--push-to-hub USER/REPO]
    python -m train.finetune --config train/configs/finetune_ptbxl.yaml --model M --data-root D --output-dir O \
        [--set optim.lr=3e-4]
    python -m train.finetune --print-config [--config ...]           # every setting, its default and what it does

- Settings: train/finetune_settings.py (`FinetuneSettings`, the machinery of train/settings.py that pretraining
  uses): defaults < `--config` file < `--set key=value` < flags; every value is checked, and transformers'
  TrainingArguments built, before any data or model is read (a bad setting: a message and exit code 2).
  `run(settings)` is the entry point as a function; `main(argv)` is the command line.
- Data: eval.datasets.load_downstream(dataset, root, split, task) for train / val / test. Every record goes
  through the model's own feature extractor inside the Dataset's __getitem__ (`ECGClassificationDataset`), so
  the Trainer's DataLoader workers (`--num-workers`) run it in parallel. Where the dataset names a protocol
  length (CPSC2018) the record is cut to it before the processor pads (eval.features.condition_item, as in
  the linear probe and zero-shot evaluation).
- Loss: multi-label BCE with logits (config.problem_type = "multi_label_classification"). `--class-weights
  auto` sets each class's positive weight to neg/pos over the train labels, clipped to
  [1/--max-class-weight, --max-class-weight] (1 for a class with no positive); "none" weighs all equally.
- Gradient accumulation averages micro-batch losses: the model declares `accepts_loss_kwargs = False` and the
  Trainer is told the loss is a per-batch mean (`loss_is_scaled_for_ga = False`), so it divides by the number
  of accumulation steps; the logged training loss does not grow with `--gradient-accumulation-steps`.
- Evaluation and checkpoints every epoch; the best checkpoint by val macro AUROC is reloaded at the end
  (compute_metrics is eval.metrics.make_compute_metrics: the same point_metrics as the test report's
  eval.metrics.auc_report, sklearn roc_auc_score / average_precision_score per class); early stopping after
  `--early-stopping-patience` epochs without improvement. `--resume` continues from the newest checkpoint in
  the output folder (weights, optimizer, scheduler, RNG and epoch).
- At the end: val and test metrics (test macro AUROC and AUPRC with bootstrap CIs) in OUTPUT_DIR/results.json,
  and the best model exported with train.export.export_model to OUTPUT_DIR/export (id2label / label2id and
  problem_type in its config; loads with AutoModelForSequenceClassification.from_pretrained(...,
  trust_remote_code=True)); `--push-to-hub` uploads that folder with train.hub.push_export.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from dbeta.configuration_dbeta import DBetaConfig
from eval.features import (RecordError, check_skipped_records, condition_item, load_processor,
                           resolve_protocol_num_samples, scan_records)
from eval.metrics import NonFiniteScoresError, auc_report, make_compute_metrics
from dbeta.modeling_dbeta import DBetaForECGClassification
from dbeta.processing_dbeta import DBetaFeatureExtractor
from train.checkpoints import (check_digests, file_digests, non_finite_tensors, optimizer_state_tensors,
                               safetensors_non_finite)
from train.export import ExportTargetError, check_export_target, check_run_folder, export_model, record_model_input
from train.finetune_settings import FinetuneSettings
from train.folders import write_json
from train.hub import push_export
from train.run_lock import FolderInUseError, RunLock
from train.settings import ConfigError, add_settings_arguments, read_config_file


logger = logging.getLogger("dbeta.finetune")

HEAD_PREFIXES = ("classifier.",)
RESULTS_FILE = "results.json"
SETTINGS_FILE = "finetune_settings.json"  # the run's settings, written at its start: a --resume is checked against it
# What a run is: a --resume under other values would load weights of another shape, or train on other data.
# What a --resume may not change: the run's model and data, its data order (seed, batch size), and what Trainer
# restores from the optimizer's saved state over the new settings (its learning rate and weight decay: a new --lr
# was ignored while results.json recorded it).
RUN_IDENTITY = ("model.name_or_path", "data.dataset", "data.task", "data.root", "optim.lr", "optim.weight_decay",
                "seed", "train.per_device_batch_size", "train.gradient_accumulation_steps",
                # and what shapes the loss or the schedule: results.json would record the new values for a run
                # trained under both (more epochs resumed is two schedules, not a longer run)
                "model.class_weights", "model.max_class_weight", "model.classifier_dropout", "optim.warmup_steps",
                "data.random_crop", "data.protocol_num_samples", "train.epochs", "train.max_steps",
                "train.early_stopping_patience",
                # the arithmetic: results.json's hyperparameters.bf16 described the whole of a run half in fp32
                "train.mixed_precision")
DATA_FILE = "data_fingerprint.json"  # each split's records and labels at the run's start: a --resume must match
EXPORT_DIR = "export"
EXIT_CONFIG = 2  # also records that cannot be used (named; nothing trained), as the eval CLIs
EXIT_PUSH_FAILED = 4  # as pretraining: trained, evaluated and exported; only the upload failed
EXIT_NON_FINITE = 5  # as pretraining


class TrainingDiverged(RuntimeError):
    """The model's outputs became NaN or infinite: nothing meaningful to evaluate or export."""

FLAGS = {  # argparse dest -> setting; every flag of the command line before the settings system, same meaning
    "model": "model.name_or_path", "dataset": "data.dataset", "data_root": "data.root", "task": "data.task",
    "output_dir": "output_dir", "export_dir": "export_dir", "seed": "seed",
    "epochs": "train.epochs", "max_steps": "train.max_steps", "batch_size": "train.per_device_batch_size",
    "eval_batch_size": "train.eval_batch_size", "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "mixed_precision": "train.mixed_precision", "early_stopping_patience": "train.early_stopping_patience",
    "save_total_limit": "train.checkpoint_total_limit", "logging_steps": "train.log_every",
    "report_to": "train.log_with", "progress": "train.progress",
    "lr": "optim.lr", "weight_decay": "optim.weight_decay", "warmup_steps": "optim.warmup_steps",
    "class_weights": "model.class_weights", "max_class_weight": "model.max_class_weight",
    "classifier_dropout": "model.classifier_dropout",
    "random_crop": "data.random_crop", "protocol_num_samples": "data.protocol_num_samples",
    "on_error": "data.on_error",
    "num_workers": "data.num_workers", "bootstrap": "eval.bootstrap",
    "push_to_hub": "hub.push_to_hub", "private": "hub.private",
}


# ------------------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------------------


class ECGClassificationDataset(torch.utils.data.Dataset):
    """A downstream dataset for Trainer: each item is one record run through the model's feature extractor
    (in the DataLoader worker that fetches it) with its multi-hot labels.

    Items: {"ecg_values": float32 [leads, samples], "labels": float32 [classes]}. `protocol_num_samples` cuts the
    record first (eval.features.condition_item); `random_crop=True` takes a random window of records longer
    than the processor's length instead of the first one (training augmentation; unseeded)."""

    def __init__(self, dataset, feature_extractor: DBetaFeatureExtractor, protocol_num_samples: Optional[int] = None,
                 random_crop: bool = False, indices: Optional[Sequence[int]] = None):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.protocol_num_samples = protocol_num_samples
        self.feature_extractor = random_crops(feature_extractor) if random_crop else feature_extractor

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[self.indices[int(index)]]
        x = condition_item(self.feature_extractor, item, self.protocol_num_samples)
        return {"ecg_values": torch.from_numpy(np.ascontiguousarray(x)),
                "labels": torch.as_tensor(item["labels"], dtype=torch.float32)}


def auto_class_weights(labels: np.ndarray, max_weight: float = 50.0) -> List[float]:
    """Per-class positive weights neg/pos from a [n, classes] multi-hot matrix, clipped to
    [1/max_weight, max_weight]; 1.0 for a class without positives (its positive term never occurs)."""
    y = np.asarray(labels) > 0.5
    pos = y.sum(axis=0).astype(np.float64)
    neg = y.shape[0] - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return [float(w) for w in np.clip(ratio, 1.0 / max_weight, max_weight)]


def load_classifier(model: str, class_names: Sequence[str], class_weights: Optional[List[float]] = None,
                    classifier_dropout: Optional[float] = None) -> DBetaForECGClassification:
    """DBetaForECGClassification from `model` with a multi-label head for `class_names`.

    The ECG encoder's weights must all be in the checkpoint (a missing or misshapen one is an error); the
    classifier is new unless the checkpoint has one for the same classes (a fine-tuned export; its rows are put in
    this order)."""
    config = DBetaConfig.from_pretrained(model)
    config.num_labels = len(class_names)
    config.id2label = {i: str(c) for i, c in enumerate(class_names)}
    config.label2id = {str(c): i for i, c in enumerate(class_names)}
    config.problem_type = "multi_label_classification"
    config.class_weights = list(class_weights) if class_weights is not None else None
    if classifier_dropout is not None:
        config.classifier_dropout = classifier_dropout
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head's "newly initialized" report is expected
    try:
        clf, info = DBetaForECGClassification.from_pretrained(
            model, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    bad = [k for k in info.get("missing_keys", []) if not k.startswith(HEAD_PREFIXES)]
    bad += [str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys", [])
            if not str(k[0] if isinstance(k, (tuple, list)) else k).startswith(HEAD_PREFIXES)]
    if bad:
        raise ValueError(f"{model}: {len(bad)} ECG-encoder weight(s) missing or misshapen in the checkpoint "
                         f"({', '.join(sorted(bad)[:5])}{' ...' if len(bad) > 5 else ''})")
    return clf  # a saved head's rows follow their class names (DBetaForECGClassification.from_pretrained)


def checkpoint_folders(output_dir: Path) -> List[Path]:
    """Trainer's checkpoint-N folders in `output_dir`, oldest first (complete or not)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(p.name.split("-", 1)[1]), p) for p in folder.iterdir()
             if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return [p for _, p in sorted(found)]


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why a Trainer checkpoint cannot be resumed from, or None: no readable trainer_state.json (Trainer writes it
    last, so a stop while saving leaves none) or one without its step count, weights that do not read or hold NaN/inf (resumed, they ended the
    run as "diverged, lower the LR"), a missing optimizer or scheduler file (copied without them: Trainer would
    restart both, silently), a damaged optimizer, scheduler or RNG file (torch zip archives), or an optimizer or
    scheduler file that does not load as plain weights (a pickle of objects: refused, never run)."""
    import zipfile

    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json: the run stopped while saving it"
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:  # Trainer would count from 0 again
        return "trainer_state.json has no step count (global_step)"
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        return f"no readable config.json ({type(err).__name__})"
    weights = path / "model.safetensors"
    try:
        bad = safetensors_non_finite(weights)
    except Exception as err:  # noqa: BLE001 - missing, truncated or not safetensors: named below
        return f"{weights.name} does not read ({type(err).__name__}: {err})"
    if bad:
        return f"{weights.name} holds NaN or infinite values in {bad[0]}"
    for name in ("optimizer.pt", "scheduler.pt"):  # without them Trainer starts a new optimizer and LR schedule
        if not (path / name).is_file():
            return f"no {name}: resumed, the optimizer and the learning-rate schedule would start over"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        if (path / name).exists():
            try:
                with zipfile.ZipFile(path / name) as archive:
                    if archive.testzip() is not None:
                        return f"{name} is damaged"
            except (OSError, zipfile.BadZipFile) as err:
                return f"{name} is damaged ({err})"
    for name in ("optimizer.pt", "scheduler.pt"):  # as Trainer reads them: weights only, never code
        try:
            saved = torch.load(path / name, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - UnpicklingError and others: named, never run
            return f"{name} does not load as plain weights ({type(err).__name__})"
        # a NaN moment turns the weights NaN at the first step, which then reads as a diverging run
        bad = non_finite_tensors(optimizer_state_tensors(saved)) if name == "optimizer.pt" else []
        if bad:
            return f"{name} holds NaN or infinite values in {', '.join(bad[:3])}"
    digests = path / DIGESTS_FILE  # none: saved before digests were recorded, or stopped before recording them
    try:
        check_digests(path, json.loads(digests.read_text()) if digests.exists() else None, DIGESTS_FILE)
    except (OSError, ValueError) as err:
        return f"{DIGESTS_FILE} does not read ({type(err).__name__})"
    except RuntimeError as err:
        return str(err).replace(f"{path}/", "")
    return None


def find_checkpoint(output_dir: Path) -> Optional[str]:
    """The newest checkpoint that can be resumed from (`checkpoint_problem`); a newer one that cannot is skipped
    with a warning saying why, where transformers' own choice (the highest number) would fail every --resume."""
    for path in reversed(checkpoint_folders(output_dir)):
        problem = checkpoint_problem(path)
        if problem:
            logger.warning("%s cannot be resumed from (%s); resuming from an earlier checkpoint", path, problem)
            continue
        return str(path)
    return None


def build_training_args(s: FinetuneSettings):
    """The Trainer's arguments from the settings; what TrainingArguments (and the report_to integrations) refuse
    is a ConfigError, raised before any data or model is read."""
    from transformers import TrainingArguments
    from transformers.integrations import get_reporting_integration_callbacks

    t = s.train
    try:
        get_reporting_integration_callbacks(t.log_with)
        return TrainingArguments(
            output_dir=str(s.output_dir),
            num_train_epochs=t.epochs,
            max_steps=t.max_steps,
            learning_rate=s.optim.lr,
            weight_decay=s.optim.weight_decay,
            warmup_steps=s.optim.warmup_steps,
            per_device_train_batch_size=t.per_device_batch_size,
            per_device_eval_batch_size=t.eval_batch_size or t.per_device_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            bf16=t.mixed_precision == "bf16",
            use_cpu=not torch.cuda.is_available(),  # bf16 on a CPU-only machine needs use_cpu
            eval_strategy="epoch",
            save_strategy="epoch",
            logging_strategy="steps",
            logging_steps=t.log_every,
            load_best_model_at_end=True,
            # early stopping's patience count and stop decision travel in the checkpoint: without them a run stopped
            # early, or killed mid-run, trained on when resumed
            restore_callback_states_from_checkpoint=True,
            metric_for_best_model="macro_auc",
            greater_is_better=True,
            save_total_limit=t.checkpoint_total_limit,
            dataloader_num_workers=s.data.num_workers,
            dataloader_pin_memory=torch.cuda.is_available(),
            remove_unused_columns=False,  # items are dicts of tensors, every key is a forward argument
            label_names=["labels"],
            report_to=list(t.log_with),
            seed=s.seed,
            disable_tqdm=not t.progress,
        )
    except ValueError as err:
        raise ConfigError(f"transformers.TrainingArguments refuses these settings: {err}") from None


DIGESTS_FILE = "checkpoint_digests.json"


class RecordCheckpointDigests(TrainerCallback):
    """Each checkpoint's files' SHA-256 in its DIGESTS_FILE, written once Trainer has saved it: bytes flipped in
    its weights later (still finite, and they load) made a resume continue from damaged weights without a word."""

    def on_save(self, args, state, control, **kwargs):
        # every process writes its own RNG state, with no barrier after: hashed before they all finish, a whole
        # checkpoint would later read as damaged (every process calls on_save, so all meet here)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_json(folder / DIGESTS_FILE, file_digests(folder, skip=(DIGESTS_FILE,)))


class BestCheckpointHere(TrainerCallback):
    """A resumed run's best checkpoint is the one of that name in the folder being resumed. transformers keeps the
    absolute path it was saved under, so a moved run loaded the best weights from the old place (another run's, if
    one is there now) or, if it is gone, exported its last weights instead."""

    name = None  # the saved best checkpoint's folder name, read before transformers drops a missing path

    def on_train_begin(self, args, state, control, **kwargs):
        if self.name is None:
            return
        here = Path(args.output_dir) / self.name
        problem = checkpoint_problem(here) if here.is_dir() else f"not in {args.output_dir}"
        if problem is None:
            state.best_model_checkpoint = str(here)
        else:
            logger.warning("the resumed run's best checkpoint %s cannot be used (%s): the best of the "
                           "checkpoints saved from now on is exported, or the last weights", self.name, problem)
            # all three: transformers sets best_model_checkpoint again from best_global_step at every save (and
            # the damaged folder was loaded at the end), and a new checkpoint must beat a score no longer held
            state.best_model_checkpoint = state.best_global_step = state.best_metric = None


def build_trainer(s: FinetuneSettings, model, processor, train_dataset, eval_dataset, class_names,
                  training_args=None):
    from transformers import EarlyStoppingCallback, Trainer, default_data_collator

    callbacks = [BestCheckpointHere(), RecordCheckpointDigests()]
    if s.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=s.train.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=training_args if training_args is not None else build_training_args(s),
        data_collator=default_data_collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=make_compute_metrics(class_names),
        callbacks=callbacks,
    )
    # The model's loss is a per-micro-batch mean: the Trainer must divide it by the accumulation steps. The
    # model class already says so (accepts_loss_kwargs = False); this keeps it true for any model object.
    trainer.loss_is_scaled_for_ga = False
    return trainer


# ------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------


def prepare(s: FinetuneSettings) -> dict:
    """Datasets, processor, class weights and the model (seeded) for a run."""
    from transformers import set_seed

    from eval.datasets import load_downstream

    data = s.data
    splits = {split: load_downstream(data.dataset, data.root, split=split, task=data.task)
              for split in ("train", "val", "test")}
    class_names = list(splits["train"].class_names)
    try:
        processor = load_processor(s.model.name_or_path)
    except (FileNotFoundError, ValueError) as err:  # a damaged or missing processor file, named
        raise ConfigError(f"model.name_or_path: {err}") from None
    fe = processor.feature_extractor
    fe.check_model_input(DBetaConfig.from_pretrained(s.model.name_or_path).ecg_config, str(s.model.name_or_path))
    protocol_n = resolve_protocol_num_samples(splits["train"], data.protocol_num_samples)
    # the processor carries the cut into the export, so the classification pipeline serves the length trained on
    fe.keep_samples = protocol_n if protocol_n is not None and protocol_n < fe.num_samples else None
    if data.random_crop and fe.keep_samples is not None:
        raise ConfigError(f"data.random_crop with a protocol cut of {fe.keep_samples} samples: every record is cut "
                          "to its first samples, so there is no window to choose; set data.protocol_num_samples=none "
                          "to train on random windows")
    set_seed(s.seed)  # the new head's initialisation
    # before the record scan, which takes minutes on a large dataset: damaged base weights end the run at once
    try:
        model = load_classifier(s.model.name_or_path, class_names, None, s.model.classifier_dropout)
    except (OSError, ValueError) as err:  # damaged or incomplete weights: named by the loader, exit 2
        raise ConfigError(f"--model: {err}") from err
    record_model_input(model, processor)  # Trainer's checkpoints are classifier folders too: their cut goes along
    kept, skipped = {}, {}
    if data.check_records:
        kept, skipped = check_records(splits, fe, protocol_n, data.on_error, data.num_workers, s.train.progress,
                                      random_crop=data.random_crop)
    y_train, y_val = (splits[k].labels_matrix()[kept.get(k, slice(None))] for k in ("train", "val"))
    if len(splits["train"]) == 0 or len(splits["val"]) == 0:
        raise ConfigError(f"{data.dataset}: empty train or val split")
    val_pos = y_val.sum(axis=0)
    if not ((val_pos > 0) & (val_pos < len(y_val))).any():
        raise ConfigError(f"{data.dataset}: no class has both positives and negatives in val; the val macro AUC "
                          f"that selects the checkpoint is undefined")
    unlearned = [c for c, n in zip(class_names, y_train.sum(axis=0)) if n == 0]
    if unlearned:  # the head still gets an output for them: its scores are its initialisation's, not learned
        logger.warning("%d of %d classes have no positive training record; the export scores them but never learned "
                       "them: %s", len(unlearned), len(class_names), ", ".join(unlearned))
    weights = None
    if s.model.class_weights == "auto":  # from the records kept; the loss reads them from the config
        weights = auto_class_weights(y_train, s.model.max_class_weight)
        model.config.class_weights = list(weights)
    datasets = {
        "train": ECGClassificationDataset(splits["train"], fe, protocol_n, random_crop=data.random_crop,
                                          indices=kept.get("train")),
        "val": ECGClassificationDataset(splits["val"], fe, protocol_n, indices=kept.get("val")),
        "test": ECGClassificationDataset(splits["test"], fe, protocol_n, indices=kept.get("test"))
        if len(splits["test"]) else None,
    }
    return {"splits": splits, "datasets": datasets, "class_names": class_names, "class_weights": weights,
            "classes_without_train_positives": unlearned, "skipped_records": skipped,
            "processor": processor, "model": model, "protocol_num_samples": protocol_n}


def random_crops(feature_extractor: DBetaFeatureExtractor) -> DBetaFeatureExtractor:
    """A copy of `feature_extractor` that takes a random window of a longer record (the model's own is left as it
    was: it is exported with the classifier)."""
    fe = copy.deepcopy(feature_extractor)
    fe.crop = "random"
    return fe


def check_records(splits: dict, feature_extractor, protocol_num_samples: Optional[int], on_error: str,
                  num_workers: int, progress: bool, random_crop: bool = False) -> tuple:
    """Read and condition every record of every split before training (eval.features.scan_records). With
    `random_crop`, training records are judged whole, as the processor judges a random crop (any window may be
    drawn); the others by the part the model reads.

    on_error="raise": RecordError naming every failing record (up to 20 shown). "skip": ({split: kept indices},
    {split: [{"record_id", "error"}]}) with a warning; refused (RecordError) when skipping leaves a split empty or
    takes the last positive or negative record of a class (eval.features.check_skipped_records)."""
    kept, skipped, failed = {}, {}, []
    for split, dataset in splits.items():
        if not len(dataset):
            continue
        fe = random_crops(feature_extractor) if random_crop and split == "train" else feature_extractor
        good, failures = scan_records(dataset, fe, protocol_num_samples, num_workers=num_workers,
                                      progress=progress, desc=f"checking {split} records")
        failed += [f"{split}: {f['error']}" for f in failures]
        if failures and on_error == "skip":
            check_skipped_records(dataset, good, failures)
            kept[split] = good
            skipped[split] = [{"record_id": dataset.record_ids[f["index"]], "error": f["error"]} for f in failures]
            logger.warning("%s: %d of %d records cannot be used and are left out (--on-error skip): %s", split,
                           len(failures), len(dataset), "; ".join(f["error"] for f in failures[:5])
                           + (f"; and {len(failures) - 5} more (results.json)" if len(failures) > 5 else ""))
    if failed and on_error == "raise":
        shown = "\n  ".join(failed[:20]) + (f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else "")
        raise RecordError(f"{len(failed)} record(s) cannot be read or conditioned; nothing was trained:\n  {shown}\n"
                          "Fix or remove them, or pass --on-error skip to leave them out (named in results.json)")
    return kept, skipped


def run(s: FinetuneSettings, resume: bool = False) -> dict:
    """Fine-tune, evaluate, export (and push) as `s` says; `resume` continues from the newest checkpoint in the
    output folder. The settings are checked first (ConfigError) before any data or model is read. Returns the
    results, also written to OUTPUT_DIR/results.json. The output folder is held by one run at a time (run.lock)."""
    s.validate()
    s.require(FLAGS)
    training_args = build_training_args(s)  # what TrainingArguments refuses, before the folder is even made
    try:
        check_run_folder(s.output_dir, reads=(s.model.name_or_path,))  # before the lock makes the folder
        with RunLock(s.output_dir):
            return _run(s, resume, training_args)
    except (FolderInUseError, ExportTargetError) as err:  # two runs, one folder; a run inside its model
        raise ConfigError(str(err)) from None


def _check_classifier_target(export_dir: Path, output_dir: Path) -> None:
    """Two export folders fine-tuning must not take: a checkpoint-N name in the run's folder (Trainer writes a
    checkpoint there during the run, and the export at the end is then refused, after all the training), and a
    pretrained D-BETA export (replaced by the classifier, its text tower and heads would be lost)."""
    if (export_dir.resolve().parent == output_dir.resolve()
            and re.fullmatch(r"checkpoint-\d+", export_dir.name)):
        raise ConfigError(f"--export-dir {export_dir}: Trainer names its checkpoints so in {output_dir}; "
                          "pick another name")
    try:
        kind = json.loads((export_dir / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return
    if kind and "DBetaForECGClassification" not in kind:
        raise ConfigError(f"--export-dir {export_dir} holds a pretrained D-BETA export ({', '.join(kind)}): the "
                          "fine-tuned classifier would replace it. Pass another --export-dir")


def _same_places_as_now(saved: dict, s: FinetuneSettings) -> dict:
    """The saved settings with each folder spelled as now where both name the same place (`d2/`, `./d2` and its
    absolute path are one folder; whether it holds the same data is the data fingerprint's question)."""
    for section, key in (("data", "root"), ("model", "name_or_path")):
        old, new = (saved.get(section) or {}).get(key), getattr(getattr(s, section), key)
        if old and new and old != new and Path(old).exists() and Path(old).resolve() == Path(new).resolve():
            saved[section][key] = new
    return saved


def _data_fingerprint(splits: dict) -> dict:
    """Each split's record count and a hash of its record ids and labels."""
    import hashlib

    out = {}
    for name, split in splits.items():
        digest = hashlib.sha256("\n".join(map(str, split.record_ids)).encode())
        digest.update(np.ascontiguousarray(split.labels_matrix(), dtype=np.float32).tobytes())
        digest.update(",".join(split.class_names).encode())
        out[name] = {"records": len(split), "sha256": digest.hexdigest()}
    return out


def _check_same_data(path: Path, splits: dict, first: bool) -> None:
    """A run's data is written down at its start; a --resume on other records or labels (a data folder made
    anew, a relative --data-root from another directory) would continue the run on them without a word."""
    now = _data_fingerprint(splits)
    if first or not path.is_file():  # runs older than this file are not checked
        write_json(path, now)
        return
    saved = json.loads(path.read_text())
    changed = [f"{k}: {saved[k]['records']} records -> {now[k]['records']}"
               + (" (other records or labels)" if saved[k]["records"] == now[k]["records"] else "")
               for k in now if k in saved and saved[k] != now[k]]
    if changed:
        raise ConfigError(f"--resume in {path.parent}: the data differ from the run's ({'; '.join(changed)}). "
                          "Resume on the data the run started with, or start a new run in another --output-dir")


def _run(s: FinetuneSettings, resume: bool, training_args) -> dict:
    output_dir = Path(s.output_dir)
    folders = checkpoint_folders(output_dir)
    earlier = folders[-1] if folders else None
    if earlier and not resume:
        # Trainer would rotate the earlier run's checkpoints away (save_total_limit counts every checkpoint-N in
        # the folder), overwrite its export and results, and a later --resume would pick the highest-numbered
        # checkpoint, whichever run wrote it.
        raise ConfigError(f"{output_dir} already holds checkpoints of an earlier run ({Path(earlier).name}): pass "
                          "--resume to continue it, or use another output_dir (--output-dir)")
    if not resume and (output_dir / RESULTS_FILE).is_file():  # a finished run whose checkpoints were deleted
        raise ConfigError(f"{output_dir} holds a finished run ({RESULTS_FILE}, its export): a new run would replace "
                          "them. Use another output_dir (--output-dir), or move them away first")
    export_dir = Path(s.export_dir) if s.export_dir else output_dir / EXPORT_DIR
    try:  # before any data is read, not after training
        check_export_target(export_dir, protect=(s.model.name_or_path, output_dir))
    except ExportTargetError as err:
        raise ConfigError(str(err)) from None
    _check_classifier_target(export_dir, output_dir)
    settings_file = output_dir / SETTINGS_FILE
    if earlier and settings_file.is_file():
        changed = s.changed_since(_same_places_as_now(json.loads(settings_file.read_text()), s), RUN_IDENTITY)
        if changed:
            raise ConfigError(f"--resume in {output_dir}: the run differs from the checkpointed one ("
                              + "; ".join(changed) + "). Restore them, or start a new run in another --output-dir")
    if s.optim.lr == 0:
        logger.warning("optim.lr is 0: the weights stay as they are (a baseline run)")
    t0 = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    if not earlier:
        write_json(settings_file, s.to_dict())
    parts = prepare(s)
    class_names, datasets = parts["class_names"], parts["datasets"]
    _check_same_data(output_dir / DATA_FILE, parts["splits"], first=not earlier)
    trainer = build_trainer(s, parts["model"], parts["processor"], datasets["train"], datasets["val"],
                            class_names, training_args)

    resume_from, resumed_at = None, 0
    if resume:
        resume_from = find_checkpoint(output_dir)
        if resume_from is None:
            logger.warning("--resume: no checkpoint-* folder in %s; starting from the model", output_dir)
        else:
            logger.info("resuming from %s", resume_from)
            state = json.loads((Path(resume_from) / "trainer_state.json").read_text())
            resumed_at = int(state["global_step"])
            best = state.get("best_model_checkpoint")
            here = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, BestCheckpointHere))
            here.name = Path(best).name if best else None
            control = (state.get("stateful_callbacks") or {}).get("TrainerControl") or {}
            if (control.get("args") or {}).get("should_training_stop"):
                # stopped early, then stopped again before its results (Trainer clears the stop decision at the
                # start of train()): no further step, as the uninterrupted run took none
                logger.info("the run stopped early at step %s: evaluating and exporting it", state["global_step"])
                trainer.args.max_steps = int(state["global_step"])
    try:
        train_output = trainer.train(resume_from_checkpoint=resume_from)
        from transformers import EarlyStoppingCallback

        trainer.remove_callback(EarlyStoppingCallback)  # the final val/test passes are not early-stopping evaluations

        val_metrics = trainer.evaluate(datasets["val"], metric_key_prefix="val")
        test = None
        if datasets["test"] is not None:
            prediction = trainer.predict(datasets["test"], metric_key_prefix="test")
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            test = {"metrics": prediction.metrics,
                    "report": auc_report(prediction.label_ids, logits, class_names, n_resamples=s.eval.bootstrap,
                                         seed=s.seed)}
    except NonFiniteScoresError as err:
        raise TrainingDiverged(f"the classifier's outputs are NaN or infinite at step {trainer.state.global_step} "
                               f"({err}): training diverged. Lower --lr (now {s.optim.lr:g}), or check the data "
                               "for non-finite values") from None

    model = trainer.model
    model.config.class_weights = None  # a training-time loss setting: not imposed on whoever loads the export
    best = trainer.state.best_model_checkpoint
    facts = {
        "fine-tuned from": s.model.name_or_path,
        "dataset": s.data.dataset + (f" / {s.data.task}" if s.data.task else ""),
        "classes": ", ".join(class_names),
        **({"classes never seen positive in training (scored, not learned)":
            ", ".join(parts["classes_without_train_positives"])} if parts["classes_without_train_positives"] else {}),
        "epochs run": f"{trainer.state.epoch:g} (best checkpoint: {Path(best).name if best else 'last'})",
        "val macro AUC": f"{val_metrics.get('val_macro_auc', float('nan')):.4f}",
    }
    keep = parts["processor"].feature_extractor.keep_samples
    if keep is not None:
        rate = parts["processor"].feature_extractor.sampling_rate
        facts["input"] = (f"the first {keep / rate:g} s of each record ({keep} samples: the cut it was fine-tuned "
                          "on), zero-padded to the model's input; the processor applies the same cut")
    if test is not None and test["report"]["macro_auc"] is not None:
        facts["test macro AUC"] = f"{test['report']['macro_auc']:.4f}"
        facts["test macro AUPRC"] = f"{test['report']['macro_auprc']:.4f}"
    if trainer.is_world_process_zero():
        # the old results describe the old export: gone before the new export lands, back with the new run's
        (output_dir / RESULTS_FILE).unlink(missing_ok=True)
        export_model(model, export_dir, processor=parts["processor"], card_facts=facts)
    pushed = None
    if s.hub.push_to_hub and trainer.is_world_process_zero():
        repo = s.hub.push_to_hub
        try:  # a failed upload must not lose the run's results: they are written below either way
            url = push_export(export_dir, repo, private=s.hub.private,
                              commit_message=f"Fine-tuned D-BETA on {facts['dataset']}")
            pushed = {"repo": repo, "ok": True, "commit_url": url}
        except Exception as err:  # noqa: BLE001 - reported, the export kept
            pushed = {"repo": repo, "ok": False, "error": f"{type(err).__name__}: {err}"}
            logger.error("push to %s FAILED: %s\nThe export in %s is complete; retry with:\n"
                         "  python -m train.push_to_hub --folder %s --repo-id %s", repo, err, export_dir, export_dir,
                         repo)

    log_history = trainer.state.log_history
    results = {
        "schema": "dbeta-finetune/1",
        "model": str(s.model.name_or_path),
        "dataset": s.data.dataset,
        "task": s.data.task,
        "data_root": str(s.data.root),
        "class_names": class_names,
        "class_weights": parts["class_weights"],
        "classes_without_train_positives": parts["classes_without_train_positives"],
        "protocol_num_samples": parts["protocol_num_samples"],
        "splits": {split: len(ds) for split, ds in parts["datasets"].items() if ds is not None},
        "skipped_records": parts["skipped_records"],
        "hyperparameters": {
            "epochs": s.train.epochs, "max_steps": s.train.max_steps, "lr": s.optim.lr,
            "weight_decay": s.optim.weight_decay, "batch_size": s.train.per_device_batch_size,
            "gradient_accumulation_steps": s.train.gradient_accumulation_steps,
            "bf16": s.train.mixed_precision == "bf16", "early_stopping_patience": s.train.early_stopping_patience,
            "seed": s.seed, "random_crop": s.data.random_crop,
        },
        "settings": s.to_dict(),
        "resumed_from": resume_from,
        "global_step": trainer.state.global_step,
        "epochs_run": trainer.state.epoch,
        "best_checkpoint": best,
        "best_val_macro_auc": trainer.state.best_metric,
        # Trainer's train_loss and speeds cover the steps after `resumed_at_step`, not the run's earlier ones
        "train": dict(train_output.metrics, resumed_at_step=resumed_at),
        "val": val_metrics,
        "test": test,
        "train_loss_log": loss_log(log_history, resumed_at),
        "eval_log": [{k: v for k, v in e.items()} for e in log_history if "eval_macro_auc" in e],
        "export_dir": str(export_dir),
        "pushed": pushed,
        "seconds": time.perf_counter() - t0,
    }
    write_json(output_dir / RESULTS_FILE, _json_safe(results))
    return results


def loss_log(log_history: list, resumed_at: int = 0) -> list:
    """The training losses Trainer logged, each with `steps_averaged`, the steps its mean covers: Trainer restarts
    its loss sum at a resume, so the first loss logged after a resume between two logs averages only the steps
    since the resume (an uninterrupted run's covers the whole interval; the two differed without a word)."""
    out, previous = [], 0
    for e in log_history:
        if "loss" not in e:
            continue
        start = resumed_at if previous < resumed_at < e["step"] else previous
        out.append({"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"],
                    "steps_averaged": e["step"] - start})
        previous = e["step"]
    return out


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit codes: 0 finished; 2 bad settings or arguments (nothing read or "
                                       "built), or records that cannot be used (named; nothing trained); 4 the push "
                                       "failed; 5 training diverged.")
    add_settings_arguments(p)

    def flag(name, dest=None, **kw):
        dest = dest or name[2:].replace("-", "_")
        key = FLAGS[dest]
        help = kw.pop("help", None) or FinetuneSettings.help_for(key)
        p.add_argument(name, dest=dest, help=f"{help} [{key}]", **kw)

    flag("--model")
    flag("--dataset")
    flag("--data-root")
    flag("--task")
    flag("--output-dir")
    flag("--export-dir")
    flag("--epochs")
    flag("--max-steps")
    flag("--lr")
    flag("--weight-decay")
    flag("--warmup-steps")
    flag("--batch-size")
    flag("--eval-batch-size")
    flag("--gradient-accumulation-steps")
    flag("--bf16", dest="mixed_precision", action="store_const", const="bf16", help="bfloat16 autocast (CPU or GPU)")
    flag("--class-weights")
    flag("--max-class-weight")
    flag("--classifier-dropout")
    flag("--early-stopping-patience")
    flag("--save-total-limit")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    flag("--random-crop", action="store_const", const=True)
    flag("--protocol-num-samples")
    flag("--num-workers")
    flag("--on-error")
    flag("--logging-steps")
    flag("--bootstrap")
    flag("--seed")
    flag("--report-to", type=_integrations, help="Trainer report_to: none, all, or names separated by commas")
    flag("--no-progress", dest="progress", action="store_const", const=False, help="no tqdm bars")
    flag("--push-to-hub", metavar="REPO")
    flag("--private", action="store_const", const=True)
    return p


def _integrations(value: str) -> list:
    return [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]


def resolve_settings(argv: Optional[Sequence[str]] = None) -> tuple:
    """(FinetuneSettings, argparse namespace): defaults < config file < --set < flags, validated."""
    args = build_parser().parse_args(argv)
    settings = FinetuneSettings()
    if args.config is not None:
        settings.update(read_config_file(args.config))
    settings.apply_sets(args.sets)
    settings.apply_flags(args, FLAGS)
    settings.validate()
    return settings, args


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """The command line: the results of `run` (None after --print-config); a bad setting exits with code 2."""
    try:
        settings, args = resolve_settings(argv)
        if args.print_config:
            print(settings.to_yaml(), end="")
            return None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        results = run(settings, resume=args.resume)
    except (ConfigError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_NON_FINITE) from None
    test = results["test"]["report"] if results["test"] else {}
    pushed = results["pushed"]
    print(f"best val macro AUC {results['best_val_macro_auc']}; test macro AUC {test.get('macro_auc')}, "
          f"macro AUPRC {test.get('macro_auprc')}; export: {results['export_dir']}"
          + (f"; pushed: {pushed['commit_url']}" if pushed and pushed["ok"] else ""))
    if pushed and not pushed["ok"]:
        print(f"error: the push to {pushed['repo']} failed ({pushed['error']}); results.json and the export are "
              "complete", file=sys.stderr)
        raise SystemExit(EXIT_PUSH_FAILED)
    return results


if __name__ == "__main__":
    main()
