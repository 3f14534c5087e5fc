"""Downstream datasets stored as PhysioNet/CinC-style WFDB records with SNOMED-CT codes in a `#Dx:` header line:
CPSC2018 (ICBEB), CSN (Chapman-Shaoxing-Ningbo) and the PhysioNet/CinC Challenge 2021 training set."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from eval.downstream_base import (
    ECGLabelDataset,
    ECGReadError,
    PathLike,
    SPLITS,
    check_split,
    describe_layout,
    find_files,
    multi_hot,
    random_split,
    read_header_dx,
    read_table,
    refuse_other_dataset,
    require_dir,
    require_file,
    require_records,
)
from eval.label_sets import (
    CPSC2018_CLASSES,
    CPSC2018_ORIGINAL_NAMES,
    CPSC2018_SNOMED,
    CPSC2018_SNOMED_EQUIVALENTS,
    CSN_MERL_CLASSES,
    CSN_MIN_COUNT,
    CSN_UNKNOWN,
    PHYSIONET2021_EQUIVALENT_CLASSES,
    PHYSIONET2021_SCORED,
    csn_label_set_from_counts,
    csn_multi_hot,
    physionet2021_evaluated_classes,
)
from dbeta.processing_dbeta import STANDARD_LEADS, read_wfdb

# ------------------------------------------------------------------------------------------------------------
# Label sets
# ------------------------------------------------------------------------------------------------------------

# CPSC2018: the protocol's 9 classes (eval.label_sets) and the SNOMED-CT codes of the CinC 2020/2021 WFDB
# release, plus the Challenge's equivalent codes so a header using those is labelled the same.
CPSC2018_CODES: Dict[str, Tuple[str, ...]] = {
    name: tuple(CPSC2018_SNOMED[name]) + tuple(CPSC2018_SNOMED_EQUIVALENTS.get(name, ()))
    for name in CPSC2018_CLASSES
}
# The label numbers of the original ICBEB 2018 REFERENCE.csv (First_label, Second_label, Third_label), as
# numbered on the challenge page; mapped to the protocol's names through CPSC2018_ORIGINAL_NAMES.
CPSC2018_REFERENCE_NUMBERS = {
    1: "Normal", 2: "AF", 3: "I-AVB", 4: "LBBB", 5: "RBBB", 6: "PAC", 7: "PVC", 8: "STD", 9: "STE",
}
CPSC2018_REFERENCE_LABELS = {k: CPSC2018_ORIGINAL_NAMES[v] for k, v in CPSC2018_REFERENCE_NUMBERS.items()}


def physionet2021_class_codes() -> Dict[str, Tuple[str, ...]]:
    """The 26 evaluated classes of the Challenge 2021 -> their scored SNOMED-CT codes: the 30 scored codes
    (eval.label_sets.PHYSIONET2021_SCORED) with the official equivalent pairs merged into one class each
    (CRBBB|RBBB, PAC|SVPB, PVC|VPB, CLBBB|LBBB), in the order of physionet2021_evaluated_classes()."""
    codes: Dict[str, List[str]] = {name: [] for name in physionet2021_evaluated_classes()}
    for abbreviation, code, _ in PHYSIONET2021_SCORED:
        codes[PHYSIONET2021_EQUIVALENT_CLASSES.get(abbreviation, abbreviation)].append(code)
    return {name: tuple(c) for name, c in codes.items()}


def _code_to_class(class_codes: Dict[str, Sequence[str]]) -> Dict[str, str]:
    out = {}
    for name, codes in class_codes.items():
        for code in codes:
            out[str(code)] = name
    return out


# ------------------------------------------------------------------------------------------------------------
# Shared scanning
# ------------------------------------------------------------------------------------------------------------


def find_headers(folder: Path, dataset: str) -> List[Path]:
    """Every WFDB header under `folder` (symlinked folders followed), sorted by relative path (independent of
    file-system listing order)."""
    return find_files(folder, ".hea", dataset)


def _unique_by_stem(paths: Sequence[Path], dataset: str) -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for path in paths:
        if path.stem in out:
            raise ValueError(f"{dataset}: record {path.stem} appears twice: {out[path.stem]} and {path}")
        out[path.stem] = path
    return out


def _select_split(ids: Sequence[str], split: str, seed: int, **sizes) -> List[str]:
    if split == "all":
        return list(ids)
    return random_split(ids, seed=seed, **sizes)[split]


class _WFDBRecordsDataset(ECGLabelDataset):
    """Records are WFDB files read with processing_dbeta.read_wfdb; `self.paths[i]` is the record path."""

    paths: List[Path]

    def _source(self, index: int) -> str:
        return str(self.paths[index])

    def _read(self, index: int):
        record = read_wfdb(self.paths[index])
        return record.signal, record.sampling_rate, record.lead_names


# ------------------------------------------------------------------------------------------------------------
# CPSC2018
# ------------------------------------------------------------------------------------------------------------

_CPSC_HINT = (
    "pass the folder holding the CPSC2018 records: the PhysioNet/CinC 2020-2021 WFDB release "
    "(A0001.hea + A0001.mat, 6877 records) or the original ICBEB 2018 .mat files with REFERENCE.csv"
)


def read_cpsc_original_mat(path: Path) -> np.ndarray:
    """The signal [12, samples] (mV) of an original CPSC 2018 .mat file (a MATLAB struct ECG with sex, age, data)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        data = np.asarray(mat["ECG"]["data"][0, 0], dtype=np.float32)
    except Exception as err:
        raise ECGReadError(
            f"CPSC2018: {path}: not an original CPSC 2018 .mat file with an ECG.data field "
            f"({type(err).__name__}: {err})"
        ) from err
    if data.ndim != 2 or data.shape[0] != 12:
        raise ECGReadError(f"CPSC2018: {path}: ECG.data has shape {data.shape}, expected [12, samples]")
    return data


