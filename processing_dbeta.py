"""D-BETA processor: the one place where ECG signals are conditioned and report text is cleaned.

Every consumer (training, evaluation, the pipeline, the demo) goes through `DBetaFeatureExtractor`, so a
model always sees signals prepared the same way. The input contract of the released checkpoint:
12 leads in the order I, II, III, aVR, aVL, aVF, V1-V6, millivolts, 500 Hz, 10 s (5000 samples).

This file is remote code: at module level it imports only numpy, torch, transformers and the standard library.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import numbers
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from transformers import BatchFeature, FeatureExtractionMixin, ProcessorMixin

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# MIMIC-IV-ECG's WFDB files store aVF before aVL.
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

NORMALIZATIONS = ("none", "minmax")
CROP_POLICIES = ("start", "center", "random")
NAN_POLICIES = ("interpolate", "zero", "raise")
IMPLAUSIBLE_POLICIES = ("raise", "warn")
MISSING_LEAD_POLICIES = ("zero", "raise")
# Sampling rates an ECG can have: below 50 Hz the QRS is lost (and a sampling interval passed as a rate, 0.002,
# would ask the resampler for gigabytes); above 20 kHz no recorder samples.
SAMPLING_RATE_RANGE = (50.0, 20000.0)
# A lead more than half of whose samples are NaN/inf is mostly invented once repaired (a plausibility problem).
MAX_REPAIRED_SHARE = 0.5
# Below this peak-to-peak in every lead a record is not in millivolts (the same ECG in volts spans ~0.001).
MIN_SPAN_MV = 0.05
# Per-call options of DBetaFeatureExtractor.__call__ (besides the data arguments); anything else is refused.
CALL_OPTIONS = ("normalization", "nan_policy", "crop", "implausible", "generator", "return_tensors", "leads",
                "missing_leads", "return_lead_mask")
#: Named lead subsets for `leads=` (any list of standard lead names works too).
LEAD_SUBSETS = {
    "12-lead": STANDARD_LEADS,
    "limb": ("I", "II", "III", "aVR", "aVL", "aVF"),
    "I+II": ("I", "II"),
    "I": ("I",),
    "II": ("II",),
}

# Leads recorded beside the standard 12 that the processor drops: Frank (X, Y, Z; PTB spells them vx, vy, vz),
# right-sided (V1R-V6R) and posterior (V7-V9).
EXTRA_LEADS = ("X", "Y", "Z", "V1R", "V2R", "V3R", "V4R", "V5R", "V6R", "V7", "V8", "V9")
_EXTRA_SPELLINGS = {**{lead.upper(): lead for lead in EXTRA_LEADS}, "VX": "X", "VY": "Y", "VZ": "Z"}

_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "v": 1e3, "nv": 1e-6}

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]


@functools.lru_cache(maxsize=512)  # called per record in the data path; the spellings repeat
def canonical_lead_name(name: str) -> str:
    """Map the many spellings of a lead name ("Lead aVR (Goldberger)", "AVR", "DII", "v1") to the standard one."""
    raw = str(name).strip()
    key = re.sub(r"\(.*?\)", "", raw)
    key = re.sub(r"^lead\s*", "", key.strip(), flags=re.IGNORECASE).strip().upper().replace(" ", "")
    key = {"DI": "I", "DII": "II", "DIII": "III"}.get(key, key)
    for lead in STANDARD_LEADS:
        if key == lead.upper():
            return lead
    raise ValueError(f"unknown lead name {raw!r}; expected one of {', '.join(STANDARD_LEADS)}")


def standard_lead_name(name) -> Optional[str]:
    """The standard lead `name` spells (canonical_lead_name), or None for any other name (an extra lead the
    processor drops, or an unknown one)."""
    try:
        return canonical_lead_name(name)
    except ValueError:
        return None


def extra_lead_name(name: str) -> Optional[str]:
    """The canonical name of a known non-standard lead ("vx" -> "X", "V4R", "V7"), or None."""
    key = re.sub(r"\(.*?\)", "", str(name).strip())
    key = re.sub(r"^lead\s*", "", key.strip(), flags=re.IGNORECASE).strip().upper().replace(" ", "")
    return _EXTRA_SPELLINGS.get(key)


def is_nested_record(x) -> bool:
    """Whether a list is one ECG written as nested lists [leads][samples] rather than a list of ECGs: its first row
    starts with a number, or with None (a missing sample, read as NaN: JSON's null)."""
    return (isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (list, tuple)) and len(x[0]) > 0
            and (x[0][0] is None or np.isscalar(x[0][0])))


def resolve_leads(leads) -> tuple:
    """A lead subset (a name of LEAD_SUBSETS such as "limb", or a list of lead names in any spelling) -> the
    canonical standard names, in the standard order; None -> all 12."""
    if leads is None:
        return STANDARD_LEADS
    if isinstance(leads, str):
        if leads in LEAD_SUBSETS:
            return tuple(LEAD_SUBSETS[leads])
        raise ValueError(f"leads={leads!r}: give a list of lead names or one of {', '.join(LEAD_SUBSETS)}")
    names = {canonical_lead_name(n) for n in leads}
    if not names:
        raise ValueError("leads= is empty: give at least one of the standard leads")
    return tuple(lead for lead in STANDARD_LEADS if lead in names)


def unit_scale_to_mv(unit: str) -> float:
    """Factor that converts a signal in `unit` to millivolts."""
    key = str(unit).strip().lower().replace(" ", "")
    if key not in _UNIT_TO_MV:
        raise ValueError(f"unknown signal unit {unit!r}; expected one of mV, uV, V")
    return _UNIT_TO_MV[key]


# --------------------------------------------------------------------------------------------------------------
# File readers: they only read. They return the raw signal in millivolts with its rate and lead names.
# --------------------------------------------------------------------------------------------------------------


class ECGReadError(ValueError):
    """A record could not be read; the message names the file."""


@dataclass
class ECGRecord:
    signal: np.ndarray  # [leads, samples], float32, millivolts
    sampling_rate: float
    lead_names: list
    path: str = ""


def _wfdb_base(path: Union[str, Path]) -> str:
    base = str(path)
    if base.endswith((".hea", ".dat", ".mat")):
        base = base[:-4]
    if not Path(base + ".hea").is_file():
        raise ECGReadError(f"{base}.hea: WFDB header not found")
    return base


def _import_wfdb():
    try:
        import wfdb
    except ImportError as err:  # pragma: no cover - wfdb is in requirements.txt
        raise ImportError("reading WFDB records needs the `wfdb` package: pip install wfdb") from err
    return wfdb


# A WFDB header's record line: name[/segments] signals [fs[/counter freq][(base counter)] [samples [time [date]]]]
# (https://physionet.org/physiotools/wag/header-5.htm). train/mimic.py's header parser uses it too.
WFDB_RECORD_LINE = re.compile(
    r"^(?P<name>[^\s/]+)(?:/(?P<nseg>\d+))?\s+(?P<nsig>\d+)"
    r"(?:\s+(?P<fs>[0-9.eE+-]+)(?:/(?P<cf>[0-9.eE+-]+))?(?:\((?P<bc>[0-9.eE+-]+)\))?"
    r"(?:\s+(?P<len>\d+)(?:\s+(?P<time>\S+)(?:\s+(?P<date>\S+))?)?)?)?\s*$"
)


# A WFDB header's signal line: file fmt[xspf][:skew][+offset] [gain[(baseline)][/units] [resolution [zero
# [initial value [checksum [block size [description]]]]]]] (same page). train/mimic.py's header parser uses it too.
WFDB_SIGNAL_LINE = re.compile(
    r"^(?P<file>\S+)\s+(?P<fmt>\d+)(?:x(?P<spf>\d+))?(?::(?P<skew>\d+))?(?:\+(?P<off>\d+))?"
    r"(?:\s+(?P<gain>[0-9.eE+-]+)(?:\((?P<base>-?\d+)\))?(?:/(?P<units>\S+))?"
    r"(?:\s+(?P<res>\d+)(?:\s+(?P<zero>-?\d+)(?:\s+(?P<init>-?\d+)(?:\s+(?P<cks>-?\d+)"
    r"(?:\s+(?P<bs>\d+)(?:\s+(?P<desc>.*?))?)?)?)?)?)?)?\s*$"
)


def decode_wfdb_header(raw: bytes) -> str:
    """A WFDB header's text: UTF-8, else latin-1. wfdb's own reader drops a non-ASCII letter (the 'µ' of µV), so
    units are taken from this text (train/mimic.py's ingest reads headers through it too)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _header_lines(base: str) -> List[str]:
    """The header's non-comment lines, stripped ([] if unreadable), decoded by `decode_wfdb_header`."""
    try:
        raw = Path(base + ".hea").read_bytes()
    except OSError:
        return []
    text = decode_wfdb_header(raw)
    return [t.strip() for t in text.splitlines() if t.strip() and not t.lstrip().startswith("#")]


