"""MIMIC-IV-ECG v1.0 on Hugging Face `datasets`: ingest, prepared-dataset loading, streaming and collation.

The loader only READS: it hands on the stored ADC samples with their per-lead gain/baseline, the sampling rate, the
lead names as stored (MIMIC order: I, II, III, aVR, aVF, aVL, V1-V6), the report text and ids. All signal
conditioning (lead reorder, resampling, crop/pad, NaN repair) is done by `processing_dbeta.DBetaFeatureExtractor`,
e.g. through `MimicECGCollator`.

Row schema (`features()`), shared by the prepared dataset and the streaming path:
    study_id, subject_id (int64), ecg_time, path, report (string),
    signal [12, 5000] int16  - the ADC values exactly as in the .dat file; -32768 marks a missing sample (NaN),
    adc_gain [12] float32    - ADC units per millivolt (units already folded in),
    baseline [12] int32      - ADC value of 0 mV,
    sampling_rate float32, lead_names [12] string.
`decode_signal(row)` -> float32 [12, T] millivolts, NaN where samples are missing (`decode_signals` for a batch).

Entry points: `python -m train.prepare_mimic` (train/prepare_mimic.py) builds the prepared copy;
`load_prepared_mimic(OUTPUT)` opens it (DatasetDict train/validation, memory-mapped); `mimic_dataloader(split)` reads
it in collated batches; `mimic_iterable_dataset(MIMIC_ROOT)` streams the same rows straight from the download.

Why int16 + gain rather than float16: MIMIC stores 16-bit integers (200 adu/mV), so int16 is lossless (0 error vs
the wfdb physical signal) at the same 2 bytes/sample as float16, while float16 rounds (max error ~1e-3 mV on
+-5 mV) and needs a cast anyway. benchmarks/data_speed.py measures size, error and decode speed of both.

Drop reasons (first failing check wins, report checks come before the signal is read):
    malformed_record_list_row (with its line number), unsafe_path (a record_list path or a .dat name in a header
    that is absolute, climbs with "..", or resolves through a symlink outside the MIMIC folder; the file is never
    opened; a files/ folder that is itself a symlink is allowed), duplicate_study, missing_report (no
    machine_measurements row, e.g. a malformed one), empty_report, missing_record (.hea absent), missing_dat,
    bad_header, truncated_dat / header_data_mismatch (.dat smaller / larger than the header's samples x signals x
    bytes per sample of its format), checksum_mismatch, unreadable_record, wrong_lead_count, unknown_leads,
    wrong_sampling_rate (also a header stating no rate), wrong_length, unsupported_format, bad_units,
    uncalibrated (an ADC gain of 0 or none: the WFDB spec's "uncalibrated", which wfdb would read as 200 adu/mV),
    all_nan_lead, flat_record (every lead constant: no ECG).
The CSVs are read one physical line per row (as MIMIC writes them), so a broken line costs only that row; report
fields reading "nan" count as empty. A CSV without its key columns or without data rows is an error (MimicInputError).
Records at another rate or length are dropped, not resampled: MIMIC-IV-ECG is uniformly 500 Hz x 10 s, and a fixed
[12, 5000] schema keeps the Arrow column fixed-size and fast to read. Partial NaN runs are kept (the processor's
nan_policy repairs them).
"""

from __future__ import annotations

import csv
import hashlib
import re
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List as TList, Optional, Sequence, Tuple

import numpy as np

from dbeta.processing_dbeta import (
    WFDB_RECORD_LINE,
    WFDB_SIGNAL_LINE,
    MIMIC_LEADS,
    STANDARD_LEADS,
    assemble_report,
    canonical_lead_name,
    decode_wfdb_header,
    unit_scale_to_mv,
    wfdb_signal_files,
)
from train.n3s import canonical_report


NUM_LEADS = 12
SAMPLING_RATE = 500
NUM_SAMPLES = 5000
ADC_NAN = -32768
REPORT_COLUMNS = tuple(f"report_{i}" for i in range(18))
RECORD_LIST_COLUMNS = ("subject_id", "study_id", "file_name", "ecg_time", "path")

# WFDB "invalid sample" value per storage format (the formats whose samples fit in int16).
_FMT_NAN = {"16": -32768, "61": -32768, "80": -128, "212": -2048, "310": -512, "311": -512}

DROP_REASONS = (
    "malformed_record_list_row",
    "unsafe_path",
    "duplicate_study",
    "missing_report",
    "empty_report",
    "conflicting_reports",
    "missing_record",
    "missing_dat",
    "bad_header",
    "truncated_dat",
    "header_data_mismatch",
    "checksum_mismatch",
    "unreadable_record",
    "wrong_lead_count",
    "unknown_leads",
    "wrong_sampling_rate",
    "wrong_length",
    "unsupported_format",
    "bad_units",
    "uncalibrated",
    "all_nan_lead",
    "flat_record",
)


