"""Linear probing of the frozen D-BETA ECG encoder on a downstream dataset (the MERL benchmark protocol).

    python -m eval.linear_probe --model DIR_OR_REPO --dataset ptbxl --task super --data-root /data/ptb-xl \
        --output results/probe_ptbxl_super.json [--fractions 0.01 0.1 1.0] [--seeds 42] [--epochs 100] \
        [--batch-size 16] [--lr 1e-3] [--weight-decay 1e-4] [--cache-dir DIR] [--random-init]

    from eval.linear_probe import run_linear_probe        # the same as a function (keywords as the flags)
    result = run_linear_probe(model="out/model", dataset="ptbxl", task="sub", data_root="data/ptbxl",
                              fractions=[0.01, 1.0], seeds=[42], output="out/lp.json")

What it does:

1. Features. The encoder (`DBetaForECGClassification`'s ECG path; `get_ecg_features`, [B, hidden]) runs frozen,
   in eval mode, under `torch.no_grad`, on each split once. Every record goes through the model's own feature
   extractor (`DBetaFeatureExtractor.from_pretrained(model)`: lead order, resampling, crop/pad, scaling), in
   DataLoader workers (eval.features.dataset_ecg_features). Where the dataset names a protocol length
   (`protocol_num_samples`, CPSC2018: 2500), the record is cut to that many samples (at the processor's rate)
   before the processor zero-pads it. The
   features are cached in `--cache-dir` as safetensors, under a key made of the encoder's weights
   fingerprint, the dataset, task, split, root, record list and label matrix, the processor settings and the
   dtype, so another model, processor or data set never reuses them.
2. Head. One `nn.Linear(hidden, classes)` trained on the cached tensors: multi-label BCE with logits, Adam
   (lr 1e-3, weight decay 1e-4), batch 16, 100 epochs, on features standardised with the training subset's
   per-dimension mean and std (as MAE's probe does with a BatchNorm without affine; without it, Adam on the
   uncentred features ranked the demo's LVH backwards, AUC 14.6, where logistic regression gives 97). The training subset for a fraction f < 1 is
   `train_test_split(train, train_size=floor(f * n), random_state=seed)` without stratification; val and test
   stay whole. The seed also fixes the head's initialisation and the batch order.
3. Metrics, per fraction and seed: macro ROC AUC (mean of the per-class AUCs of the classes that have both
   positives and negatives in that split) on val and test after every epoch. The reported figure is the test
   AUC at the epoch with the best val AUC (first such epoch). The maximum test AUC over epochs (what MERL's
   script reports: the epoch is chosen on the test set) is written beside it, labelled comparison-only.
   At that epoch the test macro AUPRC (average precision, over the same classes) is reported beside the AUC.
   Each run's val-selected test AUC and AUPRC get percentile bootstrap CIs over test records (`--bootstrap`,
   via eval.metrics.auc_report). Mean and std (ddof=1) over seeds. A val or test split without any class
   that has both a positive and a negative record is an error (its macro AUC is undefined).

Outputs: FILE.json (schema `dbeta-linear-probe/2`), FILE.md (tables), FILE.png (val/test AUC per epoch) and
FILE.roc-<fraction>.png (test ROC curves of the first seed's val-selected head).
`--random-init` probes the same architecture with freshly initialised weights (the model's config only): the
baseline row. Fractions outside (0, 1] are refused when the arguments are parsed; data errors (a folder of
another dataset, empty splits, unreadable tables) exit with status 2 and a message naming the file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


from dbeta.configuration_dbeta import DBetaConfig
from eval.features import (
    RecordError,
    dataset_ecg_features,
    processor_settings,
    protocol_num_samples_arg,
    resolve_protocol_num_samples,
)
from eval.metrics import auc_report, evaluable_classes, per_class_auc
from dbeta.modeling_dbeta import DBetaForECGClassification
from dbeta.processing_dbeta import DBetaFeatureExtractor
from train.folders import retract_result, write_file, write_result


logger = logging.getLogger("dbeta.linear_probe")

SCHEMA = "dbeta-linear-probe/2"  # /2: features standardised before the head
CACHE_FORMAT = 1  # bump when the way features are computed changes, so old cache files are not reused
PROBE_DATASETS = ("ptbxl", "cpsc2018", "csn", "physionet2021")
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
SPLIT_NAMES = ("train", "val", "test")
# A class one-valued in a run's training subset gets a head that learnt nothing of it; the runs name such classes.
ONE_VALUED_KEYS = {"classes_without_train_positives": "positive", "classes_without_train_negatives": "negative"}
# The encoder's own parameters: everything of DBetaForECGClassification except the (unused) classifier.
HEAD_PREFIXES = ("classifier.",)


# ------------------------------------------------------------------------------------------------------------
# Model and processor
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_encoder(model: str, random_init: bool = False, init_seed: int = 42) -> DBetaForECGClassification:
    """The ECG path of the D-BETA model at `model` (a folder or Hub id), frozen and in eval mode.

    `random_init=True` builds the same architecture from the model's config with fresh weights (seeded by
    `init_seed`); nothing but config.json is read. A checkpoint without the ECG encoder's weights is an error
    (they would otherwise be silently random).
    """
    config = DBetaConfig.from_pretrained(model)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            encoder = DBetaForECGClassification(config)
    else:
        with _quiet_transformers():
            encoder, info = DBetaForECGClassification.from_pretrained(model, config=config, output_loading_info=True)
        missing = [k for k in info.get("missing_keys", []) if not k.startswith(HEAD_PREFIXES)]
        if missing:
            raise ValueError(
                f"{model}: the checkpoint lacks {len(missing)} ECG-encoder weight(s) ({', '.join(sorted(missing)[:5])}"
                f"{' ...' if len(missing) > 5 else ''}); is it a D-BETA checkpoint? (use --random-init for the "
                f"random-weights baseline)"
            )
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def load_feature_extractor(model: str) -> DBetaFeatureExtractor:
    """The model's own feature extractor (processor_config.json / preprocessor_config.json of `model`)."""
    try:
        return DBetaFeatureExtractor.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{model}: no D-BETA processor config found ({type(err).__name__}: {err}); the probe conditions "
            f"signals with the model's own processor. Export the model with train.export.export_model(..., "
            f"processor=...) so the folder holds processor_config.json."
        ) from err