def _record_line(base: str, lines: Optional[List[str]] = None) -> Optional[re.Match]:
    """The header's record line, parsed (None if unreadable or not of that form)."""
    lines = _header_lines(base) if lines is None else lines
    return WFDB_RECORD_LINE.match(lines[0]) if lines else None


def _signal_lines(lines: List[str], m: Optional[re.Match]) -> list:
    """A single-segment header's signal lines, each parsed by WFDB_SIGNAL_LINE (None for a line not of that form);
    [] for a multi-segment header or an unparsed record line."""
    if m is None or m.group("nseg"):
        return []
    return [WFDB_SIGNAL_LINE.match(t) for t in lines[1:1 + int(m.group("nsig"))]]


def _wfdb_header_length(wfdb, base: str, record_line: Optional[re.Match] = None) -> Optional[int]:
    """The sample count a header states (None if none). Read from the record line when it is a plain
    single-segment one: wfdb.rdheader's pandas parse costs ~14 ms, and rdrecord parses the header again."""
    m = record_line if record_line is not None else _record_line(base)
    if m is not None and not m.group("nseg"):
        return int(m.group("len")) if m.group("len") else None
    return wfdb.rdheader(base).sig_len or None


def _check_header_rate(base: str, rate: float, m: Optional[re.Match]) -> None:
    """wfdb reads a sampling frequency it cannot parse (a negative one, say), or none at all, as its default of
    250 Hz: the record would be resampled as if recorded at another rate. The record line's own field must be there
    and give the same rate."""
    if m is not None and m.group("fs") is None:
        raise ECGReadError(f"{base}.hea: the record line {m.group(0).strip()!r} states no sampling frequency (wfdb "
                           f"would read the record at its default of {rate:g} Hz): add the rate after the signal count")
    if m is not None and m.group("fs") is not None:
        try:
            stated = float(m.group("fs"))
        except ValueError:
            stated = float("nan")
        if not (np.isfinite(stated) and stated > 0 and abs(stated - rate) < 1e-6 * max(stated, 1.0)):
            raise ECGReadError(f"{base}.hea: sampling frequency {m.group('fs')!r} in the record line is not a "
                               f"positive number of Hz (wfdb would read the record at {rate:g} Hz)")


def _signal_label(i: int, s: re.Match) -> str:
    return f"signal {i}" + (f" ({s.group('desc')})" if s.group("desc") else "") + f" in {s.group('file')}"


def _check_calibrated(where: str, signals: list) -> None:
    """A signal line whose ADC gain is 0 or absent means 'uncalibrated' (WFDB header spec); wfdb then reads it at
    200 units per mV, whatever the true gain (a 1000/mV record would read 5x too large)."""
    for i, s in enumerate(signals):
        if s is None:
            continue
        gain = s.group("gain")
        try:
            uncalibrated = gain is None or float(gain) == 0
        except ValueError:
            uncalibrated = False  # not a number: wfdb's own parse decides
        if uncalibrated:
            raise ECGReadError(f"{where}: {_signal_label(i, s)} has ADC gain {gain or '(none)'}, which the WFDB spec "
                               "reads as uncalibrated (wfdb would assume 200 units per mV): write the recording's "
                               "gain in the header")


def _segments(base: str, lines: List[str], m: Optional[re.Match]) -> list:
    """A multi-segment header's segments that hold samples: [(name, signal lines parsed as in `_signal_lines`)];
    the layout segment of a variable layout (length 0, listed first) and null segments ('~') are left out."""
    if m is None or not m.group("nseg"):
        return []
    entries = [t.split() for t in lines[1:1 + int(m.group("nseg"))]]
    if entries and len(entries[0]) > 1 and entries[0][1] == "0":
        entries = entries[1:]  # the layout segment: it lists the signals, holds no samples
    folder, segments = Path(base).parent, []
    for entry in entries:
        if not entry or entry[0].startswith("~"):
            continue
        seg_lines = _header_lines(str(folder / entry[0]))
        segments.append((entry[0], _signal_lines(seg_lines, _record_line("", seg_lines))))
    return segments


def _check_segment_leads(base: str, m: Optional[re.Match], lines: List[str], segments: list) -> None:
    """wfdb reads a fixed-layout multi-segment record (no layout segment) by position and names its leads after
    one segment: segments that list the leads in different orders would be read with leads mixed up."""
    entries = lines[1:2] if m is not None and m.group("nseg") else []
    if not entries or (len(entries[0].split()) > 1 and entries[0].split()[1] == "0"):
        return  # a variable layout: wfdb places each segment's signals by name
    first = None
    for name, signals in segments:
        if not signals or any(s is None for s in signals):
            continue
        leads = [s.group("desc") for s in signals]
        if first is None:
            first = (name, leads)
        elif leads != first[1]:
            raise ECGReadError(f"{base}: a fixed-layout multi-segment record whose segment {name} lists the signals "
                               f"as {leads}, segment {first[0]} as {first[1]}: wfdb would read them by position, "
                               "mixing leads up (rewrite the segments in one order, or give the record a layout "
                               "segment)")


def _header_units(names: list, wfdb_units: list, signals: list, segments: list) -> list:
    """Each signal's units as the header text writes them (wfdb drops the 'µ' of µV, reading microvolts as volts);
    wfdb's where the text does not say or (across segments) disagrees."""
    units = list(wfdb_units or ["mV"] * len(names))
    if signals:
        for i, s in enumerate(signals[:len(units)]):
            if s is not None and s.group("units"):
                units[i] = s.group("units")
        return units
    by_name = {}
    for _, seg_signals in segments:
        for s in seg_signals:
            if s is not None and s.group("units") and s.group("desc"):
                by_name.setdefault(s.group("desc"), set()).add(s.group("units"))
    for i, name in enumerate(names[:len(units)]):
        if len(by_name.get(name, ())) == 1:
            units[i] = next(iter(by_name[name]))
    return units


def _checksums_to_compare(signals: list) -> bool:
    """Whether a whole-record read compares the header's checksums: each signal line parsed, one sample a frame, no
    skew (wfdb shifts skewed signals, padding their ends), and a checksum stated. Checksums that are all 0 are
    placeholders (writers that compute none put 0 there to reach the fields after it); a real record's signals all
    summing to 0 modulo 65536 is not to be expected."""
    return bool(signals) and all(s is not None and int(s.group("spf") or 1) == 1 and not int(s.group("skew") or 0)
                                 for s in signals) and any(s.group("cks") and int(s.group("cks")) for s in signals)


def _check_checksums(base: str, sums: np.ndarray, signals: list) -> None:
    """The 16-bit checksum each signal line states against `sums`, its samples' sums as stored (digital): a signal
    file that is not the header's (two records' files exchanged, same size) is read as the other record otherwise."""
    sums = np.asarray(sums, dtype=np.int64) % 65536
    bad = [f"{_signal_label(i, s)}: header {s.group('cks')}, samples "
           f"{int(c) - 65536 if c > 32767 and int(s.group('cks')) < 0 else int(c)}"
           for i, (s, c) in enumerate(zip(signals, sums))
           if s.group("cks") and (int(s.group("cks")) - int(c)) % 65536]
    if bad:
        raise ECGReadError(f"{base}: the samples do not match the header's checksums ({'; '.join(bad[:4])}"
                           f"{f'; {len(bad) - 4} more' if len(bad) > 4 else ''}): a signal file that is not this "
                           "record's, or a damaged one")


def _digital_sums(d_signal) -> np.ndarray:
    # exact in int64; einsum is ~3x faster than sum(axis=0) on [samples, signals]
    return np.einsum("ij->j", np.asarray(d_signal, dtype=np.int64))


def wfdb_reads_in_ranges(path: Union[str, Path]) -> bool:
    """Whether wfdb reads a sample range of this record right. Format 8 stores first differences, and wfdb starts a
    range read from the initial value, so every range after the first is offset by the sum before it."""
    wfdb = _import_wfdb()
    try:
        header = wfdb.rdheader(_wfdb_base(path), rd_segments=True)
    except Exception:  # noqa: BLE001 - the read itself names what is wrong with the header
        return True
    headers = [header] + [s for s in (getattr(header, "segments", None) or []) if s is not None]
    return not any(str(f) == "8" for h in headers for f in (getattr(h, "fmt", None) or []))