def features():
    """The `datasets.Features` of a MIMIC row (prepared and streaming)."""
    from datasets import Array2D, Features, List, Value

    return Features(
        {
            "study_id": Value("int64"),
            "subject_id": Value("int64"),
            "ecg_time": Value("string"),
            "path": Value("string"),
            "report": Value("string"),
            "signal": Array2D((NUM_LEADS, NUM_SAMPLES), "int16"),
            "adc_gain": List(Value("float32"), length=NUM_LEADS),
            "baseline": List(Value("int32"), length=NUM_LEADS),
            "sampling_rate": Value("float32"),
            "lead_names": List(Value("string"), length=NUM_LEADS),
        }
    )


class RecordDropped(Exception):
    """A record that cannot enter the dataset; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def decode_signal(row) -> np.ndarray:
    """A stored row -> float32 [12, T] millivolts in the stored lead order (row["lead_names"]); NaN where missing.

    Works on rows in any `datasets` format (python lists, numpy, torch): (adc - baseline) / adc_gain.
    """
    return decode_signals(
        _to_numpy(row["signal"])[None], _to_numpy(row["adc_gain"])[None], _to_numpy(row["baseline"])[None]
    )[0]


def decode_signals(signal, adc_gain, baseline) -> np.ndarray:
    """Batched decode_signal: int [B, 12, T] ADC + [B, 12] gain/baseline -> float32 [B, 12, T] mV (NaN if missing)."""
    adc = _to_numpy(signal)
    x = adc.astype(np.float32)
    x -= _to_numpy(baseline).astype(np.float32)[..., None]
    x /= _to_numpy(adc_gain).astype(np.float32)[..., None]
    if adc.size and adc.min() <= ADC_NAN:
        x[adc == ADC_NAN] = np.nan
    return x


# --------------------------------------------------------------------------------------------------------------
# CSV parsing (line by line: a bad row is counted with its line number, never fatal to the rows after it)
# --------------------------------------------------------------------------------------------------------------

# Report fields that hold a missing value written as text (str(float("nan")), pandas' NA) rather than left empty.
_NULL_TEXT = frozenset({"nan", "<na>"})


class MimicInputError(ValueError):
    """A MIMIC-IV-ECG CSV the ingest cannot use at all (absent columns, no data rows); names the file."""


def _csv_rows(path: Path) -> Iterator[Tuple[int, int, list, Optional[list], str]]:
    """Yield (row_number, line_number, header, fields or None, problem) per non-blank line after the header.

    Row 0 is the first data row; line numbers count physical lines from 1. MIMIC-IV-ECG's CSVs hold one row per
    physical line, so each line is parsed on its own (quoted fields with commas are fine): an unterminated quote
    then spoils only its own line instead of swallowing every row after it. A quoted field spanning lines is not
    supported (each of its lines is a malformed row). Raises MimicInputError for a file without a header.
    """
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name, quoted or not
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = None
        i = 0
        lines = enumerate(f, 1)
        while True:
            try:
                lineno, line = next(lines)
            except StopIteration:
                break
            except UnicodeDecodeError:  # decoding with replacement put U+FFFD into reports, uncounted
                raise MimicInputError(f"{path}: {_first_non_utf8_line(path)} is not UTF-8 text: the file was saved in "
                                      "another encoding (Excel's cp1252?); convert it, e.g. iconv -f cp1252 -t utf-8"
                                      ) from None
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                fields, problem = next(csv.reader([line], strict=True)), ""
            except csv.Error as err:
                fields, problem = None, f"unparsable CSV ({err})"
            if header is None:
                if fields is None:
                    raise MimicInputError(f"{path}: line {lineno}: cannot parse the header ({problem})")
                header = [h.strip() for h in fields]
                continue
            if fields is not None and len(fields) != len(header):
                fields, problem = None, f"{len(fields)} fields, the header has {len(header)}"
            yield i, lineno, header, fields, problem
            i += 1
        if header is None:
            raise MimicInputError(f"{path}: empty file (expected a CSV header and data rows)")


def _first_non_utf8_line(path: Path) -> str:
    """ "line N (byte 0x..)" of the first line of `path` that does not decode as UTF-8 (text reading decodes in
    blocks, so its error does not say which line)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {lineno} (byte {raw[err.start]:#04x})"
    return "a line"


def _require_columns(path: Path, header: list, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise MimicInputError(f"{path}: no column(s) {missing} in the header {header}; expected {what}")


def _parse_int(value) -> int:
    """An id column's value; ValueError (a malformed row) unless it is an integer that fits int64 (the manifest
    is SQLite: a larger one would end the whole ingest there)."""
    number = int(str(value).strip())
    if not -(2**63) <= number < 2**63:
        raise ValueError(f"{str(value).strip()[:30]} does not fit a 64-bit integer id")
    return number


def check_record_path(path: str) -> str:
    """A record_list.csv `path` as a clean relative path; raises RecordDropped("unsafe_path") for anything that
    could leave the MIMIC folder (absolute, drive letter, backslash, "..", NUL), ValueError if empty."""
    path = str(path).strip()
    if "\x00" in path or "\\" in path or path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise RecordDropped("unsafe_path", f"{path!r} is not a path relative to the MIMIC-IV-ECG folder")
    path = path.rstrip("/")
    if ".." in path.split("/"):
        raise RecordDropped("unsafe_path", f"{path!r} climbs out of the MIMIC-IV-ECG folder")
    if not path:
        raise ValueError("empty path")
    return path


def iter_record_list(mimic_root) -> Iterator[dict]:
    """Entries of record_list.csv in file order:
    {"index", "line", "subject_id", "study_id", "ecg_time", "path", "status", "detail"}.

    `status` is None for a usable row, else "malformed_record_list_row", "unsafe_path" (see check_record_path) or
    "duplicate_study" (a study_id already listed earlier in the file); `detail` says why. Raises MimicInputError if
    the file lacks the subject_id/study_id/path columns or has no data row.
    """
    path = Path(mimic_root) / "record_list.csv"
    seen = set()
    rows = 0
    for i, lineno, header, fields, problem in _csv_rows(path):
        if i == 0:
            _require_columns(path, header, ("subject_id", "study_id", "path"), "a MIMIC-IV-ECG v1.0 record_list.csv")
        rows += 1
        entry = {"index": i, "line": lineno, "subject_id": -1, "study_id": -1, "ecg_time": "", "path": "",
                 "status": None, "detail": ""}
        try:
            if fields is None:
                raise ValueError(problem)
            row = dict(zip(header, fields))
            entry["subject_id"] = _parse_int(row["subject_id"])
            entry["study_id"] = _parse_int(row["study_id"])
            entry["ecg_time"] = str(row.get("ecg_time", "")).strip()
            entry["path"] = check_record_path(row["path"])
        except RecordDropped as drop:
            entry.update(status=drop.reason, detail=f"record_list.csv line {lineno}: {drop.detail}")
            entry["path"] = str(row["path"])[:200]
            yield entry
            continue
        except (ValueError, KeyError, TypeError) as err:
            entry["status"] = "malformed_record_list_row"
            entry["detail"] = f"record_list.csv line {lineno}: {err or 'bad value'}"
            entry["path"] = ",".join(fields or [])[:200]
            yield entry
            continue
        if entry["study_id"] in seen:
            entry["status"] = "duplicate_study"
            entry["detail"] = f"record_list.csv line {lineno}: study {entry['study_id']} listed earlier"
        seen.add(entry["study_id"])
        yield entry
    if rows == 0:
        raise MimicInputError(f"{path}: a header but no data rows (expected one row per ECG record)")


def iter_machine_measurements(mimic_root, on_malformed=None) -> Iterator[Tuple[int, str]]:
    """(study_id, report) for each well-formed row of machine_measurements.csv; the report is
    canonical_report(assemble_report(report_0..report_17)) (normalize_report, whitespace collapsed), possibly ""
    ("nan" fields count as empty).
    Malformed rows are skipped after `on_malformed(line_number, problem)`. Raises MimicInputError if the file lacks
    study_id or every report_* column, or has no data row."""
    path = Path(mimic_root) / "machine_measurements.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: machine_measurements.csv not found in the MIMIC-IV-ECG folder")
    columns = ()
    rows = 0
    for i, lineno, header, fields, problem in _csv_rows(path):
        if i == 0:
            columns = [c for c in REPORT_COLUMNS if c in header]
            _require_columns(path, header, ("study_id",), "a MIMIC-IV-ECG v1.0 machine_measurements.csv")
            if not columns:
                raise MimicInputError(
                    f"{path}: no report_0..report_17 columns in the header {header}; expected the machine report "
                    "fields of a MIMIC-IV-ECG v1.0 machine_measurements.csv"
                )
        rows += 1
        try:
            if fields is None:
                raise ValueError(problem)
            row = dict(zip(header, fields))
            study = _parse_int(row["study_id"])
        except (ValueError, KeyError, TypeError) as err:
            if on_malformed is not None:
                on_malformed(lineno, str(err) or "bad value")
            continue
        texts = [row[c] for c in columns]
        # whitespace collapsed (canonical_report, N3S's key): rows differing only in spacing are one report, not a
        # study with conflicting reports
        yield study, canonical_report(assemble_report(["" if t.strip().lower() in _NULL_TEXT else t for t in texts]))
    if rows == 0:
        raise MimicInputError(f"{path}: a header but no data rows (expected one row per study)")


# --------------------------------------------------------------------------------------------------------------
# Reading one record
# --------------------------------------------------------------------------------------------------------------


_RECORD_LINE = WFDB_RECORD_LINE
_SIGNAL_LINE = WFDB_SIGNAL_LINE


class WfdbHeader(SimpleNamespace):
    """The header fields the loader uses (same names as wfdb.Record attributes)."""


def parse_wfdb_header(text: str) -> WfdbHeader:
    """Parse a single-segment WFDB header (https://physionet.org/physiotools/wag/header-5.htm).

    A small, strict parser for the fields the loader needs: wfdb.rdheader spends ~3.5 ms per header in pandas
    look-ups, which would dominate the ingest. Raises ValueError on anything it does not understand (multi-segment
    records, malformed lines); read_record then falls back to wfdb.rdheader. tests/test_mimic.py checks it against
    wfdb.rdheader. Two fields keep what the text states where wfdb substitutes a default: `fs` is None when the record
    line gives no rate (wfdb: 250 Hz) and a signal's `adc_gain` is 0.0 when it is 0 or absent (wfdb: 200), the
    spec's "uncalibrated"; read_record refuses both.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError("empty header")
    m = _RECORD_LINE.match(lines[0])
    if m is None or m.group("nseg"):
        raise ValueError(f"unsupported record line {lines[0]!r}")
    n_sig = int(m.group("nsig"))
    if len(lines) < 1 + n_sig:
        raise ValueError(f"header lists {n_sig} signals but has {len(lines) - 1} signal lines")
    h = WfdbHeader(
        record_name=m.group("name"), n_sig=n_sig, fs=float(m.group("fs")) if m.group("fs") else None,
        sig_len=int(m.group("len")) if m.group("len") else None,
        file_name=[], fmt=[], samps_per_frame=[], skew=[], byte_offset=[], adc_gain=[], baseline=[], units=[],
        adc_res=[], adc_zero=[], init_value=[], checksum=[], block_size=[], sig_name=[],
    )
    for line in lines[1 : 1 + n_sig]:
        s = _SIGNAL_LINE.match(line)
        if s is None:
            raise ValueError(f"unparsable signal line {line!r}")
        zero = int(s.group("zero")) if s.group("zero") else None
        gain = float(s.group("gain")) if s.group("gain") else 0.0
        h.file_name.append(s.group("file"))
        h.fmt.append(s.group("fmt"))
        h.samps_per_frame.append(int(s.group("spf")) if s.group("spf") else 1)
        h.skew.append(int(s.group("skew")) if s.group("skew") else None)
        h.byte_offset.append(int(s.group("off")) if s.group("off") else None)
        h.adc_gain.append(gain)
        h.baseline.append(int(s.group("base")) if s.group("base") else (zero or 0))
        h.units.append(s.group("units") or "mV")
        h.adc_res.append(int(s.group("res")) if s.group("res") else None)
        h.adc_zero.append(zero)
        h.init_value.append(int(s.group("init")) if s.group("init") else None)
        h.checksum.append(int(s.group("cks")) if s.group("cks") else None)
        h.block_size.append(int(s.group("bs")) if s.group("bs") else None)
        h.sig_name.append(s.group("desc"))
    return h


_MAX_HEADER_BYTES = 1 << 20  # a WFDB header is a few hundred bytes; anything this large is not one


def read_header(hea: Path):
    """parse_wfdb_header, falling back to wfdb.rdheader for anything unusual; raises RecordDropped("bad_header") with
    this parser's reason (clearer than wfdb's, e.g. an IndexError for an empty file) when both fail."""
    try:
        size = hea.stat().st_size
        if size > _MAX_HEADER_BYTES:
            raise RecordDropped("bad_header", f"{hea}: {size} bytes, too large for a WFDB header")
        raw = hea.read_bytes()
    except OSError as err:
        raise RecordDropped("unreadable_record", f"{hea}: {err}") from None
    text = decode_wfdb_header(raw)  # as read_wfdb: latin-1 alone turned a UTF-8 'µV' into 'ÂµV'
    try:
        return parse_wfdb_header(text)
    except ValueError as err:
        own = err
    import wfdb

    try:
        header = wfdb.rdheader(str(hea)[: -len(".hea")])
    except Exception as err:
        raise RecordDropped("bad_header", f"{hea}: {own} (wfdb: {type(err).__name__})") from None
    if len(header.file_name or []) != int(header.n_sig or 0):  # wfdb accepts a header missing signal lines
        raise RecordDropped("bad_header", f"{hea}: {own}")
    _as_stated(header, text)
    return header


def _as_stated(header, text: str) -> None:
    """wfdb.rdheader reads a gain of 0 or none as 200 adu/mV and a missing rate as 250 Hz; put back what the text
    states (gain 0.0, fs None), as parse_wfdb_header keeps them, so read_record's checks see them. Fields are
    taken by position, which also holds for the lines parse_wfdb_header refuses (a stray token, a space before a
    baseline)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if len(lines[0].split()) < 3:
        header.fs = None
    gains = list(header.adc_gain)
    for i, line in enumerate(lines[1:1 + len(gains)]):
        parts = line.split()
        stated = parts[2].split("(")[0].split("/")[0] if len(parts) > 2 else ""
        try:
            if not stated or float(stated) == 0:
                gains[i] = 0.0
        except ValueError:
            continue  # not a number: wfdb's reading stands
    header.adc_gain = gains


@lru_cache(maxsize=8)
def _allowed_roots(mimic_root: str) -> Tuple[Path, ...]:
    # files/ may be a symlink to another disk; anything else resolving outside these is refused
    root = Path(mimic_root).resolve()
    return tuple(dict.fromkeys((root, (root / "files").resolve())))


def _check_inside(mimic_root, path: Path, what: str) -> None:
    """RecordDropped("unsafe_path") unless `path`, symlinks resolved, lies in the MIMIC folder (or its files/)."""
    real = path.resolve()
    if not any(real.is_relative_to(r) for r in _allowed_roots(str(mimic_root))):
        raise RecordDropped("unsafe_path", f"{path}: {what} resolves to {real}, outside {mimic_root}")


def read_record(mimic_root, path: str) -> dict:
    """Read the WFDB record at `mimic_root/path` into the compact form; raises RecordDropped.

    Returns {"signal" int16 [12, T], "adc_gain" float32 [12] (adu/mV), "baseline" int32 [12],
    "sampling_rate" float, "lead_names" [12]}. Neither `path` nor the .dat names in its header may lead outside
    `mimic_root` (RecordDropped("unsafe_path"), checked before the file is opened).
    """
    base = Path(mimic_root) / check_record_path(path)
    hea = base.with_name(base.name + ".hea")
    _check_inside(mimic_root, hea, "the header")
    if not hea.is_file():
        raise RecordDropped("missing_record", f"{hea} not found")
    header = read_header(hea)
    n_sig = int(header.n_sig or 0)
    if n_sig != NUM_LEADS:
        raise RecordDropped("wrong_lead_count", f"{hea}: {n_sig} signals, expected {NUM_LEADS}")
    try:
        names = [canonical_lead_name(str(n)) for n in header.sig_name]
    except ValueError as err:
        raise RecordDropped("unknown_leads", f"{hea}: {err}") from None
    if sorted(names) != sorted(STANDARD_LEADS):
        raise RecordDropped("unknown_leads", f"{hea}: leads {header.sig_name}")
    if header.fs is None:
        raise RecordDropped("wrong_sampling_rate", f"{hea}: the record line states no sampling frequency")
    if abs(float(header.fs) - SAMPLING_RATE) > 1e-6:
        raise RecordDropped("wrong_sampling_rate", f"{hea}: {header.fs} Hz, expected {SAMPLING_RATE}")
    if int(header.sig_len or 0) != NUM_SAMPLES:
        raise RecordDropped("wrong_length", f"{hea}: {header.sig_len} samples, expected {NUM_SAMPLES}")
    fmts = [str(f) for f in header.fmt]
    if any(f not in _FMT_NAN for f in fmts) or len(set(fmts)) != 1:
        raise RecordDropped("unsupported_format", f"{hea}: formats {sorted(set(fmts))}")
    if any((s or 1) != 1 for s in (header.samps_per_frame or [])) or any(header.skew or []):
        raise RecordDropped("unsupported_format", f"{hea}: multi-frequency or skewed record")
    try:
        scales = np.array([unit_scale_to_mv(u) for u in (header.units or ["mV"] * n_sig)])
    except ValueError as err:
        raise RecordDropped("bad_units", f"{hea}: {err}") from None
    raw_gains = np.array(header.adc_gain, dtype=np.float64)
    if (raw_gains == 0).any():
        leads = [str(header.sig_name[i]) for i in np.nonzero(raw_gains == 0)[0]]
        raise RecordDropped("uncalibrated", f"{hea}: ADC gain 0 or absent for {leads} (uncalibrated in the WFDB "
                                            "spec; the true gain is unknown)")
    if not (np.isfinite(raw_gains).all() and (raw_gains > 0).all()):
        raise RecordDropped("bad_header", f"{hea}: ADC gains {raw_gains.tolist()}, expected positive numbers")

    files = list(dict.fromkeys(header.file_name))
    for fname in files:
        _check_inside(mimic_root, hea.parent / str(fname), "a signal file named in the header")
    for f in wfdb_signal_files(header, hea.parent, NUM_SAMPLES):  # a wrong format or lead count reads as noise
        if f["size"] is None:
            raise RecordDropped("missing_dat", f"{f['path']} not found (or not a readable file)")
        what = f"{f['path']}: {f['size']} bytes, the header implies {f['expected']} ({f['signals']} signals x " \
               f"{NUM_SAMPLES} samples in format {f['fmt']})"
        if f["size"] < f["expected"]:
            raise RecordDropped("truncated_dat", what)
        if f["size"] > f["expected"]:
            raise RecordDropped("header_data_mismatch", what)
    simple = len(files) == 1 and fmts[0] == "16" and not any(header.byte_offset or [])
    if simple:  # MIMIC's case: one interleaved little-endian int16 file
        try:
            d = np.fromfile(hea.parent / files[0], dtype="<i2").reshape(NUM_SAMPLES, NUM_LEADS)
        except (OSError, ValueError) as err:
            raise RecordDropped("unreadable_record", f"{hea.parent / files[0]}: {err}") from None
    else:
        import wfdb

        try:
            rec = wfdb.rdrecord(str(base), physical=False, return_res=16)
            d = np.asarray(rec.d_signal)
        except Exception as err:
            raise RecordDropped("unreadable_record", f"{base}: {type(err).__name__}: {err}") from None
        if d.ndim != 2 or d.shape != (NUM_SAMPLES, NUM_LEADS):
            raise RecordDropped("truncated_dat", f"{base}: read {d.shape}, header says ({NUM_SAMPLES}, {NUM_LEADS})")
        nan_value = _FMT_NAN[fmts[0]]
        stored = d
        d = np.where(d == nan_value, ADC_NAN, d)
        if d.min() < -32768 or d.max() > 32767:
            raise RecordDropped("unsupported_format", f"{base}: samples exceed int16")
        d = d.astype(np.int16)

    checksums = header.checksum
    if checksums and all(c is not None for c in checksums):
        # over the values as stored: a missing sample counts as its format's own marker (212's -2048), as
        # the WFDB library sums it when writing the header, not as the int16 marker it becomes here
        got = (d if simple else stored).sum(axis=0, dtype=np.int64) % 65536
        if any(int(g) != int(c) % 65536 for g, c in zip(got, checksums)):
            raise RecordDropped("checksum_mismatch", f"{base}: data do not match the header checksums")
    signal = np.ascontiguousarray(d.T)
    missing = signal == ADC_NAN
    if missing.any():
        dead = np.nonzero(missing.all(axis=1))[0]
        if len(dead):
            raise RecordDropped("all_nan_lead", f"{base}: lead(s) {[header.sig_name[i] for i in dead]} have no sample")
    first = signal[np.arange(len(signal)), np.argmax(~missing, axis=1)]  # each lead has one (all-NaN refused)
    present = np.where(missing, first[:, None], signal)  # a missing sample cannot make a lead look alive
    if (present.max(axis=1) == present.min(axis=1)).all():  # the processor refuses it as no ECG: not a pair
        raise RecordDropped("flat_record", f"{base}: every lead is constant (an all-zero export, or the "
                                           "electrodes off)")
    gains = raw_gains / scales
    baselines = np.array([b or 0 for b in (header.baseline or [0] * n_sig)], dtype=np.int32)
    return {
        "signal": signal,
        "adc_gain": gains.astype(np.float32),
        "baseline": baselines,
        "sampling_rate": float(header.fs),
        "lead_names": [str(n) for n in header.sig_name],
    }


def build_row(mimic_root, entry: dict, report: Optional[str], conflicting: bool = False) -> dict:
    """A record_list entry + its report -> a row of FEATURES; raises RecordDropped. `conflicting`: the study has
    rows with different reports in machine_measurements.csv (which one describes this ECG is unknowable)."""
    if entry.get("status"):
        raise RecordDropped(entry["status"], entry.get("detail") or entry.get("path", ""))
    if report is None:
        raise RecordDropped("missing_report", f"study {entry['study_id']} has no machine_measurements row")
    if conflicting:
        raise RecordDropped("conflicting_reports", f"study {entry['study_id']} has rows with different reports in "
                                                   "machine_measurements.csv")
    if not report.strip():
        raise RecordDropped("empty_report", f"study {entry['study_id']}")
    rec = read_record(mimic_root, entry["path"])
    return {
        "study_id": int(entry["study_id"]),
        "subject_id": int(entry["subject_id"]),
        "ecg_time": entry.get("ecg_time", ""),
        "path": entry["path"],
        "report": report,
        **rec,
    }


# --------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------


def subject_split(subject_id: int, seed: int, val_fraction: float) -> str:
    """"validation" or "train" for a subject: blake2b(f"{seed}:{subject_id}") as a uniform number < val_fraction.

    Depends only on (seed, subject_id): every study of a subject lands on the same side, whatever the corpus order
    or chunking, with no subject list held in memory.
    """
    h = hashlib.blake2b(f"{int(seed)}:{int(subject_id)}".encode(), digest_size=8).digest()
    return "validation" if int.from_bytes(h, "big") / 2.0**64 < val_fraction else "train"


# --------------------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------------------


def read_reports(mimic_root) -> Tuple[Dict[int, str], frozenset]:
    """(study -> its report, the studies listed again with another report) of machine_measurements.csv, in memory
    (~200 MB for all of MIMIC-IV-ECG; prepare_mimic joins on disk instead). A conflicting study is dropped as
    "conflicting_reports" (build_row): which of its reports describes the ECG is unknowable."""
    reports: Dict[int, str] = {}
    conflicting = set()
    for study, report in iter_machine_measurements(mimic_root):
        if reports.setdefault(study, report) != report:
            conflicting.add(study)
    return reports, frozenset(conflicting)


@lru_cache(maxsize=2)
def _report_table(mimic_root: str, mtime: float) -> Tuple[Dict[int, str], frozenset]:
    return read_reports(mimic_root)


def _stream_rows(mimic_root: str, shards: TList[Tuple[int, int]], on_drop=None) -> Iterator[dict]:
    mm = Path(mimic_root) / "machine_measurements.csv"
    reports, conflicting = _report_table(str(mimic_root), mm.stat().st_mtime)
    for start, stop in shards:
        for entry in iter_record_list(mimic_root):
            i = entry["index"]
            if i < start:
                continue
            if i >= stop:
                break
            try:
                yield build_row(mimic_root, entry, reports.get(entry["study_id"]), entry["study_id"] in conflicting)
            except RecordDropped as drop:
                if on_drop is not None:
                    on_drop(entry, drop)


def count_record_list_rows(mimic_root) -> int:
    """Data rows of record_list.csv; raises MimicInputError for a file without its columns or rows."""
    return sum(1 for _ in iter_record_list(mimic_root))


def mimic_iterable_dataset(mimic_root, limit: Optional[int] = None, num_shards: int = 8):
    """A `datasets.IterableDataset` read straight from an unmodified MIMIC-IV-ECG folder (no prepared copy).

    Same row schema as the prepared dataset; dropped records are skipped. Split into `num_shards` contiguous ranges
    of record_list.csv so DataLoader workers (num_workers <= num_shards) share the work. The reports of
    machine_measurements.csv are held in memory (~200 MB for all of MIMIC-IV-ECG), the signals are not.
    `limit` keeps the first `limit` rows of record_list.csv. No train/validation split: use `subject_split`.
    """
    from datasets import IterableDataset

    root = str(Path(mimic_root).resolve())
    total = count_record_list_rows(root)
    next(iter_machine_measurements(root), None)  # fail now, not in a worker, on a file without report columns
    if limit is not None:
        total = min(total, int(limit))
    num_shards = max(1, min(int(num_shards), total or 1))
    bounds = np.linspace(0, total, num_shards + 1).astype(int)
    shards = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return IterableDataset.from_generator(
        _stream_rows, features=features(), gen_kwargs={"mimic_root": root, "shards": shards}
    )


# --------------------------------------------------------------------------------------------------------------
# Prepared dataset
# --------------------------------------------------------------------------------------------------------------


def load_prepared_mimic(output_dir):
    """The DatasetDict ("train", "validation") written by `python -m train.prepare_mimic --output DIR`
    (OUTPUT/dataset, memory-mapped; the same as datasets.load_from_disk(OUTPUT/dataset)). A split file cut short or
    split sizes other than OUTPUT/summary.json's are refused (ValueError): a file cut at an Arrow record-batch
    boundary loads shorter (`train.pretrain_data.load_saved_dataset`)."""
    from train.pretrain_data import load_saved_dataset

    path = Path(output_dir) / "dataset"
    if not (path / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{path}: no finished prepared dataset (run python -m train.prepare_mimic)")
    return load_saved_dataset(path)  # split files whole, and the rows summary.json records


def summary_of(summary: Path, folder_name: str) -> Optional[dict]:
    """prepare_mimic's summary.json when it describes the dataset folder `folder_name`; None for none (a damaged one
    with a warning: what it records goes unchecked). Read once per load and handed to the checks below."""
    import json
    import warnings

    try:
        recorded = json.loads(Path(summary).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        warnings.warn(f"{summary} does not read ({type(err).__name__}): the split sizes and ingest format it records "
                      f"for {folder_name} are not checked; python -m train.prepare_mimic --restart rewrites it")
        return None
    if not isinstance(recorded, dict) or recorded.get("dataset", folder_name) != folder_name:
        return None
    return recorded


def warn_if_other_format(recorded: Optional[dict], output_dir: Path) -> None:
    """Warn when prepare_mimic's summary (`summary_of`) of `output_dir` was written by another ingest format: an
    older one's records and reports follow its rules (listed with what changed since); a newer one may hold what this
    code does not expect."""
    import warnings

    from train.prepare_mimic import FORMAT_CHANGES, FORMAT_VERSION

    try:
        version = int(recorded["settings"]["format_version"])
    except (ValueError, TypeError, KeyError):
        return  # no summary, or not prepare_mimic's
    if version > FORMAT_VERSION:
        warnings.warn(f"{output_dir} was prepared by ingest format {version}, newer than this code's "
                      f"{FORMAT_VERSION}: its records may hold what this code does not expect; update the package",
                      stacklevel=3)
    elif version < FORMAT_VERSION:
        changes = "; ".join(f"({v}) {FORMAT_CHANGES[v]}" for v in range(version + 1, FORMAT_VERSION + 1)
                            if v in FORMAT_CHANGES)  # a summary edited to format 0 names no change 1
        warnings.warn(f"{output_dir} was prepared by ingest format {version}; this code writes "
                      f"{FORMAT_VERSION}, which differs: {changes}. It is used as prepared; run python -m "
                      "train.prepare_mimic --restart to ingest it under the current rules", stacklevel=3)


def split_size_mismatches(dataset, recorded: Optional[dict]) -> TList[str]:
    """The splits of `dataset` whose row counts differ from prepare_mimic's summary (`summary_of`;
    `splits.NAME.records`), as "NAME: n rows, summary.json says m"; [] when there is none."""
    try:
        expected = {name: int(v["records"]) for name, v in recorded.get("splits", {}).items()
                    if isinstance(v, dict) and v.get("records") is not None}
    except (ValueError, TypeError, KeyError, AttributeError):
        return []  # no summary, or not prepare_mimic's
    return [f"{name}: {len(dataset[name]) if name in dataset else 'missing'} rows, summary.json says {n}"
            for name, n in expected.items() if (len(dataset[name]) if name in dataset else 0) != n]


# --------------------------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------------------------


def _arrow_batch_columns(table) -> dict:
    """Columns of a pyarrow Table batch (`dataset.with_format("arrow")[indices]`) as numpy / lists, zero-copy for
    the int16 signal."""
    import pyarrow as pa

    def col(name):
        c = table.column(name)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    b = table.num_rows
    sig = col("signal")
    sig = sig.storage if hasattr(sig, "storage") else sig
    return {
        "signal": sig.flatten().flatten().to_numpy(zero_copy_only=False).reshape(b, NUM_LEADS, -1),
        "adc_gain": col("adc_gain").flatten().to_numpy(zero_copy_only=False).reshape(b, NUM_LEADS),
        "baseline": col("baseline").flatten().to_numpy(zero_copy_only=False).reshape(b, NUM_LEADS),
        "sampling_rate": col("sampling_rate").to_numpy(zero_copy_only=False),
        "lead_names": col("lead_names").to_pylist(),
        "report": col("report").to_pylist(),
        "study_id": col("study_id").to_numpy(zero_copy_only=False),
    }


class MimicECGCollator:
    """A batch of MIMIC rows -> {"ecg_values" float32 [B, 12, 5000] in standard lead order, "report", "study_id"}.

    Accepts a list of rows in any `datasets` format, or a pyarrow Table (a batch taken from
    `dataset.with_format("arrow")`, the fast path used by `mimic_dataloader`). Signals are decoded with
    `decode_signals` and conditioned by the processor's `DBetaFeatureExtractor` (lead reorder from the stored MIMIC
    order via lead_names, NaN repair, resampling, crop/pad). With `processor` (a DBetaProcessor) the reports are also
    tokenized into "input_ids"/"attention_mask".
    """

    def __init__(self, feature_extractor=None, processor=None, max_length: int = 256, **extractor_kwargs):
        if feature_extractor is None and processor is not None:
            feature_extractor = processor.feature_extractor
        if feature_extractor is None:
            from dbeta.processing_dbeta import DBetaFeatureExtractor

            feature_extractor = DBetaFeatureExtractor(**extractor_kwargs)
        self.feature_extractor = feature_extractor
        self.processor = processor
        self.max_length = max_length

    def __call__(self, batch) -> dict:
        import torch

        if hasattr(batch, "column_names") and hasattr(batch, "num_rows"):  # pyarrow Table
            cols = _arrow_batch_columns(batch)
            signals = list(decode_signals(cols["signal"], cols["adc_gain"], cols["baseline"]))
            rates = [float(r) for r in cols["sampling_rate"]]
            names = [[str(n) for n in lead] for lead in cols["lead_names"]]
            reports = [str(r) for r in cols["report"]]
            studies = [int(s) for s in cols["study_id"]]
        else:
            rows = list(batch)
            signals = [decode_signal(r) for r in rows]
            rates = [float(r["sampling_rate"]) for r in rows]
            names = [[str(n) for n in r["lead_names"]] for r in rows]
            reports = [str(r["report"]) for r in rows]
            studies = [int(r["study_id"]) for r in rows]
        ecg = self.feature_extractor(signals, sampling_rate=rates, lead_names=names, return_tensors="pt")["ecg_values"]
        out = {"ecg_values": ecg, "report": reports, "study_id": torch.tensor(studies, dtype=torch.int64)}
        if self.processor is not None:
            tok = self.processor.tokenize(reports, max_length=self.max_length)
            out["input_ids"] = torch.tensor(tok["input_ids"], dtype=torch.int64)
            out["attention_mask"] = torch.tensor(tok["attention_mask"], dtype=torch.int64)
        return out


def mimic_dataloader(dataset, batch_size: int = 32, shuffle: bool = True, num_workers: int = 0, seed: int = 0,
                     collator: Optional[MimicECGCollator] = None, drop_last: bool = False, **loader_kwargs):
    """A torch DataLoader over a prepared split that fetches whole batches from Arrow (one `take` per batch, int16
    zero-copy) and collates them with `MimicECGCollator`. ~2-4x faster than per-row numpy formatting."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    data = dataset.with_format("arrow")
    base = RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(
        data, sampler=sampler, batch_size=None, num_workers=num_workers, collate_fn=collator or MimicECGCollator(),
        persistent_workers=num_workers > 0, **loader_kwargs,
    )


__all__ = [
    "DROP_REASONS",
    "MIMIC_LEADS",
    "MimicECGCollator",
    "MimicInputError",
    "RecordDropped",
    "build_row",
    "check_record_path",
    "decode_signal",
    "decode_signals",
    "features",
    "iter_machine_measurements",
    "iter_record_list",
    "load_prepared_mimic",
    "mimic_dataloader",
    "mimic_iterable_dataset",
    "read_record",
    "subject_split",
]
