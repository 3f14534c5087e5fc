"""From a prepared dataset folder, or straight from a MIMIC-IV-ECG folder, to the pretraining and validation batch
streams.

Straight from the files (data.mimic_root): the record list and the reports (two CSVs, no signal) are read once into an
in-memory table; each training record's signal is read from its .hea/.dat when a batch asks for it, so the corpus
never needs a second copy. The rows are indexed like a prepared split, which keeps every guarantee of that path: the
same seeded global shuffle and sharding (ShardedBatchSampler), DataLoader workers, and an exact resume. The split is
prepare_mimic's (`train.mimic.subject_split` on (split_seed, subject_id)); the validation rows (max_val_samples of
them) are read once at the start. A record that fails to read at training time (a missing, truncated or corrupt
file: the checks prepare_mimic makes) is replaced in its batch by another training record chosen from (seed, batch,
slot), with a warning naming it: the batches stay a pure function of (seeds, position) while the folder is unchanged.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Optional

import torch

from train.settings import CollatorSettings, ConfigError, DataSettings

logger = logging.getLogger("train.pretrain_data")


ARROW_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the last 8 bytes of every complete Arrow IPC stream


def load_splits(path):
    """The prepared DatasetDict: a save_to_disk folder, or train.prepare_mimic's OUTPUT folder. A split file cut short
    (a copy or disk that ran out), a folder that does not load, or split sizes that differ from prepare_mimic's
    summary.json beside the dataset are refused with ConfigError naming the folder: Arrow reads a file cut at a
    record-batch boundary as a shorter, valid one."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data.dataset {p} does not exist")
    plain = (p / "dataset_dict.json").is_file()
    if not plain and not (p / "dataset" / "dataset_dict.json").is_file():
        raise ConfigError(f"data.dataset {p} is neither a save_to_disk DatasetDict nor the output folder of a finished "
                          "python -m train.prepare_mimic")
    try:
        return load_saved_dataset(p if plain else p / "dataset")
    except ConfigError as err:
        raise ConfigError(f"data.dataset {err}") from None
    except Exception as err:  # noqa: BLE001 - datasets and pyarrow raise their own (OSError, ArrowInvalid, KeyError)
        raise ConfigError(f"data.dataset {p} cannot be loaded ({type(err).__name__}: {str(err)[:300]}); prepare it "
                          "again") from None


def load_saved_dataset(folder):
    """datasets.load_from_disk(folder), a Dataset or a DatasetDict, refusing (ConfigError naming the folder) what it
    would read wrongly without a word: a file cut at an Arrow record-batch boundary reads as a shorter, valid one,
    so every .arrow file must end complete, and a DatasetDict beside prepare_mimic's summary.json (its OUTPUT/dataset)
    must hold the rows it records. load_from_disk's own errors pass through."""
    from datasets import DatasetDict, load_from_disk

    folder = Path(folder)
    _check_arrow_files(folder)
    data = load_from_disk(str(folder))
    if isinstance(data, DatasetDict):
        from train.mimic import summary_of, warn_if_other_format

        summary = folder.parent / "summary.json"
        recorded = summary_of(summary, folder.name)
        _check_against_summary(data, folder, summary, recorded)
        warn_if_other_format(recorded, folder.parent)
    return data


def _check_arrow_files(folder: Path) -> None:
    """Each .arrow file (a DatasetDict's in its split folders, a Dataset's beside its state.json) ends with the Arrow
    end-of-stream marker (a file cut short does not)."""
    files = [*folder.glob("*.arrow"), *folder.glob("*/*.arrow")] if folder.is_dir() else []
    for arrow in sorted(files):
        try:
            size = arrow.stat().st_size
            with open(arrow, "rb") as f:
                f.seek(max(size - len(ARROW_END_OF_STREAM), 0))
                tail = f.read()
        except OSError as err:
            raise ConfigError(f"{folder}: cannot read {arrow} ({err})") from None
        if tail != ARROW_END_OF_STREAM and not tail.endswith(b"ARROW1"):  # a stream, or Arrow's file format
            raise ConfigError(f"{folder}: {arrow} is cut short (no Arrow end-of-stream marker: a copy "
                              "or a disk that ran out of room); copy it again, or prepare it again (a prepared MIMIC "
                              "dataset: python -m train.prepare_mimic --restart)")


