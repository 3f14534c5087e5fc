"""Build a memory-mapped Arrow copy of MIMIC-IV-ECG v1.0 with a subject-level train/validation split.

    python -m train.prepare_mimic --mimic-root DIR --output OUT [--num-proc N] [--val-fraction 0.02] [--seed 0]
                                  [--limit N] [--chunk-size 1000]

Reads an unmodified download (record_list.csv, machine_measurements.csv, files/.../*.hea|.dat). Output:
    OUT/dataset/              DatasetDict ("train", "validation") saved with save_to_disk -> train.mimic.load_prepared_mimic
    OUT/summary.json          read (= data rows of record_list.csv) / kept / dropped {reason: count} / splits /
                              malformed CSV rows and their line numbers / settings
    OUT/dropped.csv           index, line (in record_list.csv), study_id, path, reason, detail per dropped row
    OUT/validation_subjects.txt
    OUT/work/                 manifest.sqlite (the CSVs joined on disk), per-chunk results (and shards while running)

Bounded memory: the two CSVs are streamed into an on-disk SQLite manifest (never held in RAM); records are
processed in fixed-size chunks, each written by its own ArrowWriter (writer_batch_size rows buffered) to
work/chunks/chunk-NNNNN/{train,validation}.arrow with a result.json written last as the done marker.
Resumable: every step publishes its result with one rename, so the same command can be re-run after a stop or a kill
at any point (finished chunks are skipped, a half-written chunk or dataset is redone). Parallel: chunks are spread
over --num-proc processes. Bad records never stop the ingest; each dropped row is counted by reason (see
train/mimic.py for the list), including paths that would lead outside --mimic-root (unsafe_path, never opened).
Errors (exit 2): a CSV without its key columns (record_list.csv: subject_id, study_id, path; machine_measurements.csv:
study_id and report_0..report_17) or without data rows, and an ingest that keeps no record at all.

The split is seeded and subject-level: a subject goes to validation iff blake2b(f"{seed}:{subject_id}") / 2**64 <
val_fraction, so no subject is on both sides and the assignment does not depend on order or chunking.

The final step reads the chunk shards with Dataset.from_file, concatenates them and writes OUT/dataset.tmp with
DatasetDict.save_to_disk, verifies it with load_from_disk and renames it to OUT/dataset; then the shards are deleted
(so it needs free space for a second copy of the kept records while it runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Optional


from train.folders import fsync_tree, write_json, write_text
from train.mimic import (
    DROP_REASONS,
    MimicInputError,
    features,
    RecordDropped,
    build_row,
    iter_machine_measurements,
    iter_record_list,
    subject_split,
)


# bumped when work/ changes layout or what a record or report becomes: an older unfinished ingest is refused, not
# resumed under mixed rules, and loading a finished older one warns with the changes since (FORMAT_CHANGES)
FORMAT_VERSION = 4
FORMAT_CHANGES = {
    2: "dropped.csv and the manifest carry CSV line numbers; paths leaving the MIMIC folder are refused",
    3: "a study with two different reports is dropped (conflicting_reports) instead of keeping one of them",
    4: "records with an ADC gain of 0 or none are dropped (they were read as 200 adu/mV); headers are read as UTF-8; "
       "reports are stored with whitespace collapsed",
}
SPLITS = ("train", "validation")


# --------------------------------------------------------------------------------------------------------------
# Manifest: the CSVs joined on disk
# --------------------------------------------------------------------------------------------------------------


def _read_own_json(path: Path):
    """A JSON file this ingest wrote (in work/, or summary.json); one damaged (a disk fault, a power cut before the
    page cache reached the disk) is a ValueError naming it, not a bare JSON error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {err}); run again with --restart to ingest "
                         "anew") from None


