"""Zero-shot scores of a record of any length, window by window: the window table (CSV or JSON) and a plot.

    python -m eval.windows --model M --record holter/rec001 --labels AFIB "sinus rhythm" SBRAD \
        --window-seconds 10 --stride-seconds 10 --aggregate mean --output windows.csv --plot windows.png

The record is a WFDB record (read a chunk at a time: memory stays flat however long it is), a DICOM file or a
.npy array [leads, samples] (with --sampling-rate and --lead-names). The CSV has one row per window (start, end in
seconds, one score column per label, error); the JSON is the pipeline's result. The aggregate is printed.
From Python: `pipe(record, candidate_labels=[...], window_seconds=10, stride_seconds=10)`
(`ZeroShotECGClassificationPipeline.windows`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dbeta.processing_dbeta import LEAD_SUBSETS, NAN_POLICIES
from train.folders import write_file, write_text

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["load_pipeline", "write_window_table", "stitch_records", "main"]


def load_pipeline(model: str, remote_code: bool = False):
    """The zero-shot pipeline of an exported model: this repository's classes, or with `remote_code=True` the
    folder's own code through `transformers.pipeline(..., trust_remote_code=True)`."""
    if remote_code:
        from transformers import pipeline

        return pipeline("zero-shot-ecg-classification", model=model, trust_remote_code=True)
    from eval.features import load_model_and_processor
    from dbeta.pipeline_dbeta import ZeroShotECGClassificationPipeline

    net, processor = load_model_and_processor(model)
    return ZeroShotECGClassificationPipeline(model=net, processor=processor)


TABLE_COLUMNS = ("start_s", "end_s", "error")  # the CSV's own columns, around one column per label


def check_table_labels(labels) -> None:
    """A label spelt like one of the CSV's own columns would make its scores unreadable by column name."""
    clash = sorted(set(labels) & set(TABLE_COLUMNS))
    if clash:
        raise ValueError(f"label(s) {', '.join(clash)} would share a column name with the window table's own "
                         f"{', '.join(TABLE_COLUMNS)}; rename them or write .json")


def write_window_table(result: dict, path) -> Path:
    """The windows of a windowed result as CSV (.csv: start, end, one column per label, error) or the whole
    result as JSON (any other suffix)."""
    path = Path(path)
    labels = [d["label"] for d in result["aggregate"]]
    if path.suffix.lower() == ".csv":
        check_table_labels(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".csv":
        write_text(path, json.dumps(result, indent=1))
        return path
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow([*TABLE_COLUMNS[:2], *labels, TABLE_COLUMNS[2]])
    for w in result["windows"]:
        scores = {d["label"]: d["score"] for d in (w["scores"] or [])}
        writer.writerow([_seconds(w["start"]), _seconds(w["end"]),
                         *(f"{scores[label]:.6f}" if label in scores else "" for label in labels),
                         w.get("error", "")])
    write_file(path, lambda tmp: tmp.write_text(table.getvalue(), newline=""))
    return path


def _seconds(t: float) -> str:
    """A time in the table to the microsecond, never in exponent form (`:g` kept 6 digits: past 27.8 h windows
    half a second apart shared one start, and past 11.6 days it wrote 1.20959e+06)."""
    return f"{t:.6f}".rstrip("0").rstrip(".")


def stitch_records(data_root, output_dir, classes: Sequence[str] = ("SR", "AFIB", "SR"), per_class: int = 3,
                   task: str = "rhythm", split: str = "test", name: str = "stitched") -> dict:
    """A longer WFDB record made of `per_class` consecutive records of each class in `classes` (in that order) from
    a PTB-XL-layout folder, for showing windowed scores change over time. Every record must share one rate and
    lead order. Returns {"path" (record path, no suffix), "segments": [{"start", "end", "class", "record_id"}]}."""
    import wfdb

    from eval.datasets import load_downstream

    ds = load_downstream("ptbxl", data_root, split=split, task=task)
    labels = ds.labels_matrix()
    used, pieces, segments, rate, names, start = set(), [], [], None, None, 0.0
    for cls in classes:
        if cls not in ds.class_names:
            raise ValueError(f"class {cls!r} is not a {task} class of {data_root} ({', '.join(ds.class_names)})")
        j = ds.class_names.index(cls)
        picked = [i for i in np.flatnonzero((labels[:, j] > 0.5) & (labels.sum(axis=1) == 1)) if i not in used]
        if len(picked) < per_class:
            raise ValueError(f"{data_root}: only {len(picked)} {split} record(s) with {cls} alone; need {per_class}")
        for i in picked[:per_class]:
            used.add(i)
            item = ds[int(i)]
            if rate is None:
                rate, names = item["sampling_rate"], item["lead_names"]
            if item["sampling_rate"] != rate or item["lead_names"] != names:
                raise ValueError(f"record {item['record_id']}: rate or lead order differs from the first record's")
            pieces.append(item["signal"])
            end = start + item["signal"].shape[1] / rate
            segments.append({"start": start, "end": end, "class": cls, "record_id": item["record_id"]})
            start = end
    signal = np.concatenate(pieces, axis=1)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=rate, units=["mV"] * len(names), sig_name=list(names), p_signal=signal.T.astype(np.float64),
                fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names),
                write_dir=str(output_dir))
    return {"path": str(output_dir / name), "segments": segments}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--record", required=True, help="WFDB record, DICOM file or .npy [leads, samples]")
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--stride-seconds", type=float, default=None, help="default: the window")
    parser.add_argument("--aggregate", default="mean", help="mean | max | fraction")
    parser.add_argument("--multi-label", action="store_true")
    parser.add_argument("--leads", nargs="+", default=None,
                        help=f"a lead subset: lead names (I II) or one of {', '.join(LEAD_SUBSETS)} (others zeroed)")
    parser.add_argument("--sampling-rate", type=float, default=None, help="for a .npy array")
    parser.add_argument("--lead-names", nargs="+", default=None, help="for a .npy array")
    parser.add_argument("--nan-policy", choices=NAN_POLICIES, default=None,
                        help="NaN/inf samples: the processor's setting by default (interpolate); zero scores a lead "
                             "with no finite sample as absent")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, required=True, help=".csv (window table) or .json (everything)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the scores over time")
    parser.add_argument("--remote-code", action="store_true", help="run the model folder's own code")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def leads_argument(values):
    """A CLI's --leads as the pipeline takes it: one subset name ("limb", "I+II") as that name, else the lead list
    (argparse's nargs="+" made ['limb'] of it, read as an unknown lead name)."""
    if values and len(values) == 1 and values[0] in LEAD_SUBSETS:
        return values[0]
    return values