def _check_against_summary(splits, folder: Path, summary: Path, recorded) -> None:
    """The split sizes prepare_mimic's summary.json (`recorded`, read by train.mimic.summary_of) records, when it is
    the summary of this dataset folder."""
    from train.mimic import split_size_mismatches

    wrong = split_size_mismatches(splits, recorded)
    if wrong:
        raise ConfigError(f"{folder} does not hold the rows {summary} records ({'; '.join(wrong)}): "
                          "files were lost or cut short; copy it again, or prepare it again (python -m "
                          "train.prepare_mimic --restart)")


def as_rows(dataset):
    """The dataset with only the columns the collator reads, as numpy."""
    from train.collator import ROW_COLUMNS

    columns = [c for c in dataset.column_names if c in ROW_COLUMNS]
    if "report" not in columns:
        raise ConfigError(f"the dataset has no 'report' column (columns: {dataset.column_names})")
    return dataset.with_format("numpy", columns=columns)


def select_splits(d: DataSettings):
    """(train rows, validation rows or None, every report of the training split: the rows are its first
    data.max_train_samples when that is set). A missing or empty validation split means no validation."""
    if d.mimic_root:
        return mimic_splits(d)
    splits = load_splits(d.dataset)
    if d.train_split not in splits:
        raise ConfigError(f"{d.dataset} has no {d.train_split!r} split (has {list(splits)})")
    train_ds = splits[d.train_split]
    split_reports = None
    if d.max_train_samples:
        split_reports = train_ds["report"]
        train_ds = train_ds.select(range(min(len(train_ds), d.max_train_samples)))
    if len(train_ds) == 0:
        raise ConfigError(f"the {d.train_split!r} split of {d.dataset} is empty")
    val_ds = splits[d.validation_split] if d.validation_split in splits else None
    if val_ds is None or len(val_ds) == 0:
        logger.warning("no %r split (or an empty one) in %s: validation is skipped", d.validation_split, d.dataset)
        return as_rows(train_ds), None, split_reports
    if d.max_val_samples:
        val_ds = val_ds.select(range(min(len(val_ds), d.max_val_samples)))
    return as_rows(train_ds), as_rows(val_ds), split_reports


def negative_samplers(n3s: Optional[str], train_rows, val_rows, split_reports=None):
    """(training sampler, validation sampler or None, description). `split_reports`: every report of the training
    split when the rows are a part of it (the N3S table's candidates are the whole split's)."""
    from train.collator import FallbackNegativeSampler, RandomReportSampler

    train_reports = _reports(train_rows)
    val_reports = _reports(val_rows) if val_rows is not None else None
    if n3s:
        from train.n3s import N3STable, canonical_report

        rebuild = ("Build it from this training split (python -m train.build_n3s --dataset ...; for data.mimic_root, "
                   "on the reports written by python -m train.pretrain_data --mimic-root ROOT --reports DIR)")
        try:
            train_sampler, described = N3STable.load(n3s), f"N3S table {n3s}"
        except (OSError, ValueError) as err:
            raise ConfigError(f"data.n3s: {err}") from None
        distinct = set(train_reports)
        unknown = [r for r in distinct if r not in train_sampler]
        if unknown:  # the collator would stop at the first batch that draws a negative for one of them
            raise ConfigError(
                f"the N3S table {n3s} has no row for {len(unknown)} of the {len(distinct)} distinct training reports "
                f"(e.g. {unknown[0][:100]!r}): it was built from other data. {rebuild}")
        if val_reports is not None:
            # Its candidates are the texts training shows as negatives: none may be a validation-only report (a
            # table built on the validation split, or on an earlier train/validation split of the data).
            train_keys = {canonical_report(r) for r in (distinct if split_reports is None else split_reports)}
            held_out = {canonical_report(r) for r in val_reports} - train_keys
            leaked = [r for r in train_sampler.reports[:train_sampler.num_candidates] if r in held_out]
            if leaked:
                raise ConfigError(
                    f"the N3S table {n3s} draws negatives from {len(leaked)} report(s) of the validation split that "
                    f"training does not have (e.g. {leaked[0][:100]!r}; table built from split "
                    f"{train_sampler.meta.get('source', {}).get('split', '?')!r}): training would show validation "
                    f"text. {rebuild}")
    else:
        logger.warning("no N3S table (data.n3s): negatives are uniformly drawn other reports of the training split")
        train_sampler = RandomReportSampler(train_reports)
        described = "random other reports (no N3S table)"
    val_sampler = None
    if val_reports is not None:
        try:  # a validation report the N3S table does not know gets another validation report as its negative
            val_sampler = FallbackNegativeSampler(train_sampler, RandomReportSampler(val_reports))
        except ValueError:  # fewer than two distinct validation reports
            val_sampler = train_sampler
    return train_sampler, val_sampler, described