def build_manifest(mimic_root: Path, work: Path, limit: Optional[int]) -> dict:
    """Stream record_list.csv and machine_measurements.csv into work/manifest.sqlite; returns its info."""
    done = work / "manifest.json"
    if done.is_file():
        return _read_own_json(done)
    if not (mimic_root / "record_list.csv").is_file():
        raise FileNotFoundError(f"{mimic_root}: record_list.csv not found (is this a MIMIC-IV-ECG v1.0 folder?)")
    db_path = work / "manifest.sqlite"
    tmp = work / "manifest.sqlite.tmp"
    if tmp.exists():
        tmp.unlink()
    con = sqlite3.connect(tmp)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute(
        "CREATE TABLE records (idx INTEGER PRIMARY KEY, line INTEGER, subject_id INTEGER, study_id INTEGER, "
        "ecg_time TEXT, path TEXT, status TEXT, detail TEXT)"
    )
    # a study listed again with another report is marked: which report describes its ECG is unknowable
    con.execute("CREATE TABLE reports (study_id INTEGER PRIMARY KEY, report TEXT, conflicting INTEGER)")
    upsert = ("INSERT INTO reports VALUES (?,?,0) ON CONFLICT(study_id) DO UPDATE "
              "SET conflicting = conflicting OR report != excluded.report")
    bad_mm_lines: list = []
    n = 0
    batch = []
    for entry in iter_record_list(mimic_root):
        if limit is not None and entry["index"] >= limit:
            break
        batch.append(
            (entry["index"], entry["line"], entry["subject_id"], entry["study_id"], entry["ecg_time"], entry["path"],
             entry["status"], entry["detail"])
        )
        n += 1
        if len(batch) >= 10000:
            con.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?,?)", batch)
            batch = []
    con.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?,?)", batch)
    batch = []
    n_reports = 0
    for study, report in iter_machine_measurements(mimic_root, lambda line, _why: bad_mm_lines.append(line)):
        batch.append((study, report))
        n_reports += 1
        if len(batch) >= 10000:
            con.executemany(upsert, batch)
            batch = []
    con.executemany(upsert, batch)
    con.commit()
    bad_rl_lines = [r[0] for r in con.execute(
        "SELECT line FROM records WHERE status = 'malformed_record_list_row' ORDER BY idx"
    )]
    con.close()
    os.replace(tmp, db_path)
    info = {
        "records": n,
        "report_rows": n_reports,
        "malformed_csv_rows": {"record_list.csv": len(bad_rl_lines), "machine_measurements.csv": len(bad_mm_lines)},
        # line numbers (the first 1000 per file) of the malformed rows, so they can be found and fixed
        "malformed_csv_lines": {
            "record_list.csv": bad_rl_lines[:1000], "machine_measurements.csv": bad_mm_lines[:1000]
        },
    }
    write_json(done, info)
    return info


# --------------------------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------------------------


def _chunk_dir(work: Path, chunk: int) -> Path:
    return work / "chunks" / f"chunk-{chunk:05d}"


def process_chunk(task: dict) -> dict:
    """Read the records [start, stop) of the manifest and write this chunk's train/validation Arrow files."""
    from datasets.arrow_writer import ArrowWriter

    work, mimic_root = Path(task["work"]), Path(task["mimic_root"])
    final = _chunk_dir(work, task["chunk"])
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        con = sqlite3.connect(f"file:{work / 'manifest.sqlite'}?mode=ro", uri=True)
        rows = con.execute(
            "SELECT r.idx, r.line, r.subject_id, r.study_id, r.ecg_time, r.path, r.status, r.detail, m.report, "
            "m.conflicting "
            "FROM records r "
            "LEFT JOIN reports m ON m.study_id = r.study_id WHERE r.idx >= ? AND r.idx < ? ORDER BY r.idx",
            (task["start"], task["stop"]),
        ).fetchall()
        con.close()
    except sqlite3.DatabaseError as err:
        raise ValueError(f"{work / 'manifest.sqlite'} is damaged ({err}); run again with --restart to ingest "
                         "anew") from None
    feats = features()
    writers = {
        s: ArrowWriter(features=feats, path=str(tmp / f"{s}.arrow"), writer_batch_size=task["writer_batch_size"])
        for s in SPLITS
    }
    kept = {s: 0 for s in SPLITS}
    dropped: dict = {}
    dropped_rows, file_states = [], {}
    for idx, line, subject, study, ecg_time, path, status, detail, report, conflicting in rows:
        entry = {"index": idx, "line": line, "subject_id": subject, "study_id": study, "ecg_time": ecg_time or "",
                 "path": path, "status": status, "detail": detail or ""}
        try:
            row = build_row(mimic_root, entry, report, bool(conflicting))
        except RecordDropped as drop:
            dropped[drop.reason] = dropped.get(drop.reason, 0) + 1
            dropped_rows.append([idx, line, study, path, drop.reason, drop.detail[:300]])
            if drop.reason in _FILE_DROPS:  # a resume compares them: the files may be a download under way
                file_states[path] = _file_state(mimic_root / path)
            continue
        split = subject_split(subject, task["seed"], task["val_fraction"])
        writers[split].write(row)
        kept[split] += 1
    for w in writers.values():
        w.finalize()
        w.close()
    result = {"chunk": task["chunk"], "start": task["start"], "stop": task["stop"], "read": len(rows),
              "kept": kept, "dropped": dropped, "dropped_rows": dropped_rows, "file_states": file_states}
    write_json(tmp / "result.json", result)
    fsync_tree(tmp)  # a power cut must not leave a published chunk with empty shards
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return result