def weights_fingerprint(module: torch.nn.Module, skip_prefixes: Sequence[str] = HEAD_PREFIXES) -> str:
    """A BLAKE2b digest of every parameter and buffer (name, dtype, shape, bytes) outside `skip_prefixes`."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        if name.startswith(tuple(skip_prefixes)):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# Features (extracted once per split, cached)
# ------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(encoder: DBetaForECGClassification, fe: DBetaFeatureExtractor, dataset,
                     protocol_num_samples: Optional[int] = None, batch_size: int = 64, num_workers: int = 0,
                     dtype: torch.dtype = torch.float32, desc: str = "features") -> np.ndarray:
    """`get_ecg_features` of every record of `dataset`, in order: float32 [n, hidden].

    Records go through eval.features.dataset_ecg_features (the model's processor in DataLoader workers, the
    protocol cut, errors naming the record); `dtype` bfloat16 runs the encoder under autocast."""
    encoder.eval()
    device = next(encoder.parameters()).device
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    with autocast:
        return dataset_ecg_features(encoder, fe, dataset, batch_size=batch_size, num_workers=num_workers,
                                    protocol_num_samples=protocol_num_samples, on_error="raise", desc=desc)


def records_fingerprint(dataset) -> str:
    """Digest of the record ids, the label matrix and the size and mtime of the files each record is read from
    (`dataset.record_files(i)`: a WFDB header and its signal file, a CPSC .mat, CODE-test's HDF5 file)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\n".join(dataset.record_ids).encode())
    digest.update(np.ascontiguousarray(dataset.labels_matrix(), dtype=np.float32).tobytes())
    files_of = getattr(dataset, "record_files", None)
    if files_of is not None:
        for i in range(len(dataset)):
            for path in files_of(i):
                st = os.stat(path)
                digest.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            digest.update(b"|")
    return digest.hexdigest()


def feature_cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def cached_features(encoder, fe, dataset, split: str, cache_dir: Optional[Path], model_fingerprint: str,
                    protocol_num_samples: Optional[int] = None, batch_size: int = 64, num_workers: int = 0,
                    dtype: torch.dtype = torch.float32) -> tuple:
    """(features [n, hidden], info) for one split, from `cache_dir` when a file with the same key exists.

    info: path, hit (bool), key, seconds (extraction or load time)."""
    from safetensors.numpy import load_file, save_file

    fields = {
        "format": CACHE_FORMAT,
        "model": model_fingerprint,
        "dataset": getattr(dataset, "name", type(dataset).__name__),
        "task": getattr(dataset, "task", None),
        "split": split,
        "root": str(Path(getattr(dataset, "root", "")).resolve()),
        "records": records_fingerprint(dataset),
        "n": len(dataset),
        "processor": processor_settings(fe),
        "protocol_num_samples": protocol_num_samples,
        "dtype": str(dtype),
    }
    key = feature_cache_key(fields)
    start = time.perf_counter()
    path = None
    if cache_dir is not None:
        task = f"-{fields['task']}" if fields["task"] else ""
        path = Path(cache_dir) / f"{fields['dataset']}{task}-{split}-{key[:24]}.safetensors"
        if path.is_file():
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="numpy") as f:
                    stored_key = (f.metadata() or {}).get("key")
                if stored_key == key:
                    features = load_file(str(path))["features"]
                    if features.shape[0] == len(dataset):
                        logger.info("%s: cached features %s", split, path)
                        return features, {"path": str(path), "hit": True, "key": key,
                                          "seconds": time.perf_counter() - start}
                logger.warning("%s: cache file %s does not match; recomputing", split, path)
            except Exception as err:  # a damaged file is recomputed, never trusted
                logger.warning("%s: unreadable cache file %s (%s); recomputing", split, path, err)
    features = extract_features(encoder, fe, dataset, protocol_num_samples, batch_size, num_workers, dtype,
                                desc=f"{fields['dataset']}{'/' + fields['task'] if fields['task'] else ''} {split}")
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"features": np.ascontiguousarray(features, dtype=np.float32),
                   "labels": np.ascontiguousarray(dataset.labels_matrix(), dtype=np.float32)}
        # one temporary name per file: what a stopped run left is overwritten by the next, never left to pile up
        write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata={
            "key": key, "fields": json.dumps(fields, sort_keys=True, default=str)}))
    return features, {"path": str(path) if path else None, "hit": False, "key": key, "seconds": seconds}