def build_collators(processor, c: CollatorSettings, max_length: int, seed: int, train_sampler, val_sampler):
    from train.collator import PretrainingCollator

    common = dict(p_neg=c.p_neg, mlm_probability=c.mlm_probability, max_length=max_length, mask_token=c.mask_token)
    try:
        train = PretrainingCollator(processor, train_sampler, train=True, lead_mask_prob=c.lead_mask_prob, seed=seed,
                                    sentence_sample_prob=c.sentence_sample_prob, **common)
    except ValueError as err:  # the settings the collator checks (the mask token against the vocabulary)
        raise ConfigError(f"collator: {err}") from None
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
    dataset = rows if isinstance(rows, MimicRecords) else RowsWithBatchId(rows)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=BatchCollate(collator),
                        num_workers=workers, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    return loader, sampler


def _reports(rows) -> list:
    """The split's reports; a missing or empty one is refused here, before training, not as the text "None"."""
    if isinstance(rows, MimicRecords):
        return rows.reports()  # the MIMIC reader already leaves out studies without a report
    reports = rows.with_format(None)["report"]
    bad = [i for i, r in enumerate(reports) if not isinstance(r, str) or not r.strip()]
    if bad:
        raise ConfigError(f"the dataset has {len(bad)} row(s) with a missing or empty 'report' (first: row {bad[0]}, "
                          f"{reports[bad[0]]!r}); drop or fill them (train.prepare_mimic drops such studies)")
    return reports


# ----------------------------------------------------------------------------------------------------------------
# Straight from a MIMIC-IV-ECG folder
# ----------------------------------------------------------------------------------------------------------------

ENTRY_COLUMNS = ("study_id", "subject_id", "ecg_time", "path", "report")


def mimic_entries(root, split_seed: int, val_fraction: float) -> tuple:
    """({"train": Dataset, "validation": Dataset} of ENTRY_COLUMNS, skipped counts by reason) from record_list.csv and
    machine_measurements.csv, in record_list order; no signal is read. The entries prepare_mimic drops before reading
    a record (malformed or unsafe record_list row, duplicate study, missing, empty or conflicting report) are left out
    here too."""
    from collections import Counter

    from datasets import Dataset

    from train.mimic import MimicInputError, iter_record_list, read_reports, subject_split

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data.mimic_root {root} is not a folder (expected a MIMIC-IV-ECG v1.0 download: "
                          "record_list.csv, machine_measurements.csv, files/)")
    for name in ("record_list.csv", "machine_measurements.csv"):
        if not (root / name).is_file():
            raise ConfigError(f"data.mimic_root {root} has no {name}: expected an unmodified MIMIC-IV-ECG v1.0 folder "
                              "(record_list.csv, machine_measurements.csv, files/p*/p*/s*/)")
    columns = {split: {c: [] for c in ENTRY_COLUMNS} for split in ("train", "validation")}
    skipped = Counter()
    try:
        reports, conflicting = read_reports(root)
        for entry in iter_record_list(root):
            report = reports.get(entry["study_id"])
            reason = entry["status"] or ("missing_report" if report is None else "conflicting_reports"
                                         if entry["study_id"] in conflicting else "" if report.strip()
                                         else "empty_report")
            if reason:
                skipped[reason] += 1
                continue
            split = subject_split(entry["subject_id"], split_seed, val_fraction)
            for c in ENTRY_COLUMNS:
                columns[split][c].append(report if c == "report" else entry[c])
    except MimicInputError as err:
        raise ConfigError(str(err)) from None
    del reports
    splits = {name: Dataset.from_dict(cols) for name, cols in columns.items()}
    return splits, dict(skipped)