def _settings(args) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "mimic_root": str(Path(args["mimic_root"]).resolve()),
        "seed": int(args["seed"]),
        "val_fraction": float(args["val_fraction"]),
        "limit": None if args["limit"] is None else int(args["limit"]),
        "chunk_size": int(args["chunk_size"]),
    }


def prepare_mimic(
    mimic_root,
    output,
    num_proc: int = 1,
    val_fraction: float = 0.02,
    seed: int = 0,
    limit: Optional[int] = None,
    chunk_size: int = 1000,
    writer_batch_size: int = 64,
    progress: bool = True,
    restart: bool = False,
) -> dict:
    """Ingest MIMIC-IV-ECG into OUTPUT (see the module docstring); returns the summary dict.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    mimic_root, out = Path(mimic_root), Path(output)
    work = out / "work"
    settings = _settings(
        {"mimic_root": mimic_root, "seed": seed, "val_fraction": val_fraction, "limit": limit, "chunk_size": chunk_size}
    )
    for leftover in out.glob(".trash-*") if out.is_dir() else ():
        _remove(leftover)
    if restart:  # summary first: a kill midway leaves an unfinished ingest, never a "complete" one without data
        for p in (out / "summary.json", out / "dataset", out / "dataset.tmp", work):
            _discard(p)
    summary_path = out / "summary.json"
    if summary_path.is_file() and (out / "dataset").is_dir():
        summary = _read_own_json(summary_path)
        if summary.get("settings") == settings and summary.get("complete"):
            if progress:
                print(f"{out}: already prepared (summary.json); nothing to do. Use --restart to rebuild.")
            if summary.get("inputs") not in (None, _input_fingerprint(mimic_root)):
                print(f"warning: record_list.csv or machine_measurements.csv under {mimic_root} changed since "
                      f"{out} was prepared; it was not rebuilt (--restart ingests anew)", file=sys.stderr)
            return summary
    work.mkdir(parents=True, exist_ok=True)
    settings_path = work / "settings.json"
    if settings_path.is_file():
        old = _read_own_json(settings_path)
        if old != settings:
            if old.get("format_version") != FORMAT_VERSION:
                old = (f"(by an older version of this code, format {old.get('format_version')}; this one writes "
                       f"{FORMAT_VERSION}, which reads some records and reports otherwise) {old}")
            if summary_path.is_file() and (out / "dataset").is_dir():
                raise ValueError(
                    f"{out} was prepared with other settings {old} (asked: {settings}); use the same arguments, "
                    "or --restart to rebuild it with these (the prepared dataset is replaced)"
                )
            raise ValueError(
                f"{out} holds an unfinished ingest with other settings {old}; use the same arguments to resume, "
                "or --restart to start over"
            )
        _check_inputs_unchanged(out, work, mimic_root)
    else:
        write_json(work / "inputs.json", _input_fingerprint(mimic_root))
        write_json(settings_path, settings)

    t0 = time.perf_counter()
    manifest = build_manifest(mimic_root, work, limit)
    n = manifest["records"]
    n_chunks = max(1, math.ceil(n / chunk_size))
    (work / "chunks").mkdir(exist_ok=True)
    for stale in (work / "chunks").glob("*.tmp"):
        shutil.rmtree(stale)
    tasks = [
        {"work": str(work), "mimic_root": str(mimic_root), "chunk": c, "start": c * chunk_size,
         "stop": min(n, (c + 1) * chunk_size), "seed": seed, "val_fraction": val_fraction,
         "writer_batch_size": writer_batch_size}
        for c in range(n_chunks)
        if not (_chunk_dir(work, c) / "result.json").is_file()
    ]
    done_records = n - sum(t["stop"] - t["start"] for t in tasks)

    bar = None
    if not progress:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=done_records, desc="MIMIC-IV-ECG ingest", unit="rec", smoothing=0.05)
    num_proc = max(1, int(num_proc or 1))
    if num_proc == 1 or len(tasks) <= 1:
        for task in tasks:
            res = process_chunk(task)
            if bar is not None:
                bar.update(res["read"])
    else:
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(min(num_proc, len(tasks)), maxtasksperchild=50) as pool:
            for res in pool.imap_unordered(process_chunk, tasks):
                if bar is not None:
                    bar.update(res["read"])
    if bar is not None:
        bar.close()

    summary = _finish(out, work, settings, manifest, n_chunks)
    summary["elapsed_s_last_run"] = round(time.perf_counter() - t0, 2)
    write_json(summary_path, summary)
    return summary


def _input_fingerprint(mimic_root: Path) -> dict:
    """Size and modification time of the two CSVs an ingest reads."""
    out = {}
    for name in ("record_list.csv", "machine_measurements.csv"):
        st = (mimic_root / name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def _check_inputs_unchanged(out: Path, work: Path, mimic_root: Path) -> None:
    """Refuse to resume an ingest whose CSVs changed, or whose records once missing are there now: the finished
    chunks would keep their old rows and drops beside the new ones (ValueError; --restart starts over)."""
    saved = work / "inputs.json"
    if saved.is_file() and _read_own_json(saved) != _input_fingerprint(mimic_root):
        raise ValueError(f"{out}: record_list.csv or machine_measurements.csv under {mimic_root} changed since this "
                         "ingest started; its finished chunks hold the old rows. Use --restart to ingest anew")
    arrived, changed = [], []
    for result in sorted((work / "chunks").glob("*/result.json")):
        finished = result.stat().st_mtime
        saved = _read_own_json(result)
        states = saved.get("file_states")  # absent in a chunk of an older version: its mtime is compared
        for _, _, _, path, reason, detail in saved["dropped_rows"]:
            if reason == "missing_record" and (mimic_root / f"{path}.hea").is_file():
                arrived.append(path)
            elif reason == "missing_dat" and Path(str(detail).split(" not found")[0]).is_file():
                arrived.append(path)
            elif reason in _FILE_DROPS and (
                    _file_state(mimic_root / path) != states.get(path) if states is not None
                    else _modified_since(mimic_root / path, finished)):
                # a download that was under way: its short .dat was dropped as truncated. Sizes and times are
                # compared, not "newer than": wget -N stamps a file with the server's older time
                changed.append(path)
    if arrived:
        raise ValueError(f"{out}: {len(arrived)} record(s) missing when this ingest started are there now (first: "
                         f"{arrived[0]}); resumed, they would stay dropped. Use --restart to ingest anew")
    if changed:
        raise ValueError(f"{out}: {len(changed)} record(s) dropped for their files have changed since (first: "
                         f"{changed[0]}, a download finished?); resumed, they would stay dropped. Use --restart to "
                         "ingest anew")


# drops decided by a record's own files: a file written since may now read (a download that finished)
_FILE_DROPS = frozenset({"bad_header", "truncated_dat", "header_data_mismatch", "checksum_mismatch",
                         "unreadable_record", "unsupported_format"})


def _file_state(base: Path) -> list:
    """[size, mtime_ns] of the record's header and signal file (BASE.hea, BASE.dat); None for a missing one."""
    state = []
    for suffix in (".hea", ".dat"):
        try:
            st = (base.parent / (base.name + suffix)).stat()
            state.append([st.st_size, st.st_mtime_ns])
        except OSError:
            state.append(None)
    return state