# ------------------------------------------------------------------------------------------------------------
# Subsets and the linear head
# ------------------------------------------------------------------------------------------------------------


def train_subset_size(n: int, fraction: float) -> int:
    """floor(fraction * n) records, at least one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fractions must be in (0, 1], got {fraction}")
    return max(1, math.floor(fraction * n))


def train_subset_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the training subset: `train_test_split(range(n), train_size=floor(fraction * n),
    random_state=seed)` (no stratification; at least one record); all of them, in order, for fraction 1."""
    from sklearn.model_selection import train_test_split

    k = train_subset_size(n, fraction)
    if k >= n:
        return np.arange(n)
    subset, _ = train_test_split(np.arange(n), train_size=k, random_state=seed, shuffle=True)
    return np.asarray(subset)


def train_linear_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      x_test: np.ndarray, y_test: np.ndarray, epochs: int = 100, batch_size: int = 16,
                      lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 42) -> dict:
    """Train one linear layer with BCE on (x_train, y_train); val and test AUC after every epoch.

    Returns dict: train_loss, val_auc, test_auc (one per epoch), val_per_class and test_per_class
    ([epochs, classes], NaN for classes a split cannot score), best_epoch (0-based: the first epoch with the
    best val macro AUC) and best_test_scores (the test logits [n_test, classes] at that epoch)."""
    xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.float32)
    xv, xs = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(x_test, dtype=torch.float32)
    # Features standardised with the training subset's mean and std (MAE's linear probe puts a BatchNorm without
    # affine before the head): on uncentred features Adam learns the class prior through the weights along their
    # common offset and can rank a class backwards (a class told apart by a larger feature norm scored AUC 0.0
    # where logistic regression scores 1.0). The head stays linear in the raw features.
    # A feature constant over the subset tells the head nothing; divided by a clamped std it would blow val and test
    # up a millionfold along a weight that never trained, so it is left out (scale 0).
    mean, std = xt.mean(dim=0), xt.std(dim=0, unbiased=False)
    scale = torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.zeros_like(std))
    xt, xv, xs = (xt - mean) * scale, (xv - mean) * scale, (xs - mean) * scale
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(xt.shape[1], yt.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history = {"train_loss": [], "val_auc": [], "test_auc": [], "val_per_class": [], "test_per_class": [],
               "best_epoch": 0, "best_test_scores": None}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-16 steps of one linear layer: threads only add synchronisation
    try:
        _fit_head(head, optimizer, loss_fn, generator, xt, yt, xv, xs, y_val, y_test, epochs, batch_size, history)
    finally:
        torch.set_num_threads(threads)
    return history


def _fit_head(head, optimizer, loss_fn, generator, xt, yt, xv, xs, y_val, y_test, epochs, batch_size, history):
    best_val = -math.inf
    n = xt.shape[0]
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(head(xt[idx]), yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().item() * len(idx)
        head.eval()
        with torch.no_grad():
            val_scores, test_scores = head(xv).numpy(), head(xs).numpy()
        val_pc, test_pc = per_class_auc(y_val, val_scores), per_class_auc(y_test, test_scores)
        val_auc = float(np.nanmean(val_pc)) if np.isfinite(val_pc).any() else float("nan")
        history["train_loss"].append(total / max(n, 1))
        history["val_per_class"].append(val_pc)
        history["test_per_class"].append(test_pc)
        history["val_auc"].append(val_auc)
        history["test_auc"].append(float(np.nanmean(test_pc)) if np.isfinite(test_pc).any() else float("nan"))
        if history["best_test_scores"] is None or (np.isfinite(val_auc) and val_auc > best_val):
            best_val = val_auc if np.isfinite(val_auc) else best_val
            history["best_epoch"], history["best_test_scores"] = epoch, test_scores.copy()


def _select_epoch(values: Sequence[float]) -> int:
    """Index of the first maximum, ignoring NaN (0 when every value is NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).any():
        return 0
    return int(np.nanargmax(arr))


def _nan_to_none(values) -> list:
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


def _mean_std(values: Sequence[float]) -> tuple:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def probe_run(features: Dict[str, np.ndarray], labels: Dict[str, np.ndarray], class_names: Sequence[str],
              fraction: float, seed: int, epochs: int, batch_size: int, lr: float, weight_decay: float,
              bootstrap: int = 1000) -> tuple:
    """One fraction x seed: subset, train the head, select the epoch on val.

    Returns (the run's JSON record, the test scores at the selected epoch)."""
    start = time.perf_counter()
    idx = train_subset_indices(len(features["train"]), fraction, seed)
    if len(idx) < 2:  # every caller (the probe, lead subsets, the int8 check) passes here
        raise ValueError(f"fraction {fraction:g} of {len(features['train'])} training records leaves {len(idx)}: a "
                         "linear head needs at least 2 records")
    y_sub = labels["train"][idx]
    history = train_linear_head(features["train"][idx], y_sub, features["val"], labels["val"], features["test"],
                                labels["test"], epochs, batch_size, lr, weight_decay, seed)
    best = history["best_epoch"]
    assert best == _select_epoch(history["val_auc"])
    best_test = _select_epoch(history["test_auc"])
    scores = history["best_test_scores"]
    report = auc_report(labels["test"], scores, class_names, n_resamples=bootstrap, seed=seed)
    positives = y_sub.sum(axis=0)
    record = {
        "fraction": fraction,
        "seed": seed,
        "n_train": int(len(idx)),
        "train_positives": {c: int(p) for c, p in zip(class_names, positives)},
        "classes_without_train_positives": [c for c, p in zip(class_names, positives) if p == 0],
        # as unlearnt: a head that saw only positives for a class (a small fraction of a common one)
        "classes_without_train_negatives": [c for c, p in zip(class_names, positives) if p == len(idx)],
        "best_epoch": best + 1,
        "val_auc": _nan_to_none([history["val_auc"][best]])[0],
        "test_auc": report["macro_auc"],
        "test_auc_ci": report["macro_auc_ci"],
        "test_auprc": report["macro_auprc"],
        "test_auprc_ci": report["macro_auprc_ci"],
        "per_class_test_auc": report["per_class_auc"],
        "per_class_test_auc_ci": report["per_class_ci"],
        "per_class_test_auprc": report["per_class_auprc"],
        "per_class_test_auprc_ci": report["per_class_auprc_ci"],
        "comparison_only_max_test_auc": _nan_to_none([history["test_auc"][best_test]])[0],
        "comparison_only_max_test_epoch": best_test + 1,
        "history": {
            "epoch": list(range(1, epochs + 1)),
            "train_loss": [float(v) for v in history["train_loss"]],
            "val_auc": _nan_to_none(history["val_auc"]),
            "test_auc": _nan_to_none(history["test_auc"]),
        },
        "seconds": time.perf_counter() - start,
    }
    return record, scores


def summarize(runs: List[dict], fractions: Sequence[float], class_names: Sequence[str]) -> List[dict]:
    """Mean and std (ddof=1; 0 for one seed) over seeds, per fraction."""
    rows = []
    for fraction in fractions:
        group = [r for r in runs if r["fraction"] == fraction]
        test_mean, test_std = _mean_std([r["test_auc"] for r in group])
        auprc_mean, auprc_std = _mean_std([r["test_auprc"] for r in group])
        val_mean, val_std = _mean_std([r["val_auc"] for r in group])
        max_mean, max_std = _mean_std([r["comparison_only_max_test_auc"] for r in group])
        per_class, per_class_auprc = {}, {}
        for c in class_names:
            mean, std = _mean_std([r["per_class_test_auc"][c] for r in group if r["per_class_test_auc"][c] is not None])
            per_class[c] = {"mean": mean, "std": std}
            mean, std = _mean_std([r["per_class_test_auprc"][c] for r in group
                                   if r["per_class_test_auprc"][c] is not None])
            per_class_auprc[c] = {"mean": mean, "std": std}
        rows.append({
            "fraction": fraction,
            "n_train": sorted({r["n_train"] for r in group}),
            "seeds": [r["seed"] for r in group],
            "test_auc_mean": test_mean,
            "test_auc_std": test_std,
            "test_auprc_mean": auprc_mean,
            "test_auprc_std": auprc_std,
            "val_auc_mean": val_mean,
            "val_auc_std": val_std,
            "best_epochs": [r["best_epoch"] for r in group],
            "comparison_only_max_test_auc_mean": max_mean,
            "comparison_only_max_test_auc_std": max_std,
            "per_class_test_auc": per_class,
            "per_class_test_auprc": per_class_auprc,
            **{key: sorted({c for r in group for c in r[key]}) for key in ONE_VALUED_KEYS},
        })
    return rows


# ------------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------------


def _pct(v: Optional[float], std: Optional[float] = None) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def render_markdown(result: dict) -> str:
    task = f" / {result['task']}" if result.get("task") else ""
    kind = "random-init baseline of " if result["random_init"] else ""
    lines = [
        f"# Linear probe: {kind}{result['model']} on {result['dataset']}{task}",
        "",
        f"Frozen encoder ({result['feature_dim']}-d features), one linear layer, BCE, Adam lr {result['protocol']['lr']:g}, "
        f"weight decay {result['protocol']['weight_decay']:g}, batch {result['protocol']['batch_size']}, "
        f"{result['protocol']['epochs']} epochs. Train/val/test = "
        + " / ".join(str(result["splits"][s]["n"]) for s in SPLIT_NAMES)
        + " records. Macro ROC AUC (AUROC) and macro average precision (AUPRC; chance = prevalence) ×100, "
        "mean ± std over seeds; the epoch is selected on val AUROC.",
        "",
        "| fraction | n train | seeds | test AUC (val-selected) | test AUPRC (val-selected) | val AUC | best epoch "
        "| max-over-epochs test AUC (comparison only) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['fraction']:g} | {', '.join(map(str, row['n_train']))} | {len(row['seeds'])} | "
            f"**{_pct(row['test_auc_mean'], row['test_auc_std'])}** | {_pct(row['test_auprc_mean'], row['test_auprc_std'])} | "
            f"{_pct(row['val_auc_mean'], row['val_auc_std'])} | "
            f"{', '.join(map(str, row['best_epochs']))} | {_pct(row['comparison_only_max_test_auc_mean'], row['comparison_only_max_test_auc_std'])} |"
        )
    lines += [
        "",
        "The max-over-epochs column picks the epoch on the test set (MERL's script does); it is shown only to "
        "compare with published tables. The val-selected column is the result.",
        "",
        "## Runs",
        "",
        "| fraction | seed | n train | test AUC (val-selected) | 95% CI (bootstrap over test records) | test AUPRC "
        "| 95% CI | best epoch | max-over-epochs test AUC (comparison only) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ci_text(ci):
        ci = ci or {}
        return f"{_pct(ci['low'])} – {_pct(ci['high'])}" if ci.get("low") is not None else "n/a"

    for run in result["runs"]:
        lines.append(f"| {run['fraction']:g} | {run['seed']} | {run['n_train']} | {_pct(run['test_auc'])} | "
                     f"{ci_text(run.get('test_auc_ci'))} | {_pct(run['test_auprc'])} | "
                     f"{ci_text(run.get('test_auprc_ci'))} | {run['best_epoch']} | "
                     f"{_pct(run['comparison_only_max_test_auc'])} |")
    test_pos = result["splits"]["test"]["positives"]
    for label, key in (("AUC", "per_class_test_auc"), ("AUPRC", "per_class_test_auprc")):
        lines += [
            "",
            f"## Per-class test {label} (val-selected epoch, mean over seeds)",
            "",
            "| class | test positives | " + " | ".join(f"{row['fraction']:g}" for row in result["summary"]) + " |",
            "| --- | --- | " + " | ".join("---" for _ in result["summary"]) + " |",
        ]
        for c in result["class_names"]:
            cells = [_pct(row[key][c]["mean"]) for row in result["summary"]]
            lines.append(f"| {c} | {test_pos[c]} | " + " | ".join(cells) + " |")
    notes = []
    train = result["splits"]["train"]
    for key, kind in ONE_VALUED_KEYS.items():
        none_of_kind = 0 if kind == "positive" else train["n"]
        absent = [c for c in result["class_names"] if train["positives"][c] == none_of_kind]
        if absent:
            notes.append(f"- the train split has no {kind} for {', '.join(absent)}.")
        for row in result["summary"]:
            lost = [c for c in row.get(key, []) if c not in absent]
            if lost:
                notes.append(f"- fraction {row['fraction']:g}: the subset of at least one seed has no {kind} for "
                             f"{', '.join(lost)} (present in the full train split); its test score is not learnt.")
    for split in ("val", "test"):
        if result["splits"][split]["unscorable_classes"]:
            notes.append(f"- {split}: {', '.join(result['splits'][split]['unscorable_classes'])} cannot be scored "
                         f"(no positives or no negatives) and are left out of the macro AUC and AUPRC.")
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"


def plot_history(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [row["fraction"] for row in result["summary"]]
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 3.4), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        for i, run in enumerate(r for r in result["runs"] if r["fraction"] == fraction):
            h = run["history"]
            color = f"C{i % 10}"
            val = [np.nan if v is None else v for v in h["val_auc"]]
            test = [np.nan if v is None else v for v in h["test_auc"]]
            ax.plot(h["epoch"], val, color=color, lw=1.2, label=f"val (seed {run['seed']})")
            ax.plot(h["epoch"], test, color=color, lw=1.2, ls="--", label=f"test (seed {run['seed']})")
            ax.axvline(run["best_epoch"], color=color, lw=0.8, ls=":")
        ax.set_title(f"{fraction:g} of train")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("macro AUC")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    task = f"/{result['task']}" if result.get("task") else ""
    fig.suptitle(f"linear probe {result['dataset']}{task} ({'random init' if result['random_init'] else result['model']})"
                 " — dotted: val-selected epoch", fontsize=9)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dbeta" / "probe_features"


def check_fraction(value) -> float:
    """A training fraction as a float in (0, 1]; ValueError otherwise (0 trains on nothing, > 1 on more than
    the split holds)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a fraction must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < f <= 1.0:  # NaN fails this too
        raise ValueError(f"a fraction must be in (0, 1], got {value!r}")
    return f


def run_probe(model: str, dataset: str, data_root, task: Optional[str] = None,
              fractions: Sequence[float] = DEFAULT_FRACTIONS, seeds: Sequence[int] = (42,), epochs: int = 100,
              batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 1e-4, cache_dir=None,
              no_cache: bool = False, random_init: bool = False, init_seed: int = 42,
              protocol_num_samples="auto", feature_batch_size: int = 64, num_workers: int = 0,
              threads: Optional[int] = None, dtype: str = "fp32", device: Optional[str] = None,
              bootstrap: int = 1000) -> tuple:
    """Extract (or load) the features, run every fraction x seed. Returns (result dict, extras) where extras
    holds the test labels and each run's val-selected test scores (for the ROC plots; not in the JSON)."""
    from eval.datasets import load_downstream

    t0 = time.perf_counter()
    fractions = [check_fraction(f) for f in fractions]
    seeds = [int(v) for v in seeds]
    if not fractions or not seeds:
        raise ValueError("give at least one fraction and one seed")
    for name, values in (("fraction", fractions), ("seed", seeds)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:  # one run counted twice would halve its std and weigh its mean
            raise ValueError(f"each {name} once: {', '.join(f'{v:g}' for v in repeated)} repeated")
    if epochs < 1 or batch_size < 1 or feature_batch_size < 1:
        raise ValueError("epochs, batch_size and feature_batch_size must be positive")
    if bootstrap < 0 or num_workers < 0:
        raise ValueError("bootstrap and num_workers must be >= 0")
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    datasets = {split: load_downstream(dataset, data_root, split=split, task=task)
                for split in SPLIT_NAMES}
    class_names = list(datasets["train"].class_names)
    for split, ds in datasets.items():
        if list(ds.class_names) != class_names:
            raise ValueError(f"{dataset}: the {split} split has other classes than train")
        if len(ds) == 0:
            raise ValueError(f"{dataset}: the {split} split under {data_root} is empty")
    for fraction in fractions:  # one record has no spread to standardise by, nor anything to contrast
        if train_subset_size(len(datasets["train"]), fraction) < 2:
            raise ValueError(f"{dataset}: fraction {fraction:g} of the {len(datasets['train'])} training records is "
                             f"{train_subset_size(len(datasets['train']), fraction)} record: a linear head needs at "
                             f"least 2; give a fraction of at least {2 / len(datasets['train']):.3g}")
    for split in ("val", "test"):  # val selects the epoch, test is the result: both need a scorable class
        if not evaluable_classes(datasets[split].labels_matrix()).any():
            raise ValueError(f"{dataset}: no class has both a positive and a negative record in the {split} split "
                             f"({len(datasets[split])} records under {data_root}); its macro AUC is undefined")

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = load_encoder(model, random_init=random_init, init_seed=init_seed).to(device)
    fe = load_feature_extractor(model)
    fe.check_model_input(encoder.config.ecg_config, str(model))
    fingerprint = weights_fingerprint(encoder)
    protocol_n = resolve_protocol_num_samples(datasets["train"], protocol_num_samples, fe)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    cache_dir = None if no_cache else Path(cache_dir or default_cache_dir())
    torch.set_num_threads(max(1, threads or torch.get_num_threads()))

    features, labels, split_info = {}, {}, {}
    for split in SPLIT_NAMES:
        ds = datasets[split]
        features[split], info = cached_features(encoder, fe, ds, split, cache_dir, fingerprint, protocol_n,
                                                feature_batch_size, num_workers, torch_dtype)
        labels[split] = ds.labels_matrix()
        pos = labels[split].sum(axis=0)
        split_info[split] = {
            "n": len(ds),
            "positives": {c: int(p) for c, p in zip(class_names, pos)},
            "unscorable_classes": [c for c, p in zip(class_names, pos) if p == 0 or p == len(ds)],
            "cache": info,
        }
        logger.info("%s: %d records, features %s (%s, %.1f s)", split, len(ds), features[split].shape,
                    "cached" if info["hit"] else "extracted", info["seconds"])

    runs, test_scores = [], {}
    for fraction in fractions:
        for seed in seeds:
            run, scores = probe_run(features, labels, class_names, fraction, seed, epochs, batch_size,
                                    lr, weight_decay, bootstrap)
            test_scores[(fraction, seed)] = scores
            for key, kind in ONE_VALUED_KEYS.items():
                if run[key]:
                    logger.warning("fraction %g seed %d: no training %s for %s (its test score is not learnt)",
                                   fraction, seed, kind, ", ".join(run[key]))
            logger.info("fraction %g seed %d: n=%d test AUC %.4f (val-selected, epoch %d); max-over-epochs %.4f",
                        fraction, seed, run["n_train"], run["test_auc"], run["best_epoch"],
                        run["comparison_only_max_test_auc"])
            runs.append(run)

    import sklearn
    import transformers

    result = {
        "schema": SCHEMA,
        "model": str(model),
        "random_init": bool(random_init),
        "init_seed": init_seed if random_init else None,
        "model_fingerprint": fingerprint,
        "dataset": datasets["train"].name or dataset,
        "task": task,
        "data_root": str(data_root),
        "class_names": class_names,
        "feature_dim": int(features["train"].shape[1]),
        "processor": processor_settings(fe),
        "protocol_num_samples": protocol_n,
        "feature_dtype": dtype,
        "protocol": {
            "head": "nn.Linear(feature_dim, classes)",
            "features": "standardised with the training subset's per-dimension mean and std",
            "loss": "BCEWithLogitsLoss (multi-label)",
            "optimizer": "Adam",
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "epochs": epochs,
            "fractions": fractions,
            "seeds": list(seeds),
            "subset": "sklearn train_test_split(train, train_size=floor(fraction*n), random_state=seed), no stratification",
            "selection": "epoch with the best val macro AUC (first on ties); test AUC at that epoch",
            "macro_auc": "mean of per-class ROC AUCs over classes with positives and negatives in the split",
            "macro_auprc": "mean of per-class average precision (sklearn) over the same classes",
            "std": "ddof=1 over seeds (0 for one seed)",
            "ci": f"per run: percentile bootstrap over test records, {bootstrap} resamples, seeded by the run's seed",
        },
        "splits": split_info,
        "runs": runs,
        "summary": summarize(runs, fractions, class_names),
        "timing": {
            "feature_seconds": {s: split_info[s]["cache"]["seconds"] for s in SPLIT_NAMES},
            "head_seconds": sum(r["seconds"] for r in runs),
            "total_seconds": None,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sklearn": sklearn.__version__,
            "threads": torch.get_num_threads(),
            "device": str(device),
        },
    }
    result["timing"]["total_seconds"] = time.perf_counter() - t0
    return result, {"test_labels": labels["test"], "test_scores": test_scores}


def write_outputs(result: dict, output: Path, plot: bool = True, extras: Optional[dict] = None) -> Dict[str, Path]:
    """FILE.json, FILE.md and, with `plot`, FILE.png (AUC per epoch) and FILE.roc-<fraction>.png (ROC curves of
    the first seed's val-selected head on test, when `extras` holds the scores)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    retract_result(output)  # the old set goes first, the index comes back last (train.folders.write_result)
    md = output.with_suffix(".md")
    paths = {"json": output, "markdown": md}
    if plot:
        paths["plot"] = plot_history(result, output.with_suffix(".png"))
        if extras:
            from eval.plots import plot_roc_curves

            for row in result["summary"]:
                fraction, seed = row["fraction"], row["seeds"][0]
                path = output.with_name(f"{output.stem}.roc-{fraction:g}.png")
                task = f"/{result['task']}" if result.get("task") else ""
                paths[f"roc_{fraction:g}"] = plot_roc_curves(
                    extras["test_labels"], extras["test_scores"][(fraction, seed)], result["class_names"], path,
                    title=f"linear probe {result['dataset']}{task}, {fraction:g} of train, seed {seed} (test)",
                    max_classes=20)
    result["outputs"] = {k: str(v) for k, v in paths.items()}
    write_result(output, json.dumps(result, indent=2, allow_nan=False), [(md, render_markdown(result))],
                 retract_first=False)
    return paths


def run_linear_probe(*, model: str, dataset: str, data_root, output=None, task: Optional[str] = None,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, seeds: Sequence[int] = (42,),
                     plot: bool = True, **options) -> dict:
    """The linear probe as a function: features, every fraction x seed, and (with `output`) FILE.json, FILE.md
    and the plots. Returns the result dict (the JSON; `result["outputs"]` lists the files written).

    `options` are run_probe's other keywords (epochs, batch_size, lr, weight_decay, cache_dir, no_cache,
    random_init, init_seed, protocol_num_samples, feature_batch_size, num_workers, threads, dtype, device,
    bootstrap), with the CLI's defaults. Bad arguments and data raise ValueError / FileNotFoundError naming
    what is wrong."""
    from eval.outputs import check_json_output

    output = check_json_output(output, reads=(model, data_root))
    result, extras = run_probe(model, dataset, data_root, task=task, fractions=fractions, seeds=seeds, **options)
    if output is not None:
        write_outputs(result, Path(output), plot=plot, extras=extras)
    return result


def fraction_arg(value: str) -> float:
    try:
        return check_fraction(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.linear_probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported D-BETA folder or Hub repo id")
    p.add_argument("--dataset", required=True, choices=PROBE_DATASETS)
    p.add_argument("--data-root", required=True, help="the dataset's folder (see eval.datasets)")
    p.add_argument("--task", default=None, help="PTB-XL task: super, sub, form or rhythm")
    p.add_argument("--output", required=True, help="result JSON; .md and .png are written beside it")
    p.add_argument("--fractions", type=fraction_arg, nargs="+", default=list(DEFAULT_FRACTIONS),
                   help="training fractions, each in (0, 1]")
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--cache-dir", default=None, help=f"feature cache (default {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    p.add_argument("--random-init", action="store_true",
                   help="probe the architecture with random weights (built from the model's config)")
    p.add_argument("--init-seed", type=int, default=42, help="seed of the --random-init weights")
    p.add_argument("--protocol-num-samples", default="auto", type=protocol_num_samples_arg,
                   help="'auto' (the dataset's protocol length, CPSC2018: 2500), 'none', or a number of samples")
    p.add_argument("--feature-batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers that read and condition records")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="encoder precision for features")
    p.add_argument("--device", default=None, help="device of the encoder (default: cuda if available, else cpu)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the test AUC CI of each run (0: no CI)")
    p.add_argument("--no-plot", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """The CLI: parse, then run_linear_probe; a data or argument error exits 2 with its message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.feature_batch_size < 1:
        parser.error("--epochs, --batch-size and --feature-batch-size must be positive")
    if args.bootstrap < 0 or args.num_workers < 0:
        parser.error("--bootstrap and --num-workers must be >= 0")
    if not all(0 <= seed < 2**32 for seed in args.seeds + [args.init_seed]):
        parser.error("--seeds and --init-seed must be whole numbers from 0 to 2**32 - 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    options = vars(args)
    plot = not options.pop("no_plot")
    try:
        result = run_linear_probe(plot=plot, **options)
    except (FileNotFoundError, ValueError, RecordError, OSError) as err:
        # the loaders' messages name the dataset, folder or file: print them without a traceback
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2)
    for row in result["summary"]:
        print(f"fraction {row['fraction']:g}: test macro AUC {_pct(row['test_auc_mean'], row['test_auc_std'])}, "
              f"AUPRC {_pct(row['test_auprc_mean'], row['test_auprc_std'])} (val-selected; max-over-epochs AUC, "
              f"comparison only: {_pct(row['comparison_only_max_test_auc_mean'])})")
    print("wrote " + ", ".join(result["outputs"].values()))
    return result


if __name__ == "__main__":
    main()
