"""From a prepared dataset folder to the pretraining and validation batch streams."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Optional

import torch

from train.settings import CollatorSettings, ConfigError, DataSettings

logger = logging.getLogger("train.pretrain_data")


def load_splits(path):
    """The prepared DatasetDict: a save_to_disk folder, or train.prepare_mimic's OUTPUT folder."""
    from datasets import load_from_disk

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data.dataset {p} does not exist")
    if (p / "dataset_dict.json").is_file():
        return load_from_disk(str(p))
    from train.mimic import load_prepared_mimic

    return load_prepared_mimic(p)


def as_rows(dataset):
    """The dataset with only the columns the collator reads, as numpy."""
    from train.collator import ROW_COLUMNS

    columns = [c for c in dataset.column_names if c in ROW_COLUMNS]
    if "report" not in columns:
        raise ConfigError(f"the dataset has no 'report' column (columns: {dataset.column_names})")
    return dataset.with_format("numpy", columns=columns)


def select_splits(d: DataSettings):
    """(train rows, validation rows or None). A missing or empty validation split means no validation."""
    splits = load_splits(d.dataset)
    if d.train_split not in splits:
        raise ConfigError(f"{d.dataset} has no {d.train_split!r} split (has {list(splits)})")
    train_ds = splits[d.train_split]
    if d.max_train_samples:
        train_ds = train_ds.select(range(min(len(train_ds), d.max_train_samples)))
    if len(train_ds) == 0:
        raise ConfigError(f"the {d.train_split!r} split of {d.dataset} is empty")
    val_ds = splits[d.validation_split] if d.validation_split in splits else None
    if val_ds is None or len(val_ds) == 0:
        logger.warning("no %r split (or an empty one) in %s: validation is skipped", d.validation_split, d.dataset)
        return as_rows(train_ds), None
    if d.max_val_samples:
        val_ds = val_ds.select(range(min(len(val_ds), d.max_val_samples)))
    return as_rows(train_ds), as_rows(val_ds)


def negative_samplers(n3s: Optional[str], train_rows, val_rows):
    """(training sampler, validation sampler or None, description)."""
    from train.collator import FallbackNegativeSampler, RandomReportSampler

    if n3s:
        from train.n3s import N3STable

        train_sampler, described = N3STable.load(n3s), f"N3S table {n3s}"
    else:
        logger.warning("no N3S table (data.n3s): negatives are uniformly drawn other reports of the training split")
        train_sampler = RandomReportSampler(train_rows.with_format(None)["report"])
        described = "random other reports (no N3S table)"
    val_sampler = None
    if val_rows is not None:
        try:  # a validation report the N3S table does not know gets another validation report as its negative
            val_sampler = FallbackNegativeSampler(train_sampler,
                                                  RandomReportSampler(val_rows.with_format(None)["report"]))
        except ValueError:  # fewer than two distinct validation reports
            val_sampler = train_sampler
    return train_sampler, val_sampler, described


def build_collators(processor, c: CollatorSettings, max_length: int, seed: int, train_sampler, val_sampler):
    from train.collator import PretrainingCollator

    common = dict(p_neg=c.p_neg, mlm_probability=c.mlm_probability, max_length=max_length, mask_token=c.mask_token)
    train = PretrainingCollator(processor, train_sampler, train=True, lead_mask_prob=c.lead_mask_prob, seed=seed,
                                **common)
    val = None
    if val_sampler is not None:
        val = PretrainingCollator(processor, val_sampler, train=False, lead_mask_prob=0.0, seed=seed + 1,
                                  return_report_tokens=True, **common)
    return train, val


def _worker_init(_):
    """DataLoader workers: one thread each, and deaf to SIGINT/SIGTERM. Ctrl-C and a launcher's shutdown signal the
    whole process group; the main process decides when to stop and shuts the workers down itself."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_loader(rows, collator, batch_size: int, seed: int, rank: int, world: int, start: int, workers: int):
    """The endless, sharded, resumable micro-batch stream (its sampler tells epochs apart)."""
    from torch.utils.data import DataLoader

    from train.collator import BatchCollate, RowsWithBatchId, ShardedBatchSampler

    sampler = ShardedBatchSampler(len(rows), batch_size, seed=seed, rank=rank, world=world, start=start)
    loader = DataLoader(RowsWithBatchId(rows), batch_sampler=sampler, collate_fn=BatchCollate(collator),
                        num_workers=workers, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    return loader, sampler