def _modified_since(base: Path, when: float) -> bool:
    """Whether the record's header or signal file (BASE.hea, BASE.dat) was modified after `when`."""
    for suffix in (".hea", ".dat"):
        try:
            if (base.parent / (base.name + suffix)).stat().st_mtime > when:
                return True
        except OSError:
            continue
    return False


def _finish(out: Path, work: Path, settings: dict, manifest: dict, n_chunks: int) -> dict:
    """Aggregate the chunk results into summary.json/dropped.csv and assemble OUTPUT/dataset from the shards."""
    import numpy as np

    read, kept = 0, {s: 0 for s in SPLITS}
    per_chunk = []
    dropped = {}
    with open(out / "dropped.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "line", "study_id", "path", "reason", "detail"])
        for c in range(n_chunks):
            res = _read_own_json(_chunk_dir(work, c) / "result.json")
            read += res["read"]
            per_chunk.append(res["kept"])
            for s in SPLITS:
                kept[s] += res["kept"][s]
            for reason, count in res["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + count
            w.writerows(res["dropped_rows"])
    os.replace(out / "dropped.csv.tmp", out / "dropped.csv")
    total_kept = sum(kept.values())
    if total_kept + sum(dropped.values()) != read:
        raise RuntimeError("internal error: kept + dropped != read")

    ordered_drops = {r: dropped[r] for r in DROP_REASONS if r in dropped}
    ordered_drops.update({r: v for r, v in dropped.items() if r not in ordered_drops})
    if total_kept == 0:
        raise MimicInputError(
            f"{settings['mimic_root']}: no usable record: all {read} rows of record_list.csv were dropped "
            f"({ordered_drops}); see {out / 'dropped.csv'}"
        )
    dataset = assemble_dataset(out, work, per_chunk)
    subjects = {}
    for s in SPLITS:
        col = dataset[s].data.column("subject_id").to_numpy() if len(dataset[s]) else np.zeros(0, dtype=np.int64)
        subjects[s] = np.unique(col)
    if len(np.intersect1d(subjects["train"], subjects["validation"])):  # cannot happen with subject_split
        raise RuntimeError("a subject is on both sides of the split")
    write_text(out / "validation_subjects.txt", "".join(f"{int(x)}\n" for x in subjects["validation"]))
    del dataset
    return {
        "complete": True,
        "read": read,
        "kept": total_kept,
        "dropped": ordered_drops,
        "malformed_csv_rows": manifest["malformed_csv_rows"],
        "malformed_csv_lines": manifest["malformed_csv_lines"],
        "machine_measurements_rows": manifest["report_rows"],
        "splits": {s: {"records": kept[s], "subjects": int(len(subjects[s]))} for s in SPLITS},
        "split_method": "subject-level: validation iff blake2b(f'{seed}:{subject_id}')/2**64 < val_fraction",
        "dataset": "dataset",
        "chunks": n_chunks,
        "signal_storage": "int16 ADC values as stored in the .dat files + per-lead adc_gain (adu/mV) and "
        "baseline; -32768 = missing sample; decode with train.mimic.decode_signal",
        "settings": settings,
        "inputs": _read_own_json(work / "inputs.json") if (work / "inputs.json").is_file() else None,
    }


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _discard(path: Path) -> None:
    """Remove `path` by first renaming it to .trash-NAME, so a kill midway never leaves a half-deleted folder under
    the real name (leftover .trash-* are removed by the next run)."""
    if not (path.exists() or path.is_symlink()):
        return
    trash = path.with_name(f".trash-{path.name}")
    _remove(trash)
    os.replace(path, trash)
    _remove(trash)


def _load_if_complete(path: Path, expected: dict):
    """The DatasetDict at `path` if it loads with the expected splits, row counts and features, else None."""
    from datasets import load_from_disk

    if not (path / "dataset_dict.json").is_file():
        return None
    try:
        ds = load_from_disk(str(path))
    except Exception:  # a foreign or damaged folder: rebuilt from the shards
        return None
    feats = features()
    if set(ds) != set(SPLITS) or any(len(ds[s]) != expected[s] or ds[s].features != feats for s in SPLITS):
        return None
    return ds


def assemble_dataset(out: Path, work: Path, per_chunk: list):
    """Turn the finished chunk shards into OUTPUT/dataset, a DatasetDict that `datasets.load_from_disk` opens.

    The shards are opened with Dataset.from_file (memory-mapped), concatenated in chunk order and written by
    DatasetDict.save_to_disk into OUTPUT/dataset.tmp, checked with load_from_disk, and renamed to OUTPUT/dataset in one
    step: the dataset exists complete or not at all. Only then are the shards deleted. A run killed anywhere in here
    finds, on the next run, either the shards (and redoes the copy) or the finished dataset (and finishes the clean-up).
    Needs free disk space for one more copy of the kept records while it runs.
    """
    from datasets import Dataset, DatasetDict, concatenate_datasets

    target, tmp = out / "dataset", out / "dataset.tmp"
    expected = {split: sum(kept[split] for kept in per_chunk) for split in SPLITS}
    if _load_if_complete(target, expected) is None:
        shards = {
            split: [_chunk_dir(work, c) / f"{split}.arrow" for c, kept in enumerate(per_chunk) if kept[split] > 0]
            for split in SPLITS
        }
        missing = [f for split in SPLITS for f in shards[split] if not f.is_file()]
        if missing:
            raise ValueError(
                f"{target} is not a finished dataset of this ingest and its chunk shards are gone ({missing[0]}); "
                "re-run with --restart"
            )
        for c, kept in enumerate(per_chunk):  # a shard cut at a record-batch boundary reads as a shorter, whole one
            for split in (s for s in SPLITS if kept[s] > 0):
                shard = _chunk_dir(work, c) / f"{split}.arrow"
                try:
                    rows = len(Dataset.from_file(str(shard)))
                except Exception as err:  # noqa: BLE001 - pyarrow's own errors for a file cut mid-batch
                    rows = f"no readable rows ({type(err).__name__})"
                if rows != kept[split]:
                    raise ValueError(f"{shard} holds {rows} rows where its chunk recorded {kept[split]} (cut "
                                     "short); run again with --restart to ingest anew")
        _discard(target)
        _remove(tmp)
        feats = features()
        parts = DatasetDict({
            split: concatenate_datasets([Dataset.from_file(str(f)) for f in shards[split]]) if shards[split]
            else Dataset.from_dict({k: [] for k in feats}, features=feats)
            for split in SPLITS
        })
        # one (empty) file for an empty split: save_to_disk would write none, which load_from_disk cannot open
        parts.save_to_disk(str(tmp), num_shards={split: 1 for split in SPLITS if not shards[split]})
        del parts
        if _load_if_complete(tmp, expected) is None:
            raise ValueError(f"{tmp}: the assembled dataset does not hold the {expected} rows of the chunk results; "
                             "run again with --restart to ingest anew")
        fsync_tree(tmp)
        os.replace(tmp, target)
    for shard in sorted((work / "chunks").glob("chunk-*/*.arrow")):  # the data now live in OUTPUT/dataset
        shard.unlink()
    return _load_if_complete(target, expected)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.prepare_mimic",
        description="Prepare MIMIC-IV-ECG v1.0 as a memory-mapped Arrow DatasetDict (train/validation by subject).",
        epilog="Re-run the same command to resume after a stop or a kill. Bad records (including paths leading outside "
        "--mimic-root, never opened) are dropped and counted by reason in OUTPUT/summary.json and listed in "
        "OUTPUT/dropped.csv with their record_list.csv line. Exit 2: a CSV without its columns or data rows, or no "
        "usable record at all.",
    )
    parser.add_argument("--mimic-root", required=True, help="folder with record_list.csv, machine_measurements.csv, files/")
    parser.add_argument("--output", required=True, help="folder for dataset/, summary.json, dropped.csv, work/")
    parser.add_argument("--num-proc", type=int, default=1, help="processes reading chunks in parallel")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="fraction of subjects in validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject-level split")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows of record_list.csv")
    parser.add_argument("--chunk-size", type=int, default=1000, help="records per resumable chunk")
    parser.add_argument("--writer-batch-size", type=int, default=64, help="rows buffered per Arrow write")
    parser.add_argument("--restart", action="store_true", help="discard a previous (partial) ingest in OUTPUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from train.run_lock import FolderInUseError, RunLock

    try:
        with RunLock(args.output):  # two ingests into one folder would publish each other's chunks
            summary = prepare_mimic(
                args.mimic_root, args.output, num_proc=args.num_proc, val_fraction=args.val_fraction, seed=args.seed,
                limit=args.limit, chunk_size=args.chunk_size, writer_batch_size=args.writer_batch_size,
                progress=not args.quiet, restart=args.restart,
            )
    except (FileNotFoundError, ValueError, FolderInUseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits = summary["splits"]
    print(
        f"read {summary['read']}, kept {summary['kept']} (train {splits['train']['records']}, validation "
        f"{splits['validation']['records']}), dropped {sum(summary['dropped'].values())} {summary['dropped']}; "
        f"summary: {Path(args.output) / 'summary.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