class MimicRecords(torch.utils.data.Dataset):
    """Training rows of a MIMIC-IV-ECG folder, read on demand: `entries` (a Dataset of ENTRY_COLUMNS) in memory, the
    signal of each row read from its files when asked. For `train_loader`, like RowsWithBatchId: fetching a list of
    (batch_id, index) pairs returns {"batch_id", "indices", "rows"}. A record that fails to read is replaced by
    another one drawn from (seed, batch_id, slot) (up to `tries` draws; the seed is data.split_seed), with a warning
    naming it; "indices" holds the rows actually used."""

    def __init__(self, root, entries, seed: int, tries: int = 32):
        self.root, self.entries, self.seed, self.tries = str(Path(root).resolve()), entries, int(seed), int(tries)
        self._warned: set = set()

    def __len__(self) -> int:
        return len(self.entries)

    def reports(self) -> list:
        return list(self.entries["report"])

    def read(self, index: int) -> dict:
        """The row of entry `index` (the prepared row layout); raises train.mimic.RecordDropped."""
        from train.mimic import build_row

        entry = dict(self.entries[int(index)], status=None)
        return build_row(self.root, entry, entry["report"])

    def _read_or_replace(self, batch_id: int, slot: int, index: int) -> tuple:
        import numpy as np

        from train.mimic import RecordDropped

        rng = np.random.default_rng([self.seed, 13, int(batch_id), int(slot)])
        for _ in range(self.tries):
            try:
                return index, self.read(index)
            except RecordDropped as drop:
                if index not in self._warned:
                    self._warned.add(index)
                    logger.warning("record %s (study %s) cannot be read (%s); another training record takes its "
                                   "place in the batch", self.entries[index]["path"], self.entries[index]["study_id"],
                                   drop)
                index = int(rng.integers(len(self.entries)))
        raise RuntimeError(f"{self.tries} records of {self.root} in a row could not be read (see the warnings): is "
                           "the folder complete and readable?")

    def __getitems__(self, items) -> dict:
        ids = [int(g) for g, _ in items]
        indices, rows = [], []
        for slot, (_, i) in enumerate(items):
            used, row = self._read_or_replace(ids[0], slot, int(i))
            indices.append(used)
            rows.append(row)
        return {"batch_id": ids[0], "indices": indices, "rows": rows}


def _read_rows(records: MimicRecords, limit: Optional[int]) -> tuple:
    """(rows, dropped) of the first `limit` entries of `records` that read, in order."""
    from train.mimic import RecordDropped

    rows, dropped = [], 0
    for i in range(len(records)):
        if limit is not None and len(rows) >= limit:
            break
        try:
            rows.append(records.read(i))
        except RecordDropped:
            dropped += 1
    return rows, dropped


