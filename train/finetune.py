"""Fine-tune D-BETA (`DBetaForECGClassification`: the ECG encoder + one linear layer) on a downstream dataset
with `transformers.Trainer`.

    python -m train.finetune --model DIR_OR_REPO --dataset cpsc2018 --data-root /data/cpsc2018 \
        --output-dir runs/ft-cpsc [--task ...] [--epochs 10] [--lr 1e-4] [--batch-size 16] \
        [--gradient-accumulation-steps 1] [--bf16] [--class-weights auto|none] [--early-stopping-patience 3] \
        [--resume] [--push-to-hub USER/REPO]

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
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch


from dbeta.configuration_dbeta import DBetaConfig
from eval.features import condition_item, resolve_protocol_num_samples
from eval.metrics import auc_report, make_compute_metrics
from dbeta.modeling_dbeta import DBetaForECGClassification
from dbeta.processing_dbeta import DBetaFeatureExtractor, DBetaProcessor
from train.export import export_model
from train.hub import push_export


logger = logging.getLogger("dbeta.finetune")

FINETUNE_DATASETS = ("ptbxl", "cpsc2018", "csn", "physionet2021")
HEAD_PREFIXES = ("classifier.",)
RESULTS_FILE = "results.json"
EXPORT_DIR = "export"


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
                 random_crop: bool = False):
        self.dataset = dataset
        self.protocol_num_samples = protocol_num_samples
        self.feature_extractor = feature_extractor
        if random_crop:
            self.feature_extractor = copy.deepcopy(feature_extractor)
            self.feature_extractor.crop = "random"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[int(index)]
        x = condition_item(self.feature_extractor, item, self.protocol_num_samples)
        return {"ecg_values": torch.from_numpy(np.ascontiguousarray(x)),
                "labels": torch.as_tensor(item["labels"], dtype=torch.float32)}


def load_processor(model: str) -> DBetaProcessor:
    """The model's processor (feature extractor + tokenizer) from its folder or Hub repo, with the package's
    classes (no remote code is run)."""
    from transformers import AutoTokenizer

    try:
        fe = DBetaFeatureExtractor.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{model}: no D-BETA processor config ({type(err).__name__}: {err}); fine-tuning conditions signals "
            f"with the model's own processor, so export the model with its processor first"
        ) from err
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer peeks at the (remote-code) model config; no code is run
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(level)
    return DBetaProcessor(fe, tokenizer)


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
    """DBetaForECGClassification from `model` with a fresh multi-label head for `class_names`.

    The ECG encoder's weights must all be in the checkpoint (a missing or misshapen one is an error); the
    classifier is new unless the checkpoint has one of the same shape (a fine-tuned export)."""
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
    return clf


def find_checkpoint(output_dir: Path) -> Optional[str]:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def build_training_args(args: argparse.Namespace):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(args.output_dir),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size or args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),  # bf16 on a CPU-only machine needs use_cpu
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=args.logging_steps,
        load_best_model_at_end=True,
        metric_for_best_model="macro_auc",
        greater_is_better=True,
        save_total_limit=args.save_total_limit,
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # items are dicts of tensors, every key is a forward argument
        label_names=["labels"],
        report_to=args.report_to,
        seed=args.seed,
        disable_tqdm=args.no_progress,
    )


def build_trainer(args: argparse.Namespace, model, processor, train_dataset, eval_dataset, class_names):
    from transformers import EarlyStoppingCallback, Trainer, default_data_collator

    callbacks = []
    if args.early_stopping_patience and args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=build_training_args(args),
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


def prepare(args: argparse.Namespace) -> dict:
    """Datasets, processor, class weights and the model (seeded) for a run."""
    from transformers import set_seed

    from eval.datasets import load_downstream

    splits = {s: load_downstream(args.dataset, args.data_root, split=s, task=args.task) for s in ("train", "val", "test")}
    class_names = list(splits["train"].class_names)
    y_train, y_val = splits["train"].labels_matrix(), splits["val"].labels_matrix()
    if len(splits["train"]) == 0 or len(splits["val"]) == 0:
        raise ValueError(f"{args.dataset}: empty train or val split")
    val_pos = y_val.sum(axis=0)
    if not ((val_pos > 0) & (val_pos < len(y_val))).any():
        raise ValueError(f"{args.dataset}: no class has both positives and negatives in val; the val macro AUC "
                         f"that selects the checkpoint is undefined")
    weights = None
    if args.class_weights == "auto":
        weights = auto_class_weights(y_train, args.max_class_weight)
    processor = load_processor(args.model)
    fe = processor.feature_extractor
    protocol_n = resolve_protocol_num_samples(splits["train"], args.protocol_num_samples)
    set_seed(args.seed)  # the new head's initialisation
    model = load_classifier(args.model, class_names, weights, args.classifier_dropout)
    datasets = {
        "train": ECGClassificationDataset(splits["train"], fe, protocol_n, random_crop=args.random_crop),
        "val": ECGClassificationDataset(splits["val"], fe, protocol_n),
        "test": ECGClassificationDataset(splits["test"], fe, protocol_n) if len(splits["test"]) else None,
    }
    return {"splits": splits, "datasets": datasets, "class_names": class_names, "class_weights": weights,
            "processor": processor, "model": model, "protocol_num_samples": protocol_n}


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    parts = prepare(args)
    class_names, datasets = parts["class_names"], parts["datasets"]
    trainer = build_trainer(args, parts["model"], parts["processor"], datasets["train"], datasets["val"],
                            class_names)

    resume = None
    if args.resume:
        resume = find_checkpoint(output_dir)
        if resume is None:
            logger.warning("--resume: no checkpoint-* folder in %s; starting from the model", output_dir)
        else:
            logger.info("resuming from %s", resume)
    elif find_checkpoint(output_dir):
        logger.warning("%s already holds checkpoints; training from scratch (pass --resume to continue)", output_dir)
    train_output = trainer.train(resume_from_checkpoint=resume)
    from transformers import EarlyStoppingCallback

    trainer.remove_callback(EarlyStoppingCallback)  # the final val/test passes are not early-stopping evaluations

    val_metrics = trainer.evaluate(datasets["val"], metric_key_prefix="val")
    test = None
    if datasets["test"] is not None:
        prediction = trainer.predict(datasets["test"], metric_key_prefix="test")
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        test = {"metrics": prediction.metrics,
                "report": auc_report(prediction.label_ids, logits, class_names, n_resamples=args.bootstrap,
                                     seed=args.seed)}

    model = trainer.model
    model.config.class_weights = None  # a training-time loss setting: not imposed on whoever loads the export
    export_dir = Path(args.export_dir) if args.export_dir else output_dir / EXPORT_DIR
    best = trainer.state.best_model_checkpoint
    facts = {
        "fine-tuned from": args.model,
        "dataset": args.dataset + (f" / {args.task}" if args.task else ""),
        "classes": ", ".join(class_names),
        "epochs run": f"{trainer.state.epoch:g} (best checkpoint: {Path(best).name if best else 'last'})",
        "val macro AUC": f"{val_metrics.get('val_macro_auc', float('nan')):.4f}",
    }
    if test is not None and test["report"]["macro_auc"] is not None:
        facts["test macro AUC"] = f"{test['report']['macro_auc']:.4f}"
        facts["test macro AUPRC"] = f"{test['report']['macro_auprc']:.4f}"
    if trainer.is_world_process_zero():
        export_model(model, export_dir, processor=parts["processor"], card_facts=facts)
    pushed = None
    if args.push_to_hub and trainer.is_world_process_zero():
        pushed = push_export(export_dir, args.push_to_hub, private=args.private,
                             commit_message=f"Fine-tuned D-BETA on {facts['dataset']}")

    log_history = trainer.state.log_history
    results = {
        "schema": "dbeta-finetune/1",
        "model": str(args.model),
        "dataset": args.dataset,
        "task": args.task,
        "data_root": str(args.data_root),
        "class_names": class_names,
        "class_weights": parts["class_weights"],
        "protocol_num_samples": parts["protocol_num_samples"],
        "splits": {s: len(ds) for s, ds in parts["splits"].items()},
        "hyperparameters": {
            "epochs": args.epochs, "max_steps": args.max_steps, "lr": args.lr, "weight_decay": args.weight_decay,
            "batch_size": args.batch_size, "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "bf16": args.bf16, "early_stopping_patience": args.early_stopping_patience, "seed": args.seed,
            "random_crop": args.random_crop,
        },
        "resumed_from": resume,
        "global_step": trainer.state.global_step,
        "epochs_run": trainer.state.epoch,
        "best_checkpoint": best,
        "best_val_macro_auc": trainer.state.best_metric,
        "train": train_output.metrics,
        "val": val_metrics,
        "test": test,
        "train_loss_log": [{"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"]}
                           for e in log_history if "loss" in e],
        "eval_log": [{k: v for k, v in e.items()} for e in log_history if "eval_macro_auc" in e],
        "export_dir": str(export_dir),
        "pushed": pushed,
        "seconds": time.perf_counter() - t0,
    }
    (output_dir / RESULTS_FILE).write_text(json.dumps(_json_safe(results), indent=2))
    return results


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
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported D-BETA folder or Hub repo id (with its processor)")
    p.add_argument("--dataset", required=True, choices=FINETUNE_DATASETS)
    p.add_argument("--data-root", required=True)
    p.add_argument("--task", default=None, help="PTB-XL task: super, sub, form or rhythm")
    p.add_argument("--output-dir", required=True, help="checkpoints, results.json and export/")
    p.add_argument("--export-dir", default=None, help="where the final model goes (default OUTPUT_DIR/export)")
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or GPU)")
    p.add_argument("--class-weights", choices=("auto", "none"), default="none",
                   help="auto: positive weight neg/pos per class from the train labels (clipped)")
    p.add_argument("--max-class-weight", type=float, default=50.0)
    p.add_argument("--classifier-dropout", type=float, default=None)
    p.add_argument("--early-stopping-patience", type=int, default=3, help="epochs without val AUC gain; 0: off")
    p.add_argument("--save-total-limit", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    p.add_argument("--random-crop", action="store_true",
                   help="train on a random window of records longer than the processor's length (augmentation)")
    p.add_argument("--protocol-num-samples", default="auto",
                   help="'auto' (the dataset's protocol length, CPSC2018: 2500), 'none', or a number of samples")
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the test AUC CI")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--report-to", default="none", help="Trainer report_to (none, tensorboard, ...)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the export to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.gradient_accumulation_steps < 1 or args.batch_size < 1:
        raise SystemExit("--batch-size and --gradient-accumulation-steps must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = run(args)
    test = results["test"]["report"] if results["test"] else {}
    print(f"best val macro AUC {results['best_val_macro_auc']}; test macro AUC {test.get('macro_auc')}, "
          f"macro AUPRC {test.get('macro_auprc')}; "
          f"export: {results['export_dir']}" + (f"; pushed: {results['pushed']}" if results["pushed"] else ""))
    return results


if __name__ == "__main__":
    main()
