"""The common interface of the downstream (labelled) ECG datasets, and the helpers the loaders share.

A loader only reads files. Each item is the raw record as stored: a float32 [leads, samples] signal in
millivolts, its sampling rate, the lead names as the file spells them, a float32 multi-hot label vector in the
order of `class_names`, and a record id. Resampling, cropping/padding, lead reordering and amplitude scaling
belong to the processor (`processing_dbeta.DBetaFeatureExtractor`), never to a loader.

Datasets are map-style and read lazily: the constructor reads only metadata (CSV tables, WFDB headers), and
`__getitem__` reads one record, so a torch `DataLoader` with workers reads records in parallel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from dbeta.processing_dbeta import WFDB_RECORD_LINE, ECGReadError, canonical_lead_name

SPLITS = ("train", "val", "test")
PathLike = Union[str, Path]

__all__ = [
    "SPLITS",
    "ECGLabelDataset",
    "ECGReadError",
    "check_limb_leads",
    "describe_layout",
    "find_files",
    "multi_hot",
    "parse_header_dx",
    "read_header_dx",
    "random_split",
    "read_table",
    "refuse_other_dataset",
    "require_dir",
    "require_file",
    "require_records",
]


class ECGLabelDataset:
    """Map-style dataset of labelled ECG records; subclasses implement `_read` and `_source`.

    Attributes every dataset has:
      name: registry name ("ptbxl", "cpsc2018", ...), task: the task (PTB-XL) or None, split: "train" | "val" |
      "test" | "all"; class_names: the label order; record_ids: one id per item; root: the dataset folder;
      protocol_num_samples: None, or the number of samples (at the processor's rate) the benchmark protocol
      keeps before zero-padding to the model length (CPSC2018: 2500). Loaders never apply it; evaluation code
      passes it on to the processor.

    `ds[i]` is a dict: signal (np.float32 [leads, samples], mV), sampling_rate (float), lead_names (list[str]),
    labels (np.float32 [n_classes], multi-hot), record_id (str). `labels_matrix()` gives all labels
    [n_records, n_classes] without reading any signal.
    """

    name: str = ""
    protocol_num_samples: Optional[int] = None

    def __init__(
        self,
        root: PathLike,
        split: str,
        class_names: Sequence[str],
        record_ids: Sequence[str],
        labels: np.ndarray,
        task: Optional[str] = None,
    ):
        self.root = Path(root)
        self.split = split
        self.task = task
        self.class_names: List[str] = [str(c) for c in class_names]
        self.record_ids: List[str] = [str(r) for r in record_ids]
        labels = np.asarray(labels, dtype=np.float32)
        if labels.ndim != 2 or labels.shape != (len(self.record_ids), len(self.class_names)):
            raise ValueError(
                f"{self.name}: labels have shape {labels.shape}, expected "
                f"({len(self.record_ids)}, {len(self.class_names)})"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{self.name}: duplicate class names in {self.class_names}")
        if not len(self.record_ids):  # an empty split would evaluate to "0 records" and look like a result
            raise ValueError(f"{self.name}: the {split} split{f' of task {task}' if task else ''} under {self.root} "
                             f"has no records")
        if not np.isfinite(labels).all():
            raise ValueError(f"{self.name}: labels under {self.root} contain NaN")
        self._labels = labels

    # -- to implement -----------------------------------------------------------------------------------------
    def _read(self, index: int) -> Tuple[np.ndarray, float, List[str]]:
        """Return (signal [leads, samples] in mV, sampling rate in Hz, lead names) of record `index`."""
        raise NotImplementedError

    def _source(self, index: int) -> str:
        """Where record `index` lives (a file path, or file + row), for error messages."""
        raise NotImplementedError

    def record_files(self, index: int) -> List[str]:
        """The files record `index` is read from that exist (cache keys hold their sizes and times): its source and,
        for a WFDB or MATLAB record, the .hea/.dat/.mat beside it. A dataset whose source is not a path overrides."""
        where = self._source(index)
        stem = where[:-4] if where.endswith((".hea", ".dat", ".mat")) else where
        return [path for path in dict.fromkeys((where, stem + ".hea", stem + ".dat", stem + ".mat"))
                if os.path.isfile(path)]

    # -- the interface --------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.record_ids)

    def labels_matrix(self) -> np.ndarray:
        """All labels [n_records, n_classes] (float32 multi-hot) in item order; reads no signal."""
        return self._labels.copy()

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name}: index must be an integer, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} records")
        where = self._source(index)
        try:
            signal, rate, lead_names = self._read(index)
        except ECGReadError:
            raise  # processing_dbeta's readers already name the file
        except Exception as err:
            raise ECGReadError(f"{self.name}: cannot read {where} ({type(err).__name__}: {err})") from err
        signal = np.asarray(signal)
        if signal.ndim != 2 or signal.size == 0:
            raise ECGReadError(f"{self.name}: {where}: expected a [leads, samples] signal, got {signal.shape}")
        if len(lead_names) != signal.shape[0]:
            raise ECGReadError(f"{self.name}: {where}: {len(lead_names)} lead names for {signal.shape[0]} leads")
        return {
            "signal": np.ascontiguousarray(signal, dtype=np.float32),
            "sampling_rate": float(rate),
            "lead_names": [str(name) for name in lead_names],
            "labels": self._labels[index].copy(),
            "record_id": self.record_ids[index],
        }

    def __repr__(self) -> str:
        task = f", task={self.task!r}" if self.task else ""
        return (
            f"{type(self).__name__}(root={str(self.root)!r}{task}, split={self.split!r}, "
            f"records={len(self)}, classes={self.num_classes})"
        )


# ------------------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------------------


def require_dir(path: Path, dataset: str, what: str, hint: str) -> Path:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{dataset}: expected {what} at {path} ({hint})")
    return Path(path)


def require_file(path: Path, dataset: str, what: str, hint: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{dataset}: expected {what} at {path} ({hint})")
    return Path(path)


# Files that identify each dataset's folder, to say what a folder is when it is not what was asked for.
_LAYOUT_MARKERS = (
    ("ptbxl_database.csv", "a PTB-XL folder (--dataset ptbxl)"),
    ("ConditionNames_SNOMED-CT.csv", "a Chapman-Shaoxing-Ningbo folder (--dataset csn)"),
    ("ecg_tracings.hdf5", "a CODE-test folder (--dataset code-test)"),
    ("REFERENCE.csv", "an ICBEB/CPSC2018 folder (--dataset cpsc2018)"),
    ("dataset_dict.json", "a saved `datasets` folder (eval.retrieval --dataset mimic)"),
    ("dataset/dataset_dict.json", "a train.prepare_mimic output (eval.retrieval --dataset mimic)"),
)


def describe_layout(root: PathLike) -> str:
    """" (it looks like a PTB-XL folder (--dataset ptbxl))" when `root` holds another dataset's marker file,
    else "": appended to "not the expected layout" errors so the user sees which dataset the folder holds."""
    for name, what in _LAYOUT_MARKERS:
        if (Path(root) / name).is_file():
            return f" (it looks like {what}: {name} is there)"
    return ""


def refuse_other_dataset(root: PathLike, dataset: str, own: Iterable[str] = ()) -> None:
    """A folder holding another dataset's marker file (`own`: this dataset's) is refused naming it: a loader that
    finds records anywhere below its root would otherwise evaluate that dataset's records under this name."""
    own = set(own)
    for name, what in _LAYOUT_MARKERS:
        if name not in own and (Path(root) / name).is_file():
            raise ValueError(f"{dataset}: {root} looks like {what} ({name} is there), not {dataset} data; pass "
                             f"the {dataset} folder itself")


