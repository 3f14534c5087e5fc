"""ECG <-> report retrieval with D-BETA's unimodal features: recall@1/5/10 on a held-out split.

    python -m eval.retrieval --model DIR_OR_REPO --dataset ptbxl --data-root /data/ptb-xl [--split test] \
        --output results/retrieval_ptbxl.json
    python -m eval.retrieval --model DIR_OR_REPO --dataset mimic --data-root PREPARED_DIR [--split validation] \
        [--max-records 5000] --output results/retrieval_mimic.json

Data:
  * ptbxl: the records of the split (strat_fold 1-8 train, 9 val, 10 test) with their `report` column of
    ptbxl_database.csv (empty reports are skipped). PTB-XL reports are partly German and were written by several
    systems; the numbers measure retrieval of those texts.
  * mimic: a folder written by `python -m train.prepare_mimic` (OUT/dataset, splits "train" and "validation";
    the validation split is held out by subject), or any `datasets.save_to_disk` folder whose rows have a
    `report` column and either the prepared MIMIC signal columns (signal int16 + adc_gain + baseline) or a
    float `signal`/`ecg` [leads, samples] column (with `sampling_rate` and `lead_names` columns, else 500 Hz in
    the standard lead order).
  `--max-records N` evaluates a seeded random subset of N records (retrieval gets harder with more candidates:
  compare numbers only at the same N).

Protocol: every record's ECG feature (`get_ecg_features`, through the processor) and its report's text feature
(`get_text_features`, report cleaned by the processor) are computed; similarity is cosine (default) or the raw dot
product (`--scoring dot`). Both directions use every record of the split: ECG->report ranks the n reports for
each ECG, report->ECG ranks the n ECGs for each report.

Duplicated reports. Machine reports repeat ("sinus rhythm. normal ecg."), so a paired record is rarely the only
correct answer. The headline numbers (`ecg_to_report`, `report_to_ecg`) count a retrieved item as correct when
its report text equals the query's true report text after the processor's report cleaning (lower case, "ekg" ->
"ecg", trimmed); a query's rank is the number of *incorrect* candidates scoring at least as high as the best
correct one (ties count against the query). `strict` gives the same metrics where only the paired item is
correct. `duplicates` reports how many records share their report with another.

Outputs: FILE.json (schema dbeta-retrieval/1) and FILE.md. The same as a function:
`run_retrieval(model=..., dataset="ptbxl", data_root=..., output="rt.json")` (keywords as the flags).
`--on-error skip` leaves unreadable records out and lists them; fewer than 2 readable records is an error.
Recall needs no class labels, so this report has no AUROC or AUPRC.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch


from eval.features import (
    RecordError,
    dataset_ecg_features,
    load_model_and_processor,
    processor_settings,
    text_features,
)
from eval.metrics import TIE_RULE, group_ids, retrieval_recall
from eval.ptbxl import read_ptbxl_record
from dbeta.processing_dbeta import normalize_report
from train.folders import write_result


logger = logging.getLogger("dbeta.retrieval")

SCHEMA = "dbeta-retrieval/1"
DATASETS = ("ptbxl", "mimic")
KS = (1, 5, 10)
PTBXL_FOLDS = {"train": tuple(range(1, 9)), "val": (9,), "test": (10,), "all": tuple(range(1, 11))}


# ------------------------------------------------------------------------------------------------------------
# Datasets with reports (items as in eval.datasets, plus `reports`)
# ------------------------------------------------------------------------------------------------------------


class PTBXLReports:
    """PTB-XL records of one split with their reports: items {signal, sampling_rate, lead_names, record_id}."""

    name = "ptbxl"
    protocol_num_samples = None

    def __init__(self, root, split: str = "test"):
        import pandas as pd

        from eval.ptbxl import read_ptbxl_tables

        if split not in PTBXL_FOLDS:
            raise ValueError(f"PTB-XL: split must be one of {', '.join(PTBXL_FOLDS)}; got {split!r}")
        self.root = Path(root)
        db, _ = read_ptbxl_tables(self.root)  # checks the folder and the tables, with clear messages
        if "report" not in db.columns:
            raise ValueError(f"PTB-XL: {self.root / 'ptbxl_database.csv'} has no 'report' column")
        folds = pd.to_numeric(db["strat_fold"], errors="coerce")
        rows = db[folds.isin(PTBXL_FOLDS[split])]
        reports = rows["report"].fillna("").astype(str).str.strip()
        rows = rows[reports.map(lambda r: bool(normalize_report(r)))]
        self.split = split
        self.record_ids = [str(i) for i in rows.index]
        self.filenames = rows["filename_hr"].astype(str).tolist()
        self.reports = rows["report"].astype(str).str.strip().tolist()

    def __len__(self) -> int:
        return len(self.record_ids)

    def _source(self, index: int) -> str:
        return str(self.root / self.filenames[index])

    def __getitem__(self, index: int) -> dict:
        record = read_ptbxl_record(self.root / self.filenames[index])
        return {"signal": record.signal, "sampling_rate": record.sampling_rate, "lead_names": record.lead_names,
                "record_id": self.record_ids[index]}


class ArrowReports:
    """A `datasets` split with a `report` column (prepared MIMIC-IV-ECG or a generic signal column)."""

    name = "mimic"
    protocol_num_samples = None

    def __init__(self, root, split: str = "validation"):
        from datasets import Dataset, DatasetDict

        from train.pretrain_data import load_saved_dataset
        from train.settings import ConfigError

        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root}: no such folder (a prepared dataset from train.prepare_mimic)")
        folder = self.root / "dataset" if (self.root / "dataset" / "dataset_dict.json").is_file() else self.root
        try:
            data = load_saved_dataset(folder)  # a split file cut short reads as a shorter, valid one: refused there
        except ConfigError as err:
            raise ValueError(str(err)) from None
        except Exception as err:
            raise FileNotFoundError(
                f"{folder}: not a saved `datasets` folder ({type(err).__name__}: {err}); pass the output folder of "
                "python -m train.prepare_mimic"
            ) from err
        if isinstance(data, DatasetDict):
            if split not in data:
                raise ValueError(f"{folder}: no split {split!r}; it has {', '.join(data)}")
            data = data[split]
        assert isinstance(data, Dataset)
        columns = set(data.column_names)
        if "report" not in columns:
            raise ValueError(f"{folder}: rows have no 'report' column (columns: {', '.join(sorted(columns))})")
        self.kind = "mimic" if {"signal", "adc_gain", "baseline"} <= columns else "float"
        self.signal_column = "signal" if "signal" in columns else "ecg"
        if self.signal_column not in columns:
            raise ValueError(f"{folder}: rows have no 'signal' or 'ecg' column")
        self.data = data.with_format("numpy")
        self.split = split
        self.reports = ["" if r is None else str(r).strip() for r in data["report"]]  # None: skipped as empty
        id_column = next((c for c in ("study_id", "record_id", "id") if c in columns), None)
        self.record_ids = [str(v) for v in data[id_column]] if id_column else [str(i) for i in range(len(data))]
        self.indices = np.asarray([i for i, r in enumerate(self.reports) if normalize_report(r)], dtype=np.int64)
        self.reports = [self.reports[i] for i in self.indices]
        self.record_ids = [self.record_ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def _source(self, index: int) -> str:
        return f"{self.root} [{self.split} row {int(self.indices[index])}]"

    def __getitem__(self, index: int) -> dict:
        row = self.data[int(self.indices[index])]
        if self.kind == "mimic":
            from train.mimic import decode_signal

            signal = decode_signal(row)
        else:
            signal = np.asarray(row[self.signal_column], dtype=np.float32)
        rate = float(row["sampling_rate"]) if "sampling_rate" in row else 500.0
        names = [str(n) for n in row["lead_names"]] if "lead_names" in row else None
        return {"signal": signal, "sampling_rate": rate, "lead_names": names, "record_id": self.record_ids[index]}


class _Subset:
    """The first-level dataset restricted to `indices` (same item interface)."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.name = getattr(dataset, "name", "")
        self.split = getattr(dataset, "split", None)
        self.protocol_num_samples = getattr(dataset, "protocol_num_samples", None)
        self.record_ids = [dataset.record_ids[i] for i in self.indices]
        self.reports = [dataset.reports[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def _source(self, index: int) -> str:
        return self.dataset._source(int(self.indices[index]))

    def __getitem__(self, index: int) -> dict:
        return self.dataset[int(self.indices[index])]


def load_report_dataset(name: str, root, split: Optional[str] = None):
    """PTBXLReports ("ptbxl", default split test) or ArrowReports ("mimic", default split validation)."""
    key = str(name).strip().lower().replace("-", "")
    if key == "ptbxl":
        return PTBXLReports(root, split or "test")
    if key == "mimic":
        return ArrowReports(root, split or "validation")
    raise ValueError(f"unknown retrieval dataset {name!r}; expected one of {', '.join(DATASETS)}")


# ------------------------------------------------------------------------------------------------------------
# Metrics and reports
# ------------------------------------------------------------------------------------------------------------


def retrieval_metrics(ecg: np.ndarray, text: np.ndarray, report_keys: Sequence, scoring: str = "cosine",
                      ks: Sequence[int] = KS) -> dict:
    """Both directions, duplicate-aware and strict (paired only). `report_keys`: each record's report as the model
    reads it (`DBetaProcessor.text_keys`): reports the model cannot tell apart are one report."""
    normalize = scoring == "cosine"
    groups = group_ids(report_keys)
    out = {
        "ecg_to_report": retrieval_recall(ecg, text, groups, groups, ks, normalize=normalize),
        "report_to_ecg": retrieval_recall(text, ecg, groups, groups, ks, normalize=normalize),
        "strict": {
            "ecg_to_report": retrieval_recall(ecg, text, ks=ks, normalize=normalize),
            "report_to_ecg": retrieval_recall(text, ecg, ks=ks, normalize=normalize),
        },
    }
    counts = np.bincount(groups)
    out["duplicates"] = {
        "n_records": int(len(groups)),
        "distinct_reports": int(len(counts)),
        "records_sharing_their_report": int((counts[groups] > 1).sum()),
        "largest_group": int(counts.max()) if len(counts) else 0,
    }
    out["chance"] = {f"R@{k}": float(min(1.0, k / max(len(groups), 1))) for k in ks}
    return out


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def render_markdown(result: dict) -> str:
    ks = result["ks"]
    head = "| direction | matches | " + " | ".join(f"R@{k}" for k in ks) + " | median rank |"
    lines = [
        f"# Retrieval: {result['dataset']} ({result['split']})",
        "",
        f"- model: `{result['model']}`",
        f"- records: {result['n_records']} (candidates per query: {result['n_records']}); scoring: "
        f"{result['scoring']}",
        f"- duplicated reports: {result['duplicates']['records_sharing_their_report']} records share their report "
        f"text with another ({result['duplicates']['distinct_reports']} distinct reports)",
        "",
        head,
        "| --- | --- | " + " | ".join("---" for _ in ks) + " | --- |",
    ]
    rows = [("ECG -> report", "same text", result["ecg_to_report"]),
            ("report -> ECG", "same text", result["report_to_ecg"]),
            ("ECG -> report", "paired only", result["strict"]["ecg_to_report"]),
            ("report -> ECG", "paired only", result["strict"]["report_to_ecg"])]
    for direction, kind, m in rows:
        lines.append(f"| {direction} | {kind} | " + " | ".join(_pct(m[f'R@{k}']) for k in ks)
                     + f" | {m['median_rank']:.0f} |")
    lines.append("| chance | paired | " + " | ".join(_pct(result["chance"][f"R@{k}"]) for k in ks) + " | - |")
    lines += ["", "Recall in %. 'same text': a retrieved item is correct when its report reads as the query's true "
              "report to the model (the same token ids; duplicates count); 'paired only': only the record's own "
              "pair is correct. "
              "Ties count against the query: its rank is the number of incorrect candidates scoring at least as "
              "high as its best correct one."]
    return "\n".join(lines) + "\n"


def run_retrieval(*, model: str, dataset: str, data_root, output=None, split: Optional[str] = None,
                  max_records: Optional[int] = None, seed: int = 0, scoring: str = "cosine", batch_size: int = 32,
                  num_workers: int = 2, on_error: str = "raise", remote_code: bool = False,
                  progress: bool = False) -> dict:
    """Retrieval as a function (keywords as the CLI's flags). Returns the result dict (the JSON); with `output`
    it also writes FILE.json and FILE.md (listed in `result["outputs"]`). Bad arguments and data raise
    ValueError / FileNotFoundError / RecordError naming what is wrong."""
    from eval.outputs import check_json_output

    output = check_json_output(output, reads=(model, data_root))
    if scoring not in ("cosine", "dot"):
        raise ValueError(f"scoring must be cosine or dot, got {scoring!r}")
    if max_records is not None and max_records < 2:
        raise ValueError("max_records must be at least 2")
    if batch_size < 1 or num_workers < 0:
        raise ValueError("batch_size must be >= 1 and num_workers >= 0")
    t0 = time.perf_counter()
    data = load_report_dataset(dataset, data_root, split)
    if max_records is not None and len(data) > max_records:
        rng = np.random.default_rng(seed)
        data = _Subset(data, np.sort(rng.choice(len(data), max_records, replace=False)))
    split = getattr(data, "split", None) or split
    if len(data) < 2:
        raise ValueError(f"{dataset}: the {split} split under {data_root} has {len(data)} record(s) with a report; "
                         "retrieval needs at least 2")
    net, processor = load_model_and_processor(model, remote_code=remote_code)
    t1 = time.perf_counter()
    ecg, kept, failures = dataset_ecg_features(
        net, processor, data, batch_size=batch_size, num_workers=num_workers, on_error=on_error,
        progress=progress, desc=f"{dataset} ECG features", return_failures=True,
    )
    if len(kept) < 2:  # every record but one skipped: nothing to rank
        raise RecordError(f"{dataset}: only {len(kept)} of {len(data)} record(s) under {data_root} could be read "
                          f"(--on-error skip); retrieval needs at least 2. First error: {failures[0]['error']}")
    t_ecg = time.perf_counter() - t1
    reports = [data.reports[i] for i in kept]
    t2 = time.perf_counter()
    text = text_features(net, processor, reports, batch_size=batch_size)
    t_text = time.perf_counter() - t2
    metrics = retrieval_metrics(ecg, text, processor.text_keys(reports), scoring, KS)

    import transformers

    result = {
        "schema": SCHEMA,
        "model": str(model),
        "dataset": dataset,
        "split": split,
        "data_root": str(data_root),
        "scoring": scoring,
        "n_records": int(len(kept)),
        "max_records": max_records,
        "seed": seed,
        "ks": list(KS),
        **metrics,
        "duplicate_rule": "a retrieved item is correct if its report reads as the query's true report to the model "
                          "(the same token ids: DBetaProcessor.text_keys); strict: only the paired item",
        "tie_rule": TIE_RULE,
        "processor": processor_settings(processor.feature_extractor),
        "failures": [{"record_id": data.record_ids[f["index"]], **f} for f in failures],
        "timing_s": {"load": round(t1 - t0, 3), "ecg_features": round(t_ecg, 3), "text_features": round(t_text, 3)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "threads": torch.get_num_threads()},
    }
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        md = output.with_suffix(".md")
        result["outputs"] = {"json": str(output), "markdown": str(md)}
        write_result(output, json.dumps(result, indent=2) + "\n", [(md, render_markdown(result))])
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.retrieval",
                                description="ECG <-> report retrieval recall@k with D-BETA features.")
    p.add_argument("--model", required=True, help="exported model folder or Hub repo id")
    p.add_argument("--dataset", required=True, type=str.lower, choices=DATASETS,
                   help="ptbxl (ptbxl_database.csv reports) or mimic (a prepared datasets folder with 'report')")
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--split", default=None, help="default: test (ptbxl) / validation (mimic)")
    p.add_argument("--max-records", type=int, default=None, help="evaluate a seeded random subset of N records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scoring", default="cosine", choices=("cosine", "dot"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    p.add_argument("--remote-code", action="store_true",
                   help="load the model folder's own code (trust_remote_code) instead of this repository's")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--output", required=True, type=Path, help="FILE.json (FILE.md is written beside it)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """The CLI: parse, then run_retrieval; a data or argument error exits 2 with its message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_records is not None and args.max_records < 2:
        parser.error("--max-records must be at least 2")
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch-size must be >= 1 and --num-workers >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = vars(args)
    options["progress"] = not options.pop("quiet")
    try:
        result = run_retrieval(**options)
    except (FileNotFoundError, ValueError, RecordError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2)
    e2r, r2e = result["ecg_to_report"], result["report_to_ecg"]
    print(f"{args.dataset} {result['split']}: {result['n_records']} records; ECG->report "
          + " ".join(f"R@{k} {_pct(e2r[f'R@{k}'])}" for k in KS) + "; report->ECG "
          + " ".join(f"R@{k} {_pct(r2e[f'R@{k}'])}" for k in KS) + f" (%, {args.scoring})")
    print(f"wrote {result['outputs']['json']}, {result['outputs']['markdown']}")
    return result


if __name__ == "__main__":
    main()