def check_wfdb_checksums(path: Union[str, Path], chunk_samples: int = 150_000) -> None:
    """Compare a WFDB record's header checksums with its samples, read `chunk_samples` at a time (as read_wfdb does
    on a whole-record read). For callers that read a long record in sample ranges, which read_wfdb cannot check
    one by one; raises ECGReadError on a mismatch, does nothing when the header states no checksums."""
    wfdb = _import_wfdb()
    base = _wfdb_base(path)
    lines = _header_lines(base)
    record_line = _record_line(base, lines)
    signals = _signal_lines(lines, record_line)
    if not _checksums_to_compare(signals):
        return
    try:
        length = _wfdb_header_length(wfdb, base, record_line)
        if length and not wfdb_reads_in_ranges(base):
            chunk_samples = length  # format 8: one read (range reads restart its differences)
        sums = np.zeros(len(signals), dtype=np.int64)
        for lo in range(0, length or 0, chunk_samples):
            record = wfdb.rdrecord(base, sampfrom=lo, sampto=min(length, lo + chunk_samples), physical=False)
            sums += _digital_sums(record.d_signal)
    except Exception as err:  # wfdb raises assorted ValueError/IndexError/OSError on damaged files
        _explain_unreadable(wfdb, base)
        raise ECGReadError(f"{base}: unreadable WFDB record ({type(err).__name__}: {err})") from err
    if length:
        _check_checksums(base, sums, signals)