def _refuse_foreign_records(records: Dict[str, Path], root: Path) -> None:
    """CPSC2018's records are A0001-A6877: a root above the Challenge's training/cpsc_2018 would take other sources'
    records that carry a CPSC class code (Georgia's E*, CPSC-extra's Q*) into a figure reported as CPSC2018."""
    import re

    foreign = sorted(stem for stem in records if not re.fullmatch(r"A\d{4}", stem))
    if foreign:
        raise ValueError(
            f"CPSC2018: {len(foreign)} record(s) under {root} are not CPSC2018 records (named A0001-A6877): "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; pass the CPSC2018 folder itself (the "
            "Challenge's training/cpsc_2018), not one that also holds other sources")


class CPSC2018Dataset(_WFDBRecordsDataset):
    """CPSC2018 / ICBEB 2018 (6877 12-lead records, 500 Hz, 6-60 s), the protocol's 9 classes.

    Expected layout, either of:

    * the PhysioNet/CinC Challenge 2020/2021 WFDB release (one header per record with a `#Dx:` line of
      SNOMED-CT codes), anywhere below root::

          root/**/A0001.hea, A0001.mat, ...

      (point root at the CPSC2018 folder itself, e.g. the Challenge's training/cpsc_2018: every header below
      root is taken, so a root that also holds cpsc_2018_extra would mix those records in)

    * the original ICBEB download: root/**/A0001.mat (MATLAB struct ECG.data [12, samples] in mV, 500 Hz, leads
      I, II, III, aVR, aVL, aVF, V1-V6) and REFERENCE.csv (Recording, First_label, Second_label, Third_label)
      in root or below it.

    Labels: with `labels_from="auto"` REFERENCE.csv is used when present, else the headers' Dx codes (mapped by
    `CPSC2018_CODES`); force one with "reference" or "header". Records with none of the 9 classes are dropped
    (`num_unlabeled_dropped`). Split (MERL recipe): records sorted by name, 20% test, then 10% of the rest val,
    `sklearn.model_selection.train_test_split(random_state=seed)`, seed 42.

    The protocol keeps the first 2500 samples (5 s at 500 Hz) and zero-pads to 5000: that is exposed as
    `protocol_num_samples = 2500` for the evaluation code to hand to the processor; items are never cropped.
    """

    name = "cpsc2018"
    protocol_num_samples = 2500

    def __init__(self, root: PathLike, split: str = "train", seed: int = 42, labels_from: str = "auto"):
        split = check_split(split, "CPSC2018")
        root = require_dir(Path(root), "CPSC2018", "the dataset folder", _CPSC_HINT)
        if labels_from not in ("auto", "reference", "header"):
            raise ValueError(f"CPSC2018: labels_from must be auto, reference or header; got {labels_from!r}")
        refuse_other_dataset(root, "CPSC2018", own=("REFERENCE.csv",))
        headers = _unique_by_stem(find_headers(root, "CPSC2018"), "CPSC2018")
        _refuse_foreign_records(headers, root)
        references = self._find_references(root)
        reference = ", ".join(map(str, references)) if references else None
        if labels_from == "reference" and reference is None:
            raise FileNotFoundError(f"CPSC2018: expected REFERENCE.csv in {root} or below it ({_CPSC_HINT})")
        use_reference = reference is not None and labels_from != "header"

        if use_reference:
            label_map = self._labels_from_references(references)
            mats = _unique_by_stem([p for p in find_files(root, ".mat", "CPSC2018") if p.stem not in headers],
                                   "CPSC2018")
            _refuse_foreign_records(mats, root)
            unlisted = sorted(set(mats) - set(label_map))
            if unlisted:
                warnings.warn(f"CPSC2018: {len(unlisted)} .mat file(s) under {root} are in no REFERENCE.csv and are "
                              f"left out: {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''}",
                              UserWarning, stacklevel=2)
            paths = {}
            missing = []
            for rec in label_map:
                if rec in headers:
                    paths[rec] = headers[rec]
                elif rec in mats:
                    paths[rec] = mats[rec]
                else:
                    missing.append(rec)
            if missing:
                raise FileNotFoundError(
                    f"CPSC2018: {len(missing)} record(s) listed in {reference} have no .hea or .mat file under "
                    f"{root}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                )
        else:
            if not headers:
                raise FileNotFoundError(
                    f"CPSC2018: expected WFDB records (A0001.hea + A0001.mat with a '#Dx:' header line) or "
                    f"REFERENCE.csv under {root} ({_CPSC_HINT}){describe_layout(root)}"
                )
            code_map = _code_to_class(CPSC2018_CODES)
            label_map, paths = {}, {}
            with_dx = 0
            for rec, header in headers.items():
                codes = read_header_dx(header, "CPSC2018")
                with_dx += codes is not None
                label_map[rec] = {code_map[c] for c in codes or [] if c in code_map}
                paths[rec] = header

        labelled = sorted(rec for rec, names in label_map.items() if names)
        found = (f"{len(label_map)} record(s) in {reference}" if use_reference else
                 f"{len(headers)} WFDB header(s) found, {with_dx} with a '#Dx:' line")
        require_records(labelled, "CPSC2018", root, split, f"{found}, {len(labelled)} with a CPSC2018 class",
                        f"the CinC 2020 CPSC2018 records (A0001.hea with '#Dx: <SNOMED codes>') or the ICBEB "
                        f"files with REFERENCE.csv")
        self.num_unlabeled_dropped = len(label_map) - len(labelled)
        if not use_reference and with_dx < len(headers):  # every CPSC2018 record has a class: not the protocol's
            no_dx = sorted(rec for rec in headers if read_header_dx(headers[rec], "CPSC2018") is None)
            warnings.warn(f"CPSC2018: {len(no_dx)} header(s) under {root} have no '#Dx:' line and are left out "
                          f"({', '.join(no_dx[:5])}{' ...' if len(no_dx) > 5 else ''})", UserWarning, stacklevel=2)
        ids = _select_split(labelled, split, seed)
        super().__init__(
            root, split, CPSC2018_CLASSES, ids, multi_hot([label_map[r] for r in ids], CPSC2018_CLASSES)
        )
        self.paths = [paths[r] for r in ids]
        self.seed = seed
        self.labels_source = str(reference) if use_reference else "header #Dx"
        self.class_codes = dict(CPSC2018_CODES)

    @staticmethod
    def _find_references(root: Path) -> List[Path]:
        """REFERENCE.csv in root, else every one below it (one per training set of the original download)."""
        if (root / "REFERENCE.csv").is_file():
            return [root / "REFERENCE.csv"]
        return sorted(root.rglob("REFERENCE.csv"))

    @classmethod
    def _labels_from_references(cls, paths: List[Path]) -> Dict[str, set]:
        """Every file's labels together; a record listed twice with other labels is an error naming both files."""
        out: Dict[str, set] = {}
        where: Dict[str, Path] = {}
        for path in paths:
            for record, names in cls._labels_from_reference(path).items():
                if record in out and out[record] != names:
                    raise ValueError(f"CPSC2018: record {record} has labels {sorted(out[record])} in {where[record]} "
                                     f"but {sorted(names)} in {path}")
                out[record] = names
                where.setdefault(record, path)
        return out

    @staticmethod
    def _labels_from_reference(path: Path) -> Dict[str, set]:
        columns = ["First_label", "Second_label", "Third_label"]
        try:
            table = read_table(path, "CPSC2018", ["Recording", "First_label"])
        except ValueError as err:
            raise ValueError(f"{err}; expected the columns Recording, First_label, Second_label, Third_label "
                             f"(the ICBEB 2018 REFERENCE.csv)") from None
        out: Dict[str, set] = {}
        lines: Dict[str, int] = {}
        for line, (_, row) in enumerate(table.iterrows(), start=2):
            record = str(row["Recording"]).strip()
            if record in lines:  # which row holds the labels is unknowable: refuse rather than keep the later one
                raise ValueError(f"CPSC2018: {path}: record {record} is listed on lines {lines[record]} and {line}")
            lines[record] = line
            names = set()
            for column in columns:
                value = row.get(column)
                if value is None or pd.isna(value):
                    continue
                number = pd.to_numeric(value, errors="coerce")
                if pd.isna(number) or number != int(number):
                    raise ValueError(f"CPSC2018: {path}: line {line} (record {row['Recording']}): {column} is "
                                     f"{value!r}, expected a label number 1-9")
                number = int(number)
                if number not in CPSC2018_REFERENCE_LABELS:
                    raise ValueError(f"CPSC2018: {path}: record {row['Recording']}: unknown label number {number}")
                names.add(CPSC2018_REFERENCE_LABELS[number])
            out[record] = names
        return out

    def _read(self, index: int):
        path = self.paths[index]
        if path.suffix == ".hea":
            return super()._read(index)
        return read_cpsc_original_mat(path), 500.0, list(STANDARD_LEADS)


# ------------------------------------------------------------------------------------------------------------
# CSN (Chapman-Shaoxing-Ningbo)
# ------------------------------------------------------------------------------------------------------------

_CSN_HINT = (
    "download 'A large scale 12-lead electrocardiogram database for arrhythmia study' 1.0.0 from PhysioNet "
    "and pass the folder holding ConditionNames_SNOMED-CT.csv and WFDBRecords/"
)


def read_csn_condition_names(path: Path) -> pd.DataFrame:
    """ConditionNames_SNOMED-CT.csv as a table with columns acronym, full_name, code (all str)."""
    try:
        table = read_table(path, "CSN", ["Acronym Name", "Snomed_CT"], dtype=str)
    except ValueError as err:
        raise ValueError(f"{err}; expected the columns 'Acronym Name', 'Full Name', 'Snomed_CT'") from None
    full = table["Full Name"] if "Full Name" in table.columns else table["Acronym Name"]
    codes = table["Snomed_CT"].astype(str).str.strip()
    bad = [(i, c) for i, c in enumerate(codes) if not c.isdigit()]
    if bad:  # "164889003.0" from a spreadsheet matched no header code: every record was dropped as unmapped
        row, code = bad[0]
        raise ValueError(f"CSN: {path}: Snomed_CT {code!r} (data row {row + 1}) is not a whole number "
                         f"({len(bad)} such row(s)); write the codes as digits only, as the release does")
    return pd.DataFrame(
        {
            "acronym": table["Acronym Name"].astype(str).str.strip(),
            "full_name": full.astype(str).str.strip(),
            "code": codes,
        }
    )


class CSNDataset(_WFDBRecordsDataset):
    """Chapman-Shaoxing-Ningbo ("ecg-arrhythmia" 1.0.0 on PhysioNet, 45152 records, 500 Hz, 10 s, 12 leads).

    Expected layout (the PhysioNet download)::

        root/ConditionNames_SNOMED-CT.csv        (columns Acronym Name, Full Name, Snomed_CT)
        root/WFDBRecords/01/010/JS00001.hea, JS00001.mat, ...   (headers carry '#Dx: <SNOMED codes>')

    Labels: each Dx code becomes its acronym from ConditionNames_SNOMED-CT.csv (the first row with that code,
    as in MERL's notebook; the file gives some codes several acronyms). As in the MERL recipe, a record with a
    code the table does not name (or with no Dx line) is "Unknown" and dropped (`num_unknown_dropped`);
    `drop_records_with_unmapped_codes=False` ignores only the unnamed codes instead.

    Classes (`classes`): "merl" (default) is the 38 label columns MERL evaluated on
    (eval.label_sets.CSN_MERL_CLASSES, the protocol's "38 labels with >= 10 samples"); "counts" re-derives
    the list from the records found (acronyms on >= `min_count` records, Unknown excluded, by descending count;
    eval.label_sets.csn_label_set_from_counts); or pass a list of acronyms. `match="exact"` (default) sets a
    class when it is one of the record's acronyms; `match="merl_substring"` reproduces MERL's files, where a
    class is set when its acronym is a substring of the record's comma-joined acronyms ("AF" also fires for
    AFIB, "ST" for STE/STTC...). Records left without any class stay as all-zero rows, as in MERL, unless
    `drop_unlabeled=True`.

    Split: records sorted by id (file name), then the MERL recipe: 20% test, then 10% of the rest val,
    train_test_split(random_state=seed), seed 42. (MERL split its rows in directory-walk order, so its exact
    membership is not reproduced; the sizes follow the same arithmetic.)
    """

    name = "csn"

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        seed: int = 42,
        classes: Union[str, Sequence[str]] = "merl",
        min_count: int = CSN_MIN_COUNT,
        match: str = "exact",
        drop_records_with_unmapped_codes: bool = True,
        drop_unlabeled: bool = False,
    ):
        split = check_split(split, "CSN")
        if match not in ("exact", "merl_substring"):
            raise ValueError(f"CSN: match must be 'exact' or 'merl_substring'; got {match!r}")
        root = require_dir(Path(root), "CSN", "the dataset folder", _CSN_HINT)
        table_path = require_file(
            root / "ConditionNames_SNOMED-CT.csv", "CSN", "ConditionNames_SNOMED-CT.csv", _CSN_HINT
        )
        records_dir = require_dir(root / "WFDBRecords", "CSN", "the WFDBRecords/ folder", _CSN_HINT)
        table = read_csn_condition_names(table_path)
        acronym_of: Dict[str, str] = {}
        for code, acronym in zip(table["code"], table["acronym"]):
            acronym_of.setdefault(code, acronym)
        headers = _unique_by_stem(find_headers(records_dir, "CSN"), "CSN")
        if not headers:
            raise FileNotFoundError(f"CSN: no WFDB header (*.hea) under {records_dir} ({_CSN_HINT})")
        n_headers = len(headers)

        acronyms: Dict[str, List[str]] = {}  # record -> its acronyms in header order
        self.num_unknown_dropped = 0
        for rec in sorted(headers):
            codes = read_header_dx(headers[rec], "CSN")
            unmapped = codes is None or any(c not in acronym_of for c in codes)
            if unmapped and drop_records_with_unmapped_codes:
                self.num_unknown_dropped += 1
                continue
            names: List[str] = []
            for code in codes or []:
                if code in acronym_of and acronym_of[code] not in names:
                    names.append(acronym_of[code])
            acronyms[rec] = names

        if isinstance(classes, str):
            if classes == "merl":
                class_names = list(CSN_MERL_CLASSES)
            elif classes == "counts":
                class_names = csn_label_set_from_counts(acronyms.values(), min_count=min_count, drop=(CSN_UNKNOWN,))
                if not class_names:
                    raise ValueError(f"CSN: no acronym occurs on {min_count} or more records under {records_dir}")
            else:
                raise ValueError(f"CSN: classes must be 'merl', 'counts' or a list of acronyms; got {classes!r}")
        else:
            class_names = [str(c) for c in classes]
        unknown = [n for n in class_names if n not in set(table["acronym"])]
        if unknown:
            raise ValueError(
                f"CSN: class(es) {', '.join(unknown)} are not acronyms in {table_path} "
                "(pass classes='counts' to derive the classes from this file and the records)"
            )

        ids = sorted(acronyms)
        joined = [",".join(acronyms[r]) for r in ids]
        labels = csn_multi_hot(joined, class_names, match=match).astype(np.float32)
        if drop_unlabeled:
            keep = labels.sum(axis=1) > 0
            ids = [r for r, k in zip(ids, keep) if k]
            labels = labels[keep]
        self.num_records_total = len(ids)
        require_records(ids, "CSN", records_dir, split,
                        f"{n_headers} WFDB header(s) found, {len(acronyms)} with codes named in {table_path.name}",
                        "the Chapman-Shaoxing-Ningbo records (JS00001.hea with '#Dx: <SNOMED codes>')")
        row_of = {r: i for i, r in enumerate(ids)}
        ids = _select_split(ids, split, seed)
        super().__init__(root, split, class_names, ids, labels[[row_of[r] for r in ids]])
        self.paths = [headers[r] for r in ids]
        self.seed = seed
        self.match = match
        self.record_acronyms = [list(acronyms[r]) for r in ids]
        full: Dict[str, str] = {}
        for acronym, name in zip(table["acronym"], table["full_name"]):
            full.setdefault(acronym, name)
        self.class_full_names = {n: full.get(n, n) for n in class_names}
        self.class_codes = {n: tuple(table.loc[table["acronym"] == n, "code"]) for n in class_names}


# ------------------------------------------------------------------------------------------------------------
# PhysioNet/CinC Challenge 2021
# ------------------------------------------------------------------------------------------------------------

_CINC_HINT = (
    "download the PhysioNet/CinC Challenge 2021 training data (1.0.3) and pass its folder, which holds the "
    "sources (cpsc_2018, cpsc_2018_extra, st_petersburg_incart, ptb, ptb-xl, georgia, chapman_shaoxing, ningbo)"
)


def read_split_file(path: Path, dataset: str) -> Dict[str, str]:
    """A CSV with columns record_id (or record) and split (train/val/test) -> {record_id: split}."""
    path = require_file(Path(path), dataset, "the split file", "a CSV with columns record_id,split")
    table = read_table(path, dataset, dtype=str)
    id_column = "record_id" if "record_id" in table.columns else "record" if "record" in table.columns else None
    if id_column is None or "split" not in table.columns:
        raise ValueError(f"{dataset}: split file {path} needs the columns record_id and split")
    bad = sorted(set(table["split"].fillna("(empty)")) - set(SPLITS))
    if bad:
        raise ValueError(f"{dataset}: split file {path} has split value(s) {bad}; expected train, val, test")
    out = dict(zip(table[id_column].astype(str).str.strip(), table["split"]))
    if len(out) != len(table):
        raise ValueError(f"{dataset}: split file {path} lists a record twice")
    return out


class PhysioNet2021Dataset(_WFDBRecordsDataset):
    """PhysioNet/CinC Challenge 2021 training data: 88k 12-lead records from 8 sources, 257-1000 Hz.

    Expected layout (the PhysioNet download; any nesting below root works)::

        root/[training/]<source>/g1/A0001.hea, A0001.mat, ...   (headers carry '#Dx: <SNOMED codes>')

    `sources` keeps only records with one of those folder names in their path (e.g. ["georgia", "ningbo"]).
    Record ids are the path below root without suffix (e.g. "training/georgia/g1/E00001").

    Labels: the 26 evaluated classes of `physionet2021_class_codes()` (the official 30 scored codes with the
    four equivalent pairs merged); unscored codes are ignored. Records with no scored class
    are dropped by default (`drop_unlabeled=False` keeps them as all-zero rows, as the Challenge's scoring does).

    Split: with `split_file` (CSV columns record_id,split; ids as above, or bare record names when those are
    unique) the file decides and records it does not list belong to no split. Without it, a seeded random split
    by record: records sorted by id, round(10%) of them to test, then as many of the rest to val (80/10/10
    overall), each step train_test_split(random_state=seed). Records of one patient are not grouped (the
    Challenge data carries no patient ids). The benchmark protocol leaves this split to each paper ("per paper").
    """

    name = "physionet2021"

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        seed: int = 42,
        split_file: Optional[PathLike] = None,
        drop_unlabeled: bool = True,
        sources: Optional[Sequence[str]] = None,
    ):
        split = check_split(split, "PhysioNet 2021")
        root = require_dir(Path(root), "PhysioNet 2021", "the dataset folder", _CINC_HINT)
        refuse_other_dataset(root, "PhysioNet 2021")
        headers = find_headers(root, "PhysioNet 2021")
        if sources is not None:
            wanted = set(sources)
            headers = [h for h in headers if wanted & set(h.relative_to(root).parts[:-1])]
        # the sources' record names are unique: one found twice (the 2020 archive unpacked beside the 2021 tree)
        # would be split on its own twice, into train and test alike
        _unique_by_stem(headers, "PhysioNet 2021")
        if not headers:
            where = f" in source folder(s) {', '.join(sources)}" if sources is not None else ""
            raise FileNotFoundError(
                f"PhysioNet 2021: no WFDB header (*.hea) under {root}{where} ({_CINC_HINT})"
            )
        class_codes = physionet2021_class_codes()
        class_names = list(class_codes)
        code_map = _code_to_class(class_codes)

        path_of: Dict[str, Path] = {}
        label_map: Dict[str, set] = {}
        for header in headers:
            rec = header.relative_to(root).with_suffix("").as_posix()
            codes = read_header_dx(header, "PhysioNet 2021") or []
            label_map[rec] = {code_map[c] for c in codes if c in code_map}
            path_of[rec] = header
        ids = sorted(label_map)
        if drop_unlabeled:
            ids = [r for r in ids if label_map[r]]
        self.num_records_total = len(ids)
        n_labelled = sum(bool(label_map[r]) for r in label_map)
        require_records(ids, "PhysioNet 2021", root, "all" if split_file is not None else split,
                        f"{len(headers)} WFDB header(s) found, {n_labelled} with a scored class",
                        "the Challenge 2021 training records (*.hea with '#Dx: <SNOMED codes>')")

        if split_file is not None:
            ids = self._ids_from_split_file(Path(split_file), ids, split)
        else:
            tenth = max(1, int(round(0.1 * len(ids))))
            ids = _select_split(ids, split, seed, test_size=tenth, val_size=tenth)
        super().__init__(root, split, class_names, ids, multi_hot([label_map[r] for r in ids], class_names))
        self.paths = [path_of[r] for r in ids]
        self.seed = seed
        self.split_file = str(split_file) if split_file is not None else None
        self.class_codes = class_codes

    @staticmethod
    def _ids_from_split_file(path: Path, ids: List[str], split: str) -> List[str]:
        assignment = read_split_file(path, "PhysioNet 2021")
        by_name: Dict[str, List[str]] = {}
        for rec in ids:
            by_name.setdefault(rec.rsplit("/", 1)[-1], []).append(rec)
        id_set = set(ids)
        resolved: Dict[str, str] = {}
        unknown = []
        spelt: Dict[str, str] = {}
        for key, value in assignment.items():
            if key in by_name and "/" not in key:
                if len(by_name[key]) > 1:
                    raise ValueError(
                        f"PhysioNet 2021: split file {path}: record name {key} is ambiguous "
                        f"({', '.join(by_name[key])}); use the full record id"
                    )
                record = by_name[key][0]
            elif key in id_set:
                record = key
            else:
                unknown.append(key)
                continue
            if record in resolved:  # "E00001" and "training/georgia/g1/E00001": one record, listed twice
                raise ValueError(f"PhysioNet 2021: split file {path} lists record {record} twice, as {spelt[record]} "
                                 f"({resolved[record]}) and as {key} ({value})")
            resolved[record], spelt[record] = value, key
        if unknown:
            raise ValueError(
                f"PhysioNet 2021: split file {path} lists {len(unknown)} record(s) not found (or dropped as "
                f"unlabelled) under the dataset root: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
            )
        if split == "all":
            return sorted(resolved)
        return sorted(r for r, s in resolved.items() if s == split)