def find_files(folder: PathLike, suffix: str, dataset: str) -> List[Path]:
    """Every file named *`suffix` below `folder`, symlinked folders followed (a shared disk links sources in;
    Path.rglob skips them), sorted by relative path. Files whose suffix differs only in case (A0001.HEA) are
    refused: the readers open the lower-case name, so they would be left out without a word."""
    folder = Path(folder)
    found, odd, seen = [], [], set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        # a folder reached both as itself and through a link keeps its own path: real folders are walked first
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(here, d)), d))
        for name in files:
            if name.startswith("._"):  # macOS AppleDouble metadata (copied to exFAT/SMB, or a macOS tar): no record
                continue
            if name.endswith(suffix):
                found.append(Path(here) / name)
            elif name.lower().endswith(suffix.lower()):
                odd.append(Path(here) / name)
    if odd:
        raise ValueError(f"{dataset}: {len(odd)} file(s) under {folder} end in {odd[0].suffix} rather than {suffix} "
                         f"(e.g. {odd[0]}): rename them to *{suffix}, which the WFDB reader opens")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_table(path: Path, dataset: str, required: Iterable[str] = (), **read_csv_kwargs):
    """pandas.read_csv with errors that name the file: an empty, unparsable or row-less CSV, or one without the
    `required` columns, is a ValueError saying so."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, **read_csv_kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{dataset}: {path} is empty (expected a CSV table)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{dataset}: {path} is not a readable CSV table ({type(err).__name__}: {err})") from err
    table.columns = [str(c).strip().lstrip("\ufeff") for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{dataset}: {path} lacks column(s) {', '.join(missing)} "
                         f"(it has: {', '.join(table.columns) or 'none'})")
    if table.empty:
        raise ValueError(f"{dataset}: {path} has a header but no rows")
    return table


def require_records(ids: Sequence[str], dataset: str, root: Path, split: str, found: str, expected: str) -> None:
    """Refuse to split zero (or too few: 3 for a train/val/test split) labelled records: the message says what
    was found under `root`, what was expected, and which dataset the folder seems to hold instead."""
    if len(ids) < (1 if split == "all" else 3):
        raise ValueError(f"{dataset}: {found} under {root}, so {len(ids)} labelled record(s); expected {expected}"
                         f"{describe_layout(root)}")


def check_split(split: str, dataset: str, allowed: Iterable[str] = SPLITS + ("all",)) -> str:
    allowed = tuple(allowed)
    if split not in allowed:
        raise ValueError(f"{dataset}: split must be one of {', '.join(allowed)}; got {split!r}")
    return split


def multi_hot(label_sets: Sequence[Iterable[str]], class_names: Sequence[str]) -> np.ndarray:
    """[n, len(class_names)] float32 multi-hot matrix; names not in `class_names` are ignored."""
    column = {name: j for j, name in enumerate(class_names)}
    out = np.zeros((len(label_sets), len(class_names)), dtype=np.float32)
    for i, names in enumerate(label_sets):
        for name in names:
            j = column.get(name)
            if j is not None:
                out[i, j] = 1.0
    return out


_DX_LINE = re.compile(r"^#\s*Dx\s*:\s*(.*)$", re.IGNORECASE)
_DX_ANYWHERE = re.compile(r"#\s*Dx\s*:", re.IGNORECASE)


def parse_header_dx(header_text: str, source: str = "header") -> Optional[List[str]]:
    """SNOMED codes of a PhysioNet/CinC-style header's `#Dx:` comment lines (all of them, in order, each code once),
    or None when it has no Dx line. A code that is not a whole number (codes joined by ';' or spaces, '164889003.0'
    from a spreadsheet) or a Dx line with text before it is a ValueError naming `source`: read as no class, such a
    record would be dropped, or counted negative for every class, without a word."""
    codes: List[str] = []
    found = False
    for number, line in enumerate(header_text.splitlines(), start=1):
        match = _DX_LINE.match(line.strip())
        if match is None:
            if _DX_ANYWHERE.search(line):
                raise ValueError(f"{source} line {number}: a '#Dx:' comment that does not start the line: "
                                 f"{line.strip()[:80]!r}")
            continue
        found = True
        for code in (c.strip() for c in match.group(1).split(",")):
            if not code:
                continue
            if not re.fullmatch(r"[1-9][0-9]*", code):  # ASCII digits only: "0426783006" or "４２" match no class
                raise ValueError(f"{source} line {number}: {code!r} is not a SNOMED CT code (codes are whole "
                                 "numbers separated by commas)")
            if code not in codes:
                codes.append(code)
    return codes if found else None


def read_header_dx(header_path: Path, dataset: str) -> Optional[List[str]]:
    """`parse_header_dx` of a header file. A file that is no text WFDB header (NUL bytes: saved as UTF-16, as
    Windows PowerShell writes; or no record line) is refused: read with replacement characters it has no Dx line,
    and its record was dropped as unlabelled without a word."""
    try:
        data = Path(header_path).read_bytes()
    except OSError as err:
        raise ECGReadError(f"{dataset}: cannot read header {header_path} ({err})") from err
    if b"\x00" in data:
        raise ValueError(f"{dataset}: {header_path} is no text WFDB header (it holds NUL bytes: saved as UTF-16?); "
                         "save it as ASCII or UTF-8")
    text = data.decode("utf-8-sig", errors="replace")  # a UTF-8 byte-order mark is no part of the record line
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")),
                 "")
    if WFDB_RECORD_LINE.match(first) is None:
        raise ValueError(f"{dataset}: {header_path} has no WFDB record line (its first line: {first[:60]!r})")
    return parse_header_dx(text, f"{dataset}: {header_path}")


def random_split(
    ids: Sequence[str], seed: int = 42, test_size: Union[float, int] = 0.2, val_size: Union[float, int] = 0.1
) -> Dict[str, List[str]]:
    """The benchmark's random split: `test_size` of the records to test, then `val_size` of the rest to val.

    A float size is a fraction (sklearn rounds the count up), an int a number of records.
    Both steps are `sklearn.model_selection.train_test_split(..., random_state=seed)` without stratification,
    applied to `ids` in the order given (callers pass them sorted, so the split does not depend on the order
    in which a file system lists files). With the defaults this is the MERL recipe (80/20, then 10% of train).
    Each returned list is sorted.
    """
    from sklearn.model_selection import train_test_split

    ids = list(ids)
    if len(ids) < 3:
        raise ValueError(f"cannot split {len(ids)} records into train/val/test")
    rest, test = train_test_split(ids, test_size=test_size, random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, random_state=seed)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def check_limb_leads(signal: np.ndarray, lead_names: Sequence[str]) -> Dict[str, float]:
    """How well a record obeys Einthoven's and Goldberger's relations under the given lead names.

    Returns, for III, aVR, aVL and aVF, the RMS of (stored lead - the lead derived from I and II) divided by the
    RMS of the stored lead: near 0 when the names are right, near or above 1 when two leads are swapped. Use it
    to check the lead order of a file whose documentation is unclear (CODE-test, for one).
    """
    x = np.asarray(signal, dtype=np.float64)
    names = [canonical_lead_name(n) for n in lead_names]
    lead = {name: x[i] for i, name in enumerate(names)}
    missing = [n for n in ("I", "II", "III", "aVR", "aVL", "aVF") if n not in lead]
    if missing:
        raise ValueError(f"check_limb_leads needs the six limb leads; missing {', '.join(missing)}")
    i, ii = lead["I"], lead["II"]
    derived = {"III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
    out = {}
    for name, expected in derived.items():
        scale = np.sqrt(np.mean(lead[name] ** 2)) + 1e-12
        out[name] = float(np.sqrt(np.mean((lead[name] - expected) ** 2)) / scale)
    return out