def wfdb_file_bytes(fmt: str, n_values: int) -> Optional[int]:
    """Bytes that `n_values` samples take in WFDB storage format `fmt`; None for a format not listed here."""
    if fmt in ("16", "61"):
        return 2 * n_values
    if fmt == "80":
        return n_values
    if fmt == "212":  # two 12-bit samples in 3 bytes
        return (3 * n_values + 1) // 2
    if fmt in ("310", "311"):  # three 10-bit samples in a 32-bit word
        return 4 * -(-n_values // 3)
    return None


def wfdb_signal_files(header, folder: Union[str, Path], length: int) -> List[dict]:
    """Each signal file a WFDB header names, once: {"path", "signals" (how many it holds), "fmt" (None when its
    signals disagree), "offset", "size" (None if missing or unreadable), "expected" (offset + what `length` samples of its
    signals take; None when the format is not listed in `wfdb_file_bytes`)}. A file whose size differs from what
    the header implies holds another format or signal count, or is damaged: read anyway, it looks like noise."""
    names, fmts = [str(n) for n in header.file_name or []], [str(f) for f in header.fmt or []]
    offsets = {}
    for name, offset in zip(names, header.byte_offset or [None] * len(names)):
        offsets.setdefault(name, offset or 0)
    files = []
    for name in dict.fromkeys(names):
        count = names.count(name)
        file_fmts = {f for n, f in zip(names, fmts) if n == name}
        fmt = file_fmts.pop() if len(file_fmts) == 1 else None
        per_file = wfdb_file_bytes(fmt, length * count) if fmt else None
        path = Path(folder) / name
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        files.append({"path": path, "signals": count, "fmt": fmt, "offset": offsets[name], "size": size,
                      "expected": None if per_file is None else offsets[name] + per_file})
    return files


def _check_signal_files(record, base: str, length: Optional[int]) -> None:
    """The signal files' sizes against the header (`wfdb_signal_files`), and a MATLAB v4 `.mat`'s matrix shape
    against [signals, samples] (a matrix saved transposed has the same size but the samples in another order)."""
    names, fmts = list(getattr(record, "file_name", None) or []), list(getattr(record, "fmt", None) or [])
    frames = getattr(record, "samps_per_frame", None) or []
    if not length or not names or len(fmts) != len(names) or any((s or 1) != 1 for s in frames):
        return  # a multi-segment header's segments have files of their own; wfdb checks those
    for f in wfdb_signal_files(record, Path(base).parent, length):
        path, offset, count = f["path"], f["offset"], f["signals"]
        if f["size"] is None:
            continue  # wfdb read it, so it exists; a race is not this check's business
        if f["expected"] is not None and f["size"] != f["expected"]:
            raise ECGReadError(f"{path}: {f['size']} bytes, but the header implies {f['expected']} ({count} "
                               f"signals x {length} samples in format {f['fmt']}"
                               f"{f' after {offset} header bytes' if offset else ''}): a wrong format "
                               "or signal count in the header, or a damaged file")
        if path.suffix.lower() == ".mat" and offset >= 20:
            head = np.fromfile(path, dtype="<i4", count=5)
            if len(head) == 5 and head[0] in (0, 10, 20, 30, 40, 50) and head[3] == 0:  # little-endian v4, real
                rows, cols = int(head[1]), int(head[2])
                if (rows, cols) != (count, length):
                    raise ECGReadError(f"{path}: the MATLAB matrix is {rows} x {cols}, the header implies {count} "
                                       f"signals x {length} samples (saved as [samples, leads]?)")


def _explain_unreadable(wfdb, base: str) -> None:
    """wfdb failed reading the samples: a short (half-downloaded) or empty signal file fails inside it with a
    reshape error that names neither file nor cause, so the files are checked against the header here, off the
    reading path (rdheader's parse costs ~14 ms a record)."""
    try:
        header = wfdb.rdheader(base)
        length = header.sig_len or None
    except Exception:  # noqa: BLE001 - the header itself does not read: the caller's error says so
        return
    _check_signal_files(header, base, length)


def wfdb_info(path: Union[str, Path]) -> dict:
    """A WFDB record's header facts without reading its samples: {"path", "sampling_rate", "num_samples",
    "lead_names"} (`num_samples` is None when the header does not say)."""
    wfdb = _import_wfdb()
    base = _wfdb_base(path)
    try:
        header = wfdb.rdheader(base)
        names = header.sig_name
        if names is None and getattr(header, "seg_name", None):  # multi-segment: the segments name the leads
            segments = wfdb.rdheader(base, rd_segments=True).segments
            names = next((s.sig_name for s in segments if s is not None and s.sig_name), None)
    except Exception as err:
        raise ECGReadError(f"{base}: unreadable WFDB header ({type(err).__name__}: {err})") from err
    _check_header_rate(base, float(header.fs), _record_line(base))
    return {"path": base, "sampling_rate": float(header.fs), "num_samples": header.sig_len or None,
            "lead_names": list(names or [])}


def read_wfdb(path: Union[str, Path], sampfrom: int = 0, sampto: Optional[int] = None) -> ECGRecord:
    """Read a WFDB record (`path` with or without the .hea suffix) and convert every channel to millivolts.

    `sampfrom`/`sampto` read only samples [sampfrom, sampto) (wfdb seeks in the data file), so a long record can
    be read a piece at a time."""
    wfdb = _import_wfdb()
    base = _wfdb_base(path)
    lines = _header_lines(base)
    record_line = _record_line(base, lines)
    signals = _signal_lines(lines, record_line)
    partial = sampfrom > 0 or sampto is not None
    checksums = not partial and _checksums_to_compare(signals)
    try:
        header_length = _wfdb_header_length(wfdb, base, record_line)
        if partial:
            record = wfdb.rdrecord(base, sampfrom=sampfrom, sampto=sampto)
        else:  # the digital samples first when there are checksums to compare (rdrecord's physical read is dac())
            record = wfdb.rdrecord(base, physical=not checksums)
    except Exception as err:  # wfdb raises assorted ValueError/IndexError/OSError on damaged files
        _explain_unreadable(wfdb, base)
        raise ECGReadError(f"{base}: unreadable WFDB record ({type(err).__name__}: {err})") from err
    _check_header_rate(base, float(record.fs), record_line)
    segments = _segments(base, lines, record_line)
    _check_calibrated(f"{base}.hea", signals)
    for name, seg_signals in segments:
        _check_calibrated(f"{Path(base).parent / name}.hea", seg_signals)
    _check_segment_leads(base, record_line, lines, segments)
    digital = getattr(record, "d_signal", None) if checksums else None
    signal = record.p_signal if digital is None else digital
    if signal is None or signal.ndim != 2:
        raise ECGReadError(f"{base}: WFDB record has no physical signal")
    _check_signal_files(record, base, header_length)
    expected = (sampto if sampto is not None else header_length or 0) - sampfrom
    if header_length and signal.shape[0] != expected:
        raise ECGReadError(
            f"{base}: header says {header_length} samples but samples {sampfrom}-{sampfrom + expected} read "
            f"{signal.shape[0]} (truncated?)"
        )
    if digital is not None:
        _check_checksums(base, _digital_sums(record.d_signal), signals)
        signal = record.dac(expanded=False, return_res=64)
    units = _header_units(list(record.sig_name), record.units, signals, segments)
    try:
        scales = np.array([unit_scale_to_mv(u) for u in units], dtype=np.float64)
    except ValueError as err:
        raise ECGReadError(f"{base}: {err}") from err
    mv = (signal * scales[None, :]).T.astype(np.float32)
    return ECGRecord(mv, float(record.fs), list(record.sig_name), base)


def read_dicom(path: Union[str, Path], group: str = "RHYTHM") -> ECGRecord:
    """Read a DICOM 12-lead ECG waveform (the multiplex group named `group`, else the first) in millivolts."""
    try:
        import pydicom
    except ImportError as err:
        raise ImportError("reading DICOM ECGs needs the `pydicom` package: pip install pydicom") from err
    try:
        ds = pydicom.dcmread(str(path))
        groups = list(ds.WaveformSequence)
    except Exception as err:
        raise ECGReadError(f"{path}: not a DICOM waveform file ({type(err).__name__}: {err})") from err
    if not groups:
        raise ECGReadError(f"{path}: the DICOM file holds no waveform")
    labels = [str(getattr(g, "MultiplexGroupLabel", "")).upper() for g in groups]
    index = labels.index(group.upper()) if group.upper() in labels else 0
    wave = groups[index]
    names, scales = [], []
    for i, channel in enumerate(getattr(wave, "ChannelDefinitionSequence", None) or []):
        source = getattr(channel, "ChannelSourceSequence", None)
        meaning = getattr(source[0], "CodeMeaning", None) if source else None
        if meaning is None:
            raise ECGReadError(f"{path}: waveform channel {i} has no ChannelSourceSequence code meaning, so its "
                               "lead is unknown")
        names.append(str(meaning))
        unit_seq = getattr(channel, "ChannelSensitivityUnitsSequence", None)
        unit = str(getattr(unit_seq[0], "CodeValue", "uV")) if unit_seq else "uV"
        try:
            scales.append(unit_scale_to_mv(unit))
        except ValueError as err:
            raise ECGReadError(f"{path}: waveform channel {i} ({meaning}) is in {unit!r}, not a voltage: "
                               "not an ECG channel") from err
        sensitivity = getattr(channel, "ChannelSensitivity", None)
        if sensitivity is not None and float(sensitivity) == 0:
            raise ECGReadError(f"{path}: waveform channel {i} ({meaning}) has ChannelSensitivity 0, so every sample "
                               "reads as 0")
    if not names:
        raise ECGReadError(f"{path}: the DICOM waveform has no channel definitions")
    try:
        data = ds.waveform_array(index).astype(np.float64)  # [samples, channels], sensitivity already applied
        rate = float(wave.SamplingFrequency)
    except Exception as err:
        raise ECGReadError(f"{path}: unreadable DICOM waveform data ({type(err).__name__}: {err})") from err
    mv = (data * np.asarray(scales)[None, :]).T.astype(np.float32)
    return ECGRecord(mv, rate, names, str(path))


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: the 'DICM' marker after the 128-byte preamble, whatever the file is called."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_ecg_file(path: Union[str, Path]) -> ECGRecord:
    """Read a DICOM file (recognised by its content, or a .dcm suffix) or a WFDB record (.hea/.dat or its name)."""
    p = Path(path)
    if p.suffix.lower() == ".dcm" or (p.is_file() and _is_dicom(p)):
        return read_dicom(p)
    if p.suffix.lower() in (".npy", ".npz", ".csv", ".txt", ".json", ".xml", ".edf"):
        raise ECGReadError(f"{p}: a {p.suffix} file is not read as an ECG file (DICOM or WFDB only) and says nothing "
                           "of its sampling rate: load the array yourself and pass it with sampling_rate=")
    return read_wfdb(p)


# --------------------------------------------------------------------------------------------------------------
# Signal conditioning
# --------------------------------------------------------------------------------------------------------------


def _repair_non_finite(x: np.ndarray, policy: str, where: str, names: Sequence[str]) -> np.ndarray:
    """Linear interpolation across NaN/inf gaps in each lead (rows named `names`); the edges take the nearest
    finite value."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    if policy == "raise":
        raise ValueError(f"{where}: {int(bad.sum())} NaN/inf samples (nan_policy='raise')")
    x = x.copy()
    positions = np.arange(x.shape[1])
    for lead in np.nonzero(bad.any(axis=1))[0]:
        good = ~bad[lead]
        if not good.any():
            if policy == "zero":
                x[lead] = 0.0
                continue
            raise ValueError(f"{where}: lead {names[lead]} has no finite sample (use nan_policy='zero' to zero it)")
        if policy == "zero":
            x[lead, bad[lead]] = 0.0
        else:
            x[lead, bad[lead]] = np.interp(positions[bad[lead]], positions[good], x[lead, good])
    return x


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as numpy in their own dtype (bfloat16, which numpy lacks, as float32), so the signal
    checks see booleans, complex numbers and float64 beyond float32's range rather than their float32 casts."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _as_float32(x, where: str) -> np.ndarray:
    """The signal as float32; a finite value float32 cannot hold (|x| > 3.4e38) is an error, not an inf to repair."""
    raw = np.asarray(x)
    if raw.dtype == object and all(v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool))
                                   for v in raw.ravel()):  # nested lists with missing samples (JSON null)
        raw = np.array([np.nan if v is None else v for v in raw.ravel()], dtype=np.float64).reshape(raw.shape)
    if raw.dtype.kind not in "fiu":  # booleans, complex numbers, strings or objects are no voltages
        raise ValueError(f"{where}: ECG samples must be real numbers, got an array of {raw.dtype}")
    if raw.dtype.kind != "f" or raw.dtype.itemsize <= 4:
        return np.asarray(raw, dtype=np.float32)
    with np.errstate(over="ignore"):
        out = raw.astype(np.float32)
    overflow = np.isinf(out) & np.isfinite(raw)
    if overflow.any():
        raise ValueError(f"{where}: {int(overflow.sum())} sample(s) beyond float32's range (largest "
                         f"{float(np.abs(raw[overflow]).max()):.3g}): not an ECG in any unit")
    return out


def _source_span(start: int, stop: int, n: int, source_n: int) -> tuple:
    """Samples [start, stop) of a record resampled to `n` samples, as (lo, hi) in its `source_n` own samples."""
    ratio = source_n / n
    return int(np.floor(start * ratio)), min(source_n, int(np.ceil(stop * ratio)))


def _resample(x: np.ndarray, source_rate: float, target_rate: float) -> np.ndarray:
    if abs(source_rate - target_rate) < 1e-6:
        return x
    try:
        from scipy.signal import resample_poly
    except ImportError as err:
        raise ImportError("resampling needs scipy: pip install scipy") from err
    ratio = Fraction(target_rate / source_rate).limit_denominator(1000)
    # resample_poly pads with zeros: a lead's offset (or its wander at the ends) became a step at each edge that
    # rang through the record and changed the scores of an offset that, at the model's rate, changes nothing
    offset = x.mean(axis=1, keepdims=True)
    out = resample_poly(x - offset, ratio.numerator, ratio.denominator, axis=1, padtype="line")
    out += offset  # in place: a long record's copies are what the memory goes to
    return out.astype(np.float32, copy=False)


def unknown_keywords_error(where: str, unknown, known) -> TypeError:
    """A TypeError naming each unknown keyword with the closest known one (a likely misspelling) and the known."""
    known = sorted(k for k in set(known) if not k.startswith("_"))  # transformers' internal markers aside
    named = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, known, n=1)
        named.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return TypeError(f"{where}: unexpected keyword argument(s) {', '.join(named)}; known: {', '.join(known)}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _as_rate(value, where: str) -> float:
    """One sampling rate as a positive float; a string, a bool or an array is a clear error."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        shown = f"{value!r}" if isinstance(value, (str, bytes)) else f"a {type(value).__name__}"
        raise ValueError(f"{where}: sampling_rate must be a number of Hz (e.g. 500), got {shown}")
    rate = float(value)
    if not np.isfinite(rate) or rate <= 0:
        raise ValueError(f"{where}: sampling_rate must be a positive number of Hz, got {value}")
    low, high = SAMPLING_RATE_RANGE
    if not low <= rate <= high:
        raise ValueError(f"{where}: sampling_rate {value:g} Hz is outside the {low:g}-{high:g} Hz an ECG is "
                         "recorded at (a sampling interval in seconds given as the rate?)")
    return rate


# `from_pretrained` keywords about where and how to load (transformers' hub options and its internal markers).
LOADING_KEYWORDS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies", "subfolder",
                    "trust_remote_code", "code_revision", "user_agent", "repo_type", "return_unused_kwargs",
                    "_from_auto", "_from_pipeline", "_commit_hash")
# Settings every transformers tokenizer takes besides its class's own constructor arguments.
_TOKENIZER_BASE_SETTINGS = ("model_max_length", "padding_side", "truncation_side", "model_input_names",
                            "clean_up_tokenization_spaces", "split_special_tokens", "use_fast",
                            "additional_special_tokens", "extra_special_tokens")


def feature_extractor_settings() -> tuple:
    """The settings `DBetaFeatureExtractor` is built from (its constructor's named arguments)."""
    return tuple(name for name, p in inspect.signature(DBetaFeatureExtractor.__init__).parameters.items()
                 if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD)