def record_argument(path, sampling_rate=None, lead_names=None):
    """What a CLI's --record names, as the pipeline takes it: a file path as is, a .npy array [leads, samples] as a
    record dict with its --sampling-rate and --lead-names."""
    if str(path).endswith(".npy"):
        try:
            signal = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:  # missing, truncated, or an object array (pickles are never read)
            raise ValueError(f"--record {path}: not a readable .npy array ({err})") from None
        return {"signal": signal, "sampling_rate": sampling_rate, "lead_names": lead_names, "record_id": str(path)}
    return path


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    from eval.outputs import IMAGE_SUFFIXES, check_outputs, record_files

    try:  # before any work: the table and plot never replace the record, the model or each other
        if Path(args.output).suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"--output {args.output} must be a .csv (the window table) or .json (everything)")
        if args.plot is not None and Path(args.plot).suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"--plot {args.plot} must be an image: {', '.join(IMAGE_SUFFIXES)}")
        check_outputs({"--output": args.output, "--plot": args.plot}, reads=[args.model, *record_files(args.record)])
        if Path(args.output).suffix.lower() == ".csv":
            check_table_labels(args.labels)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    try:
        record = record_argument(args.record, args.sampling_rate, args.lead_names)
        pipe = load_pipeline(args.model, args.remote_code)
        result = pipe(record, candidate_labels=args.labels, window_seconds=args.window_seconds,
                      stride_seconds=args.stride_seconds, aggregate=args.aggregate, multi_label=args.multi_label,
                      leads=leads_argument(args.leads), batch_size=args.batch_size, progress=not args.quiet,
                      nan_policy=args.nan_policy)
    except (ValueError, OSError, TypeError) as err:
        parser.exit(2, f"error: {err}\n")
    write_window_table(result, args.output)
    if args.plot is not None:
        from eval.plots import plot_window_scores

        plot_window_scores(result, args.plot)
    print(f"{len(result['windows'])} windows ({result['n_windows_scored']} scored) over "
          f"{result['duration']:.1f} s, leads {', '.join(result['leads'])}; aggregate ({result['aggregate_rule']}):")
    for d in result["aggregate"]:
        print(f"  {d['score']:.3f}  {d['label']}")
    return result


if __name__ == "__main__":
    main()