def mimic_splits(d: DataSettings):
    """(MimicRecords of the train side, validation rows or None, every training report when max_train_samples cut
    the train side) for data.mimic_root; bad input raises ConfigError."""
    from datasets import Dataset

    from train.mimic import features

    splits, skipped = mimic_entries(d.mimic_root, d.split_seed, d.val_fraction)
    train_entries = splits["train"]
    split_reports = None
    if d.max_train_samples:
        split_reports = train_entries["report"]
        train_entries = train_entries.select(range(min(len(train_entries), d.max_train_samples)))
    if len(train_entries) == 0:
        raise ConfigError(f"data.mimic_root {d.mimic_root}: no training record (skipped before reading: "
                          f"{skipped or 'none'}; data.val_fraction={d.val_fraction})")
    from train.mimic import RecordDropped

    records = MimicRecords(d.mimic_root, train_entries, d.split_seed)
    failures = []
    for i in range(min(8, len(records))):  # the wrong folder, or one without its files/ tree: say so now
        try:
            records.read(i)
            break
        except RecordDropped as drop:
            failures.append(f"{train_entries[i]['path']}: {drop}")
    else:
        raise ConfigError(f"data.mimic_root {d.mimic_root}: none of the first {len(failures)} training records can "
                          f"be read ({'; '.join(failures[:3])})")
    logger.info("%s: %d training records (read on demand), %d validation records; skipped before reading: %s",
                d.mimic_root, len(train_entries), len(splits["validation"]), skipped or "none")
    val_rows = None
    if len(splits["validation"]):
        rows, dropped = _read_rows(MimicRecords(d.mimic_root, splits["validation"], d.split_seed),
                                   d.max_val_samples)
        if dropped:
            logger.warning("%d validation record(s) could not be read and were left out", dropped)
        if rows:
            val_rows = as_rows(Dataset.from_list(rows, features=features()))
    if val_rows is None:
        logger.warning("no validation record in %s (data.val_fraction=%s): validation is skipped", d.mimic_root,
                       d.val_fraction)
    return records, val_rows, split_reports


def write_reports(mimic_root, out, split_seed: int = 0, val_fraction: float = 0.02):
    """The reports of a MIMIC-IV-ECG folder as a save_to_disk DatasetDict (train / validation, the split of
    data.mimic_root) for python -m train.build_n3s: an N3S table for training straight from the folder."""
    from datasets import DatasetDict

    from train.folders import published_folder

    out = Path(out)
    if out.exists():  # replaced as a whole: only an earlier reports folder, nothing beside it (an N3S table)
        others = sorted(p.name for p in out.iterdir()) if out.is_dir() else [out.name]
        others = [n for n in others if n not in ("dataset_dict.json", "train", "validation")
                  and not (n.startswith(".") and n.endswith(".lock"))]  # a published N3S table's writers' lock
        if others or (out.is_dir() and any(out.iterdir()) and not (out / "dataset_dict.json").is_file()):
            raise ConfigError(f"--reports {out} holds something other than an earlier reports folder "
                              f"({', '.join(others) or 'no dataset_dict.json'}); the folder is replaced as a whole, "
                              "so choose a new or empty one (an N3S table built from it belongs to those reports)")
    splits, _ = mimic_entries(mimic_root, split_seed, val_fraction)
    # a run stopped midway leaves the earlier folder, never new and old splits mixed; an empty split is left out
    # (no validation, as a missing split means to train.pretrain): datasets writes one with no shard, which
    # load_from_disk then fails to open (IndexError)
    with published_folder(out) as staging:
        DatasetDict({k: v.select_columns(["study_id", "subject_id", "report"]) for k, v in splits.items()
                     if len(v)}).save_to_disk(str(staging))
    return out


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python -m train.pretrain_data",
        description="Write the reports of a MIMIC-IV-ECG folder, split as `train.pretrain --mimic-root` splits it, for "
                    "python -m train.build_n3s --dataset DIR (an N3S table without a prepared copy).")
    p.add_argument("--mimic-root", required=True)
    p.add_argument("--reports", required=True, metavar="DIR", help="output folder (save_to_disk DatasetDict)")
    p.add_argument("--split-seed", type=int, default=0, help="data.split_seed of the training run")
    p.add_argument("--val-fraction", type=float, default=0.02, help="data.val_fraction of the training run")
    args = p.parse_args(argv)
    try:
        out = write_reports(args.mimic_root, args.reports, args.split_seed, args.val_fraction)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