def _saved_bookkeeping() -> tuple:
    """Keys transformers itself writes beside the settings in a saved feature-extractor config."""
    return ("processor_class", "auto_map", "feature_extractor_type",
            *FeatureExtractionMixin().to_dict())  # plus any a later transformers adds to every saved config


def tokenizer_settings(tokenizer) -> set:
    """Keywords `tokenizer`'s class takes: its constructors' named arguments, the special tokens and the base
    settings of every transformers tokenizer."""
    names = set(_TOKENIZER_BASE_SETTINGS) | set(getattr(tokenizer, "SPECIAL_TOKENS_ATTRIBUTES", ()))
    for klass in type(tokenizer).__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and callable(init):
            try:
                parameters = inspect.signature(init).parameters.values()
            except (TypeError, ValueError):
                continue
            names |= {p.name for p in parameters if p.name != "self" and p.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return names


class UnknownSettingError(ValueError):
    """A saved feature-extractor setting this version does not know."""


def _refuse_unknown_settings(settings: dict, where: str) -> None:
    """A saved setting this version does not know may change how signals are conditioned; ignoring it would give the
    model other inputs than it was exported with."""
    unknown = set(settings) - set(feature_extractor_settings()) - set(_saved_bookkeeping())
    if unknown:
        raise UnknownSettingError(
            f"{where}: the processor config holds feature-extractor setting(s) this version of processing_dbeta.py "
            f"does not know: {', '.join(sorted(unknown))} (known: {', '.join(feature_extractor_settings())}). "
            "Written by a newer version of D-BETA (load it with the processing_dbeta.py saved beside it, "
            "trust_remote_code=True, or update this one) or edited.")


def _refuse_misspelt_settings(kwargs: dict) -> None:
    """transformers drops a loading keyword the feature extractor does not know, as it may be meant for the tokenizer
    or the model (AutoProcessor and pipeline() hand every keyword to every part), so `nan_polcy="zero"` would load
    with the default policy unsaid. A keyword that is not a setting but nearly spells one is refused; any other
    is left to the part it belongs to."""
    settings = feature_extractor_settings()
    misspelt = [key for key in kwargs
                if key not in settings and difflib.get_close_matches(key, settings, n=1, cutoff=0.8)]
    if misspelt:
        raise unknown_keywords_error("DBetaFeatureExtractor.from_pretrained", misspelt, settings)


# What the model was trained on: changed at load, every record would reach it in another form without an error
# (`sampling_rate` is the rate records are resampled *to*; a record's own rate is given per call).
_MODEL_INPUT_SETTINGS = ("sampling_rate", "num_samples", "lead_names", "keep_samples")


def _refuse_changed_model_input(saved: dict, kwargs: dict) -> None:
    changed = {k: kwargs[k] for k in _MODEL_INPUT_SETTINGS if k in kwargs and k in saved
               and _plain(kwargs[k]) != _plain(saved[k])}
    if changed:
        shown = ", ".join(f"{k}={v!r} (saved: {saved[k]!r})" for k, v in changed.items())
        raise ValueError(
            f"DBetaFeatureExtractor.from_pretrained: {shown}: these settings are the input the model was trained on "
            "and cannot change at load. Give each record's own rate and lead names per call, "
            "processor(ecg, sampling_rate=250, lead_names=[...]); the processor resamples and reorders to the model's.")


def _plain(value):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class DBetaFeatureExtractor(FeatureExtractionMixin):
    r"""Turns raw 12-lead ECGs into the model's `ecg_values` [batch, 12, 5000].

    Steps, in order, for each record:
      1. shape check: [leads, samples] (a [samples, 12] array is rejected with a hint to transpose);
      2. lead order: with `lead_names` the leads are reordered to I, II, III, aVR, aVL, aVF, V1-V6; known extra
         leads (Frank X/Y/Z or vx/vy/vz, right-sided V1R-V6R, posterior V7-V9) are dropped; an unknown or a
         duplicated name is an error; without `lead_names` the array must already be in that order.
         Lead subsets: a standard lead the record lacks (`missing_leads="zero"`, default) or that `leads=` leaves
         out (e.g. `leads=["I", "II"]` or "limb") is a row of zeros, which is how pretraining masks leads
         (train.collator's `lead_mask_prob` zeroes whole leads after conditioning); `missing_leads="raise"`
         refuses a record that lacks one. A record with none of the requested standard leads is an error.
         `return_lead_mask=True` adds `lead_mask` [batch, 12] (bool: the leads actually used);
      3. non-finite repair (`nan_policy`): "interpolate" (default) bridges NaN/inf gaps linearly per lead and
         rejects a lead with no finite sample; "zero" zeroes them; "raise" refuses any. A value too large for
         float32 (|x| > 3.4e38) is an error, never an inf to repair;
      4. resampling to `sampling_rate` (polyphase, scipy.signal.resample_poly, about each lead's mean with its
         ends continued as a line); a record's rate must lie in SAMPLING_RATE_RANGE (50 Hz to 20 kHz);
      5. length: shorter than `min_duration` seconds is an error;
      6. plausibility (`implausible`: "raise", default, or "warn"): a lead of which more than half the samples
         were NaN/inf (MAX_REPAIRED_SHARE; a lead with none finite that nan_policy="zero" zeroed is a missing
         lead, not this) is mostly invented by the repair; a flat record (every lead constant within
         1 uV: an all-zero export, a DICOM channel sensitivity of 0; under "minmax", which takes any unit, within
         1e-6) is not an ECG; with `normalization="none"`
         the amplitudes must be millivolts: more than 1% of a lead's samples beyond `max_amplitude_mv` (50 mV,
         ten times the largest QRS), or any sample beyond 20 times it, means another unit (int16 ADC counts,
         microvolts) or a corrupt record, and so does every lead spanning less than MIN_SPAN_MV (0.05 mV:
         volts). `max_amplitude_mv=None` turns both amplitude bounds off;
      7. length fit: with `keep_samples` (the length a classifier was fine-tuned on, e.g. CPSC2018's protocol of
         2500) a record is first cut to that many samples; longer than `num_samples` is cropped by `crop`
         ("start": the first 10 s as in the benchmark protocol; "center"; "random": for training); a lead
         constant over what is kept is treated as absent (a zero row, unused); shorter is zero-padded at the end;
      8. amplitude: `normalization="none"` keeps millivolts (what the authors' checkpoint expects); "minmax"
         scales each whole record to [0, 1] over all the leads it uses together (the MERL protocol); unused
         leads stay zero.

    `normalization`, `nan_policy`, `crop`, `implausible`, `leads`, `missing_leads` and `return_lead_mask` can be
    given per call; any other keyword is refused.
    """

    model_input_names = ["ecg_values"]

    def __init__(
        self,
        sampling_rate: int = 500,
        num_samples: int = 5000,
        lead_names: Sequence[str] = STANDARD_LEADS,
        normalization: str = "none",
        crop: str = "start",
        nan_policy: str = "interpolate",
        min_duration: float = 2.0,
        max_amplitude_mv: Optional[float] = 50.0,
        implausible: str = "raise",
        missing_leads: str = "zero",
        keep_samples: Optional[int] = None,
        **kwargs,
    ):
        unknown = set(kwargs) - set(_saved_bookkeeping())
        if unknown:
            raise unknown_keywords_error("DBetaFeatureExtractor", unknown, feature_extractor_settings())
        _check_choice("missing_leads", missing_leads, MISSING_LEAD_POLICIES)
        _check_choice("normalization", normalization, NORMALIZATIONS)
        _check_choice("crop", crop, CROP_POLICIES)
        _check_choice("nan_policy", nan_policy, NAN_POLICIES)
        _check_choice("implausible", implausible, IMPLAUSIBLE_POLICIES)
        if max_amplitude_mv is not None and not (np.isfinite(max_amplitude_mv) and max_amplitude_mv > 0):
            raise ValueError(f"max_amplitude_mv must be a positive number of mV or None, got {max_amplitude_mv!r}")
        self.sampling_rate = int(sampling_rate)
        self.num_samples = int(num_samples)
        self.lead_names = list(lead_names)
        self.normalization = normalization
        self.crop = crop
        self.nan_policy = nan_policy
        self.min_duration = float(min_duration)
        self.max_amplitude_mv = None if max_amplitude_mv is None else float(max_amplitude_mv)
        self.implausible = implausible
        self.missing_leads = missing_leads
        if keep_samples is not None and (isinstance(keep_samples, bool) or not isinstance(keep_samples, int)
                                         or not 1 <= keep_samples <= self.num_samples):
            raise ValueError(f"keep_samples must be None or a whole number from 1 to num_samples "
                             f"({self.num_samples}), got {keep_samples!r}")
        self.keep_samples = keep_samples
        super().__init__(**kwargs)

    @classmethod
    def get_feature_extractor_dict(cls, pretrained_model_name_or_path, **kwargs):
        """The saved settings, refused (naming the folder) when they hold one this version does not know: a setting
        written by a newer version may change how signals are conditioned, and ignoring it would give the model
        other inputs than it was exported with."""
        settings, rest = super().get_feature_extractor_dict(pretrained_model_name_or_path, **kwargs)
        _refuse_unknown_settings(settings, str(pretrained_model_name_or_path))
        return settings, rest

    @classmethod
    def from_dict(cls, feature_extractor_dict, **kwargs):
        # transformers 5.25's AutoFeatureExtractor reads the file itself and comes straight here
        _refuse_unknown_settings(feature_extractor_dict, "a saved processor config")
        _refuse_misspelt_settings(kwargs)
        _refuse_changed_model_input(feature_extractor_dict, kwargs)
        # transformers applies a keyword only when the saved dict has its key: a setting an older export did not
        # save (`keep_samples`, say) or a default left out would be dropped without a word
        feature_extractor_dict = dict(feature_extractor_dict)
        for key in [k for k in kwargs if k in feature_extractor_settings()]:
            feature_extractor_dict[key] = kwargs.pop(key)
        return super().from_dict(feature_extractor_dict, **kwargs)

    @property
    def num_leads(self) -> int:
        return len(self.lead_names)

    def __call__(
        self,
        ecg,
        sampling_rate: Union[float, Sequence[float], None] = None,
        lead_names: Optional[Sequence] = None,
        return_tensors: Optional[str] = "pt",
        crop: Optional[str] = None,
        generator: Optional[np.random.Generator] = None,
        normalization: Optional[str] = None,
        nan_policy: Optional[str] = None,
        implausible: Optional[str] = None,
        leads=None,
        missing_leads: Optional[str] = None,
        return_lead_mask: bool = False,
        **kwargs,
    ) -> BatchFeature:
        if kwargs:
            raise unknown_keywords_error("DBetaFeatureExtractor.__call__", kwargs,
                                         ("ecg", "sampling_rate", "lead_names") + CALL_OPTIONS)
        options = dict(crop=crop, normalization=normalization, nan_policy=nan_policy, implausible=implausible,
                       leads=leads, missing_leads=missing_leads)
        self._check_options(options)
        records = self._as_record_list(ecg)
        rates = self._rates_per_record(sampling_rate, len(records))
        names_per_record = self._lead_names_per_record(lead_names, len(records))
        conditioned = [
            self.condition(x, r, names, generator=generator, where=f"ecg[{i}]", return_lead_mask=True, **options)
            for i, (x, r, names) in enumerate(zip(records, rates, names_per_record))
        ]
        data = {"ecg_values": np.stack([x for x, _ in conditioned])}
        if return_lead_mask:
            data["lead_mask"] = np.stack([m for _, m in conditioned])
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def _check_options(options: dict) -> None:
        for name, choices in (("crop", CROP_POLICIES), ("normalization", NORMALIZATIONS),
                              ("nan_policy", NAN_POLICIES), ("implausible", IMPLAUSIBLE_POLICIES),
                              ("missing_leads", MISSING_LEAD_POLICIES)):
            if options.get(name) is not None:
                _check_choice(name, options[name], choices)

    def check_model_input(self, ecg_config, model_name: str = "the model") -> None:
        """Refuses conditioning other than the input `ecg_config` records (an export records its processor's rate,
        lead order and length): a processor whose `sampling_rate` was set to the records' rate, or whose lead
        order was edited, would feed the model another signal and every score would still look plausible."""
        wanted = {"sampling_rate": getattr(ecg_config, "sampling_rate", None),
                  "lead_names": getattr(ecg_config, "lead_names", None),
                  "num_samples": getattr(ecg_config, "num_samples", None)}
        have = {"sampling_rate": float(self.sampling_rate), "lead_names": [str(n) for n in self.lead_names],
                "num_samples": int(self.num_samples), "keep_samples": self.keep_samples}
        changed = [f"{key} {have[key]!r} where the model's is {value!r}" for key, value in wanted.items()
                   if value is not None and (list(value) if key == "lead_names" else value) != have[key]]
        recorded = wanted["sampling_rate"] is not None  # exports that record the rate record the cut too (None: none)
        if recorded and getattr(ecg_config, "keep_samples", None) != self.keep_samples:
            changed.append(f"keep_samples {self.keep_samples!r} where the model's is "
                           f"{getattr(ecg_config, 'keep_samples', None)!r} (the cut it was fine-tuned on)")
        if changed:
            raise ValueError(
                f"{model_name}: its processor conditions records differently from the input the model was trained "
                f"on: {'; '.join(changed)}. These settings are the model's, not the records': give each record's "
                "own rate and lead names per call (processor(ecg, sampling_rate=250, lead_names=[...]), "
                "pipe(ecg, sampling_rate=...)), and load the processor saved with the model.")

    def condition(
        self,
        x: np.ndarray,
        sampling_rate: float,
        lead_names: Optional[Sequence[str]] = None,
        crop: Optional[str] = None,
        generator: Optional[np.random.Generator] = None,
        where: str = "ecg",
        normalization: Optional[str] = None,
        nan_policy: Optional[str] = None,
        implausible: Optional[str] = None,
        leads=None,
        missing_leads: Optional[str] = None,
        return_lead_mask: bool = False,
    ):
        """Condition one record [leads, samples] -> [12, num_samples]; see the class docstring for the steps. The
        options default to the extractor's settings. With `return_lead_mask=True`, returns (values, lead_mask)
        where lead_mask [12] (bool) marks the leads used (the others are zero)."""
        options = dict(crop=crop, normalization=normalization, nan_policy=nan_policy, implausible=implausible,
                       missing_leads=missing_leads)
        self._check_options(options)
        normalization = normalization or self.normalization
        x = _as_float32(x, where)
        if x.ndim != 2:
            raise ValueError(f"{where}: expected [leads, samples], got shape {tuple(x.shape)}")
        sampling_rate = _as_rate(sampling_rate, where)
        wanted = resolve_leads(leads) if leads is not None else None
        x, used = self._reorder_leads(x, lead_names, where, missing_leads or self.missing_leads, wanted)
        if wanted is not None:
            used &= np.array([lead in wanted for lead in self.lead_names])
            if not used.any():
                raise ValueError(f"{where}: the record has none of the requested leads {', '.join(wanted)}")
        if x.shape[1] == 0:
            raise ValueError(f"{where}: the signal is empty")
        if not used.all():  # conditioning sees only the leads in use; the others are zero rows at the end
            x = x[used]
        names = [lead for lead, u in zip(self.lead_names, used) if u]
        non_finite = ~np.isfinite(x)
        x = _repair_non_finite(x, nan_policy or self.nan_policy, where, names)
        source_samples = x.shape[1]
        x = _resample(x, sampling_rate, self.sampling_rate)
        min_len = int(round(self.min_duration * self.sampling_rate))
        if x.shape[1] < min_len:
            raise ValueError(
                f"{where}: {x.shape[1] / self.sampling_rate:.2f} s of signal is shorter than the minimum "
                f"{self.min_duration:g} s (min_duration)"
            )
        crop = crop or self.crop
        if self.keep_samples is not None and crop != "start":
            raise ValueError(f"{where}: crop={crop!r} with keep_samples={self.keep_samples}: the "
                             "record is cut to its first keep_samples samples, so there is nothing to crop")
        start, stop = self._read_span(x.shape[1], crop, generator)
        read = x[:, start:stop]
        # the checks judge the samples the model reads, not the rest of a longer record (a 60 s record whose first
        # 10 s were zeros was scored as an all-zero input; a spike at 50 s refused the whole record). A random crop
        # reads any part over an epoch: the whole record is judged, as a record scan before training judges it.
        whole = crop == "random"
        lo, hi = (0, source_samples) if whole else _source_span(start, stop, x.shape[1], source_samples)
        judged = x if whole else read
        seen = where if judged.shape[1] == x.shape[1] else (
            f"{where} (the {(stop - start) / self.sampling_rate:g} s the model reads, from "
            f"{start / self.sampling_rate:g} s)")
        gaps = non_finite[:, lo:hi]
        repaired = gaps.mean(axis=1)
        repaired[gaps.all(axis=1)] = 0.0  # no finite sample where read: a missing lead there, not an invented one
        self._check_plausible(judged, normalization, implausible or self.implausible, seen, names, repaired)
        x = read
        flat = x.max(axis=1) == x.min(axis=1)  # over the part the model sees
        if flat.any() and not flat.all():  # a constant (lead-off) lead carries nothing: a zero row, marked unused
            if (missing_leads or self.missing_leads) == "raise":
                raise ValueError(f"{where}: lead(s) {', '.join(n for n, f in zip(names, flat) if f)} flat (constant) "
                                 "over the samples the model reads: missing in all but name (missing_leads='zero' "
                                 "scores them as absent)")
            used = used.copy()
            used[np.flatnonzero(used)[flat]] = False
            x = x[~flat]
        if x.shape[1] < self.num_samples:
            x = np.pad(x, ((0, 0), (0, self.num_samples - x.shape[1])))
        if normalization == "minmax":
            lo, hi = float(x.min()), float(x.max())
            x = (x - lo) / (hi - lo + 1e-8)
        if used.all():
            out = np.ascontiguousarray(x, dtype=np.float32)
        else:
            out = np.zeros((self.num_leads, x.shape[1]), dtype=np.float32)
            out[used] = x
        return (out, used) if return_lead_mask else out

    def _check_plausible(self, x: np.ndarray, normalization: str, policy: str, where: str,
                         names: Sequence[str], repaired: np.ndarray) -> None:
        problem = None
        span = x.max(axis=1) - x.min(axis=1)
        mostly = np.nonzero(repaired > MAX_REPAIRED_SHARE)[0]
        if len(mostly):
            lead = int(mostly[np.argmax(repaired[mostly])])
            name = names[lead] if lead < len(names) else str(lead)
            problem = (f"lead {name} has {100 * repaired[lead]:.1f}% NaN/inf samples (more than "
                       f"{100 * MAX_REPAIRED_SHARE:g}%): repaired, most of it would be invented. Leave the lead out "
                       "(leads=...) or set implausible='warn'")
        # 1 uV in millivolts; minmax takes any unit (an ECG in volts spans ~1e-3), so there only a near-constant one
        elif (span <= (1e-3 if normalization == "none" else 1e-6)).all():
            if span.max() == 0:
                problem = (f"flat signal: every lead is constant (value {float(x.flat[0]):.4g}), so this is no ECG "
                           "(an all-zero export, or a zero channel sensitivity?)")
            else:  # an ECG in volts spans about 0.001 (1 mV): not constant, and the message should say which unit
                problem = (f"flat signal: no lead spans more than {float(span.max()):.3g} (1 uV if millivolts), so "
                           "this is no ECG in millivolts: volts passed as mV (convert to mV, or use "
                           "normalization='minmax'), or an all-zero export with some jitter?")
        elif normalization == "none" and self.max_amplitude_mv and span.max() < MIN_SPAN_MV:
            lead = int(np.argmax(span))
            name = names[lead] if lead < len(names) else str(lead)
            problem = (f"implausible amplitude for millivolts: the largest lead, {name}, spans only "
                       f"{float(span[lead]):.3g} mV (a QRS complex spans about 1 mV; volts passed as mV?). Convert "
                       "the signal to mV, or set max_amplitude_mv=None / implausible='warn'")
        elif normalization == "none" and self.max_amplitude_mv:
            bound = self.max_amplitude_mv
            magnitude = np.abs(x)
            beyond = (magnitude > bound).mean(axis=1)
            lead = int(np.argmax(beyond))
            if beyond[lead] > 0.01 or magnitude.max() > 20 * bound:
                if beyond[lead] <= 0.01:
                    lead = int(np.argmax(magnitude.max(axis=1)))
                name = names[lead] if lead < len(names) else str(lead)
                problem = (
                    f"implausible amplitude for millivolts: lead {name} has {100 * beyond[lead]:.1f}% of its samples "
                    f"beyond {bound:g} mV and a peak of {float(magnitude[lead].max()):.4g} mV (an ECG stays within "
                    f"a few mV; ADC counts or microvolts passed as mV?). Convert the signal to mV, or set "
                    "max_amplitude_mv / implausible='warn'"
                )
        if problem is None:
            return
        if policy == "warn":
            warnings.warn(f"{where}: {problem}", UserWarning, stacklevel=4)
        else:
            raise ValueError(f"{where}: {problem}")

    def _as_record_list(self, ecg) -> list:
        if ecg is None:
            raise ValueError("no ECG given")
        if isinstance(ecg, torch.Tensor):
            ecg = tensor_to_numpy(ecg)
        if isinstance(ecg, np.ndarray):
            if ecg.size == 0:
                raise ValueError("the ECG array is empty")
            if ecg.ndim == 2:
                return [ecg]
            if ecg.ndim == 3:
                return list(ecg)
            raise ValueError(f"expected [leads, samples] or [batch, leads, samples], got shape {ecg.shape}")
        if isinstance(ecg, (list, tuple)):
            if len(ecg) == 0:
                raise ValueError("the list of ECGs is empty")
            if np.isscalar(ecg[0]):
                raise ValueError("expected [leads, samples] arrays, got a flat list of numbers")
            if is_nested_record(ecg):
                return [np.asarray(ecg)]  # one record as nested lists
            return [tensor_to_numpy(e) if isinstance(e, torch.Tensor) else np.asarray(e) for e in ecg]
        raise TypeError(f"unsupported ECG input of type {type(ecg).__name__}{table_advice(ecg)}")

    @staticmethod
    def _rates_per_record(sampling_rate, n: int) -> list:
        if sampling_rate is None:
            raise ValueError(
                "sampling_rate is required: pass the rate (Hz) the ECG was recorded at, e.g. sampling_rate=500"
            )
        if isinstance(sampling_rate, torch.Tensor):
            sampling_rate = sampling_rate.detach().cpu().numpy()
        if isinstance(sampling_rate, np.ndarray):
            if sampling_rate.ndim > 1:
                raise ValueError(f"sampling_rate must be one number (Hz) or one per ECG, got an array of shape "
                                 f"{sampling_rate.shape}")
            sampling_rate = sampling_rate.tolist()
        if isinstance(sampling_rate, (list, tuple)):
            if len(sampling_rate) != n:
                raise ValueError(f"sampling_rate must be one number (Hz) or one per ECG: got {len(sampling_rate)} "
                                 f"values for {n} ECG(s)")
            return [_as_rate(r, f"ecg[{i}]") for i, r in enumerate(sampling_rate)]
        return [_as_rate(sampling_rate, "ecg")] * n

    def _lead_names_per_record(self, lead_names, n: int) -> list:
        if lead_names is None:
            return [None] * n
        if isinstance(lead_names, str):
            raise ValueError(f"lead_names must be a list with one name per lead (row), got the string {lead_names!r}")
        # per record when any entry is a list (the first record may have none: None)
        if any(isinstance(names, (list, tuple, np.ndarray)) for names in lead_names):
            if len(lead_names) != n:
                raise ValueError(f"got {len(lead_names)} lead-name lists for {n} ECGs")
            return list(lead_names)
        return [lead_names] * n

    def check_layout(self, shape, lead_names, where: str) -> None:
        """Refuse a [leads, samples] shape whose rows are not the leads: 12 without `lead_names`, one per name
        with them (a [samples, leads] array gets a hint to transpose)."""
        rows, samples = int(shape[0]), int(shape[1])
        if lead_names is None:
            if rows != self.num_leads:
                hint = " (it looks like [samples, leads]: pass ecg.T)" if samples == self.num_leads else ""
                raise ValueError(
                    f"{where}: expected {self.num_leads} leads ({', '.join(self.lead_names)}), "
                    f"got {rows} rows{hint}; for fewer leads pass lead_names= to say which they are"
                )
            return
        if isinstance(lead_names, str):
            raise ValueError(f"{where}: lead_names must be a list with one name per lead, got the string "
                             f"{lead_names!r}")
        if len(lead_names) != rows:
            hint = " (it looks like [samples, leads]: pass ecg.T)" if len(lead_names) == samples else ""
            raise ValueError(f"{where}: {len(lead_names)} lead names for {rows} leads (rows){hint}")

    def _reorder_leads(self, x: np.ndarray, lead_names, where: str, missing_leads: str, wanted=None) -> tuple:
        """(x in the standard order [12, samples] with zero rows for absent leads, bool mask of present leads).
        `wanted`: the leads in use (`leads=`); missing_leads='raise' asks only for those."""
        self.check_layout(x.shape, lead_names, where)
        if lead_names is None:
            return x, np.ones(self.num_leads, dtype=bool)
        unnamed = [i for i, name in enumerate(lead_names) if name is None or not str(name).strip()]
        if unnamed:  # a WFDB header whose signal lines carry no description
            raise ValueError(f"{where}: lead(s) at row(s) {', '.join(map(str, unnamed))} have no name (a WFDB header "
                             "without signal descriptions?): pass lead_names=[...] with every lead's name")
        canon = []
        for name in lead_names:
            try:
                canon.append(canonical_lead_name(name))
            except ValueError:
                if extra_lead_name(name) is None:
                    raise ValueError(
                        f"{where}: unknown lead name {str(name)!r}; expected the standard leads "
                        f"{', '.join(STANDARD_LEADS)}, or a known extra lead that is dropped "
                        f"({', '.join(EXTRA_LEADS)}; vx, vy, vz)"
                    ) from None
                canon.append(None)  # a known extra lead: dropped
        doubled = sorted({c for c in canon if c is not None and canon.count(c) > 1})
        if doubled:
            raise ValueError(f"{where}: lead(s) {', '.join(doubled)} appear more than once in lead_names")
        missing = [lead for lead in self.lead_names if lead not in canon]
        shown = ", ".join(str(n) for n in lead_names)
        if len(missing) == self.num_leads:
            raise ValueError(f"{where}: no standard lead ({', '.join(self.lead_names)}) in the record (have "
                             f"{shown or 'none'})")
        missing_wanted = [lead for lead in missing if wanted is None or lead in wanted]
        if missing_wanted and missing_leads == "raise":
            raise ValueError(f"{where}: missing lead(s) {', '.join(missing_wanted)} (have {shown}; "
                             "missing_leads='zero' zeroes them as pretraining's lead masking does)")
        present = np.array([lead in canon for lead in self.lead_names])
        out = np.zeros((self.num_leads, x.shape[1]), dtype=np.float32)
        out[present] = x[[canon.index(lead) for lead in self.lead_names if lead in canon]]
        return out, present

    def _read_span(self, n: int, crop: str, generator=None) -> tuple:
        """(start, stop) of the samples the model reads, at its rate, of a record of `n` samples at that rate: the
        first `keep_samples` when a classifier was fine-tuned on a protocol's cut, else `num_samples` by the crop
        policy (a shorter record is read whole and padded later)."""
        if self.keep_samples is not None:
            return 0, min(n, self.keep_samples)
        target = self.num_samples
        if n <= target:
            return 0, n
        if crop == "start":
            start = 0
        elif crop == "center":
            start = (n - target) // 2
        elif crop == "random":
            start = int((generator or np.random.default_rng()).integers(0, n - target + 1))
        else:
            raise ValueError(f"crop must be one of {CROP_POLICIES}, got {crop!r}")
        return start, start + target

    def read_window(self, num_samples: int, sampling_rate: float, crop: Optional[str] = None) -> tuple:
        """(start, stop) in a record's own samples (`num_samples` at `sampling_rate`) of the part the model reads,
        for the deterministic crops ("start", "center")."""
        crop = crop or self.crop
        if crop == "random":
            raise ValueError("read_window: a random crop has no fixed window")
        n = int(round(num_samples * self.sampling_rate / float(sampling_rate)))
        start, stop = self._read_span(n, crop)
        return _source_span(start, stop, n, num_samples)


# --------------------------------------------------------------------------------------------------------------
# Report text
# --------------------------------------------------------------------------------------------------------------

_EDGE_MARKS = ("*** ", " ***", "***", "=-", "=")


def table_advice(ecg) -> str:
    """For a pandas table (neurokit2's multileads ECG is one), what to pass instead; "" for anything else. A table
    is not read as an ECG: which axis holds the leads would be a guess."""
    if hasattr(ecg, "to_numpy") and hasattr(ecg, "columns"):
        return ("; a table is not read as an ECG (which axis holds the leads would be a guess): with one column per "
                "lead, pass ecg=df.to_numpy().T, lead_names=list(df.columns)")
    return ""


def normalize_report(text: str) -> str:
    """Clean a report the way the model was trained on: lower case, "ekg" -> "ecg", trimmed of edge markup."""
    text = str(text).lower().strip().replace("ekg", "ecg")
    changed = True
    while changed:  # markers can be stacked ("*** =-"), so strip until nothing changes
        changed = False
        for mark in _EDGE_MARKS:
            if text.startswith(mark):
                text, changed = text[len(mark) :], True
            if text.endswith(mark):
                text, changed = text[: -len(mark)], True
        stripped = text.strip()
        changed = changed or stripped != text
        text = stripped
    return text


def assemble_report(fields: Sequence) -> str:
    """Join machine-report fields (e.g. MIMIC-IV-ECG's report_0..report_17) with ". ", skipping empty ones."""
    parts = []
    for field in fields:
        if field is None or (isinstance(field, float) and np.isnan(field)):
            continue
        part = str(field).strip().rstrip(".").strip()
        if part:
            parts.append(part)
    return ". ".join(parts)


class DBetaProcessor(ProcessorMixin):
    r"""An ECG feature extractor and a tokenizer as one processor.

    `processor(ecg=..., sampling_rate=500, text=[...])` returns `ecg_values` and/or `input_ids` and
    `attention_mask`. Texts are cleaned with `normalize_report` unless `normalize_text=False`; an empty text
    (before or after cleaning) is an error naming its index.
    """

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    normalize_report = staticmethod(normalize_report)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loading, refusing (TypeError) a keyword that is neither a loading option, nor a
        feature-extractor setting, nor a setting of the tokenizer found in the folder: transformers would drop it
        without a word. Under `pipeline(...)`, which hands the model's keyword arguments to every loader, the model
        judges those."""
        suspects = [] if kwargs.get("_from_pipeline") else [
            k for k in kwargs if k not in LOADING_KEYWORDS and k not in feature_extractor_settings()]
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except ValueError as err:  # newer transformers hand the feature extractor the file's contents only
            # by name: the feature extractor may come from the folder's own copy of this module (another class)
            if type(err).__name__ != "UnknownSettingError" or str(pretrained_model_name_or_path) in str(err):
                raise
            raise UnknownSettingError(f"{pretrained_model_name_or_path}: {err}") from None
        processor = loaded[0] if isinstance(loaded, tuple) else loaded  # (processor, unused) when asked for
        unknown = set(suspects) - tokenizer_settings(processor.tokenizer)
        if unknown:
            raise unknown_keywords_error(
                f"DBetaProcessor.from_pretrained({str(pretrained_model_name_or_path)!r})", unknown,
                set(LOADING_KEYWORDS) | set(feature_extractor_settings()) | tokenizer_settings(processor.tokenizer))
        return loaded

    @staticmethod
    def read(path: Union[str, Path]) -> "ECGRecord":
        """Read an ECG file (WFDB record or DICOM) into millivolts with its lead names and sampling rate: the
        reader that travels with the model, for code that loaded it from the Hub (`processor.read(path)`)."""
        return read_ecg_file(path)

    def __call__(
        self,
        ecg=None,
        text=None,
        sampling_rate=None,
        lead_names=None,
        return_tensors: Optional[str] = "pt",
        normalize_text: bool = True,
        max_length: int = 256,
        padding="longest",
        **kwargs,
    ) -> BatchFeature:
        if ecg is None and text is None:
            raise ValueError("give an ECG (ecg=...), a text (text=...) or both")
        unknown = set(kwargs) - set(CALL_OPTIONS)
        if unknown:
            raise unknown_keywords_error(
                "DBetaProcessor.__call__", unknown, ("ecg", "text", "sampling_rate", "lead_names", "normalize_text",
                                                     "max_length", "padding") + CALL_OPTIONS)
        data = {}
        if ecg is not None:
            data.update(
                self.feature_extractor(
                    ecg, sampling_rate=sampling_rate, lead_names=lead_names, return_tensors=None, **kwargs
                )
            )
        if text is not None:
            data.update(
                self.tokenize(text, normalize_text=normalize_text, max_length=max_length, padding=padding)
            )
        return BatchFeature(data, tensor_type=return_tensors)

    def tokenize(self, text, normalize_text: bool = True, max_length: int = 256, padding="longest") -> dict:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("the list of texts is empty")
        cleaned = []
        for i, t in enumerate(texts):
            if t is None or (isinstance(t, str) and not t.strip()):
                raise ValueError(f"text[{i}] is empty")
            if not isinstance(t, str):  # str() would turn a missing report (NaN) into the text "nan"
                raise TypeError(f"text[{i}] must be a string, got {type(t).__name__} ({t!r})")
            c = normalize_report(t) if normalize_text else str(t)
            if not c:
                raise ValueError(f"text[{i}] is empty after normalization (was {t!r})")
            cleaned.append(c)
        enc = self.tokenizer(cleaned, padding=padding, truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def text_keys(self, text, max_length: int = 256) -> List[tuple]:
        """Each text as the model reads it: its token ids after cleaning and truncation. Texts with equal keys get
        equal text features, whatever their spacing, case or accents, so they are one report or one class."""
        return [tuple(ids) for ids in self.tokenize(text, max_length=max_length, padding=False)["input_ids"]]

    @property
    def model_input_names(self):
        return ["ecg_values", "input_ids", "attention_mask"]


# Saved copies carry this code and name it in processor_config.json's auto_map, however the class was imported.
DBetaFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
DBetaProcessor.register_for_auto_class("AutoProcessor")
