"""PTB-XL downstream tasks (super, sub, form, rhythm) with the official strat_fold split."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from eval.downstream_base import (
    ECGLabelDataset,
    PathLike,
    check_split,
    describe_layout,
    multi_hot,
    read_table,
    require_dir,
    require_file,
)
from eval.label_sets import PTBXL_SUPER, PTBXL_TASKS, ptbxl_label_sets
from dbeta.processing_dbeta import ECGReadError, read_wfdb

_TASK_ALIASES = {"super_class": "super", "superclass": "super", "sub_class": "sub", "subclass": "sub"}
# strat_fold -> split: folds 1-8 train, 9 val, 10 test (the PTB-XL authors' recommendation).
PTBXL_SPLIT_FOLDS = {"train": tuple(range(1, 9)), "val": (9,), "test": (10,), "all": tuple(range(1, 11))}
PTBXL_RATE = 500.0  # the `filename_hr` records; the protocol reads these
_HINT = "download PTB-XL 1.0.3 from PhysioNet and pass the folder that holds ptbxl_database.csv"


def normalize_ptbxl_task(task: Optional[str]) -> str:
    key = str(task).strip().lower() if task is not None else ""
    key = _TASK_ALIASES.get(key, key)
    if key not in PTBXL_TASKS:
        raise ValueError(f"PTB-XL: task must be one of {', '.join(PTBXL_TASKS)}; got {task!r}")
    return key


def ptbxl_statement_map(statements: pd.DataFrame, task: str) -> Dict[str, str]:
    """SCP statement code -> class name of `task`, from scp_statements.csv (indexed by statement code).

    super / sub: `diagnostic_class` / `diagnostic_subclass` of the statements with diagnostic == 1;
    form / rhythm: the statements with form == 1 / rhythm == 1, each its own class.
    """
    task = normalize_ptbxl_task(task)
    if task in ("super", "sub"):
        column = "diagnostic_class" if task == "super" else "diagnostic_subclass"
        rows = statements[statements["diagnostic"] == 1]
        return {str(code): str(name) for code, name in rows[column].items() if pd.notna(name)}
    rows = statements[statements[task] == 1]
    return {str(code): str(code) for code in rows.index}


def ptbxl_class_names(statements: pd.DataFrame, task: str) -> List[str]:
    """The class order of a task: the protocol's NORM, MI, STTC, CD, HYP for super; otherwise the sorted list
    of eval.label_sets.ptbxl_label_sets (codes spelled as in scp_statements.csv, e.g. NST_, _AVB)."""
    task = normalize_ptbxl_task(task)
    names = sorted(set(ptbxl_statement_map(statements, task).values()))
    order = list(PTBXL_SUPER) if task == "super" else list(ptbxl_label_sets(statements)[task])
    if sorted(order) != names:
        raise ValueError(
            f"PTB-XL: the {task} classes of scp_statements.csv ({', '.join(names)}) differ from "
            f"eval.label_sets ({', '.join(order)}); is this PTB-XL 1.0.x's scp_statements.csv?"
        )
    return order


def parse_scp_codes(text: str, ecg_id) -> Dict[str, float]:
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:  # the last two: a deeply nested cell
        shown = text if len(str(text)) <= 80 else f"{str(text)[:80]}... ({len(str(text))} characters)"
        raise ValueError(f"PTB-XL: ecg_id {ecg_id}: cannot parse scp_codes {shown!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"PTB-XL: ecg_id {ecg_id}: scp_codes is not a dict: {text!r}")
    return value


def read_ptbxl_tables(root: PathLike) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """ptbxl_database.csv (indexed by ecg_id) and scp_statements.csv (indexed by statement code), checked."""
    root = Path(root)
    require_dir(root, "PTB-XL", "the dataset folder", _HINT)
    hint = _HINT + describe_layout(root)
    db_path = require_file(root / "ptbxl_database.csv", "PTB-XL", "ptbxl_database.csv", hint)
    st_path = require_file(root / "scp_statements.csv", "PTB-XL", "scp_statements.csv", hint)
    db = read_table(db_path, "PTB-XL", sorted({"ecg_id", "scp_codes", "strat_fold", "filename_hr"}))
    for column in ("ecg_id", "strat_fold"):  # a missing fold would silently drop the record from every split
        values = pd.to_numeric(db[column], errors="coerce")
        bad = db.index[values.isna() | (values != values.round())
                       | ((column == "strat_fold") & ~values.between(1, 10))]
        if len(bad):
            rows = ", ".join(str(i + 2) for i in bad[:5])  # file line numbers (header is line 1)
            raise ValueError(f"PTB-XL: {db_path}: {len(bad)} row(s) have no valid {column} "
                             f"({'a fold 1-10' if column == 'strat_fold' else 'an integer'}; line(s) {rows}"
                             f"{' ...' if len(bad) > 5 else ''})")
    missing_file = db["ecg_id"][db["filename_hr"].isna() | (db["filename_hr"].astype(str).str.strip() == "")]
    if len(missing_file):
        raise ValueError(f"PTB-XL: {db_path}: {len(missing_file)} row(s) have no filename_hr (ecg_id "
                         f"{', '.join(map(str, missing_file[:5]))}{' ...' if len(missing_file) > 5 else ''})")
    ids = pd.to_numeric(db["ecg_id"]).astype(int)
    repeated = ids[ids.duplicated(keep=False)]
    if len(repeated):  # one record twice: counted twice in a split, or in two splits at once
        first = int(repeated.iloc[0])
        lines = ", ".join(str(i + 2) for i in repeated.index[repeated == first])
        raise ValueError(f"PTB-XL: {db_path}: ecg_id {first} appears on lines {lines}"
                         f"{f' ({repeated.nunique()} ids repeated)' if repeated.nunique() > 1 else ''}; each record once")
    # the reader takes a record with or without its .hea/.dat suffix: "00001_hr" and "00001_hr.hea" are one file
    files = db["filename_hr"].astype(str).str.strip().map(lambda f: os.path.splitext(os.path.normpath(f))[0]
                                                         if f.endswith((".hea", ".dat")) else os.path.normpath(f))
    shared = files[files.duplicated(keep=False)]
    if len(shared):  # two ecg_ids reading one record: the same ECG in two folds (train and test) at once
        first = shared.iloc[0]
        rows = shared.index[shared == first]
        raise ValueError(f"PTB-XL: {db_path}: ecg_id {', '.join(str(ids[i]) for i in rows)} (lines "
                         f"{', '.join(str(i + 2) for i in rows)}) all read {first}; each record once")
    db = db.set_index(ids).drop(columns="ecg_id")
    db.index.name = "ecg_id"
    statements = read_table(st_path, "PTB-XL", ["diagnostic", "form", "rhythm", "diagnostic_class",
                                                "diagnostic_subclass"], index_col=0)
    return db, statements


def read_ptbxl_record(path):
    """A `filename_hr` record, refused when it is not at 500 Hz: resampled, a 100 Hz record (the column swapped
    with `filename_lr`) would pass as the protocol's."""
    record = read_wfdb(path)
    if abs(record.sampling_rate - PTBXL_RATE) > 1e-6:
        raise ECGReadError(f"{record.path}: {record.sampling_rate:g} Hz, but filename_hr names PTB-XL's "
                           f"{PTBXL_RATE:g} Hz records (records500/); are filename_hr and filename_lr swapped in "
                           "ptbxl_database.csv?")
    return record


class PTBXLDataset(ECGLabelDataset):
    """PTB-XL (Wagner et al. 2020) for one task: super (5 classes), sub (23), form (19) or rhythm (12).

    Expected layout (the PhysioNet download, version 1.0.x)::

        root/ptbxl_database.csv
        root/scp_statements.csv
        root/records500/00000/00001_hr.hea, 00001_hr.dat, ...   (the `filename_hr` column, relative to root)

    Labels: a record has a statement when its `scp_codes` dict lists it, whatever the likelihood (0 included),
    as in the MERL protocol; the statement maps to the task's classes by `ptbxl_statement_map`. Records with no
    class of the task are dropped. Split by `strat_fold`: 1-8 train, 9 val, 10 test ("all": every fold).
    Items are the 500 Hz records as stored (10 s, 12 leads named as in the file, mV).
    """

    name = "ptbxl"

    def __init__(self, root: PathLike, split: str = "train", task: str = "super"):
        task = normalize_ptbxl_task(task)
        split = check_split(split, "PTB-XL")
        root = Path(root)
        db, statements = read_ptbxl_tables(root)
        require_dir(root / "records500", "PTB-XL", "the records500/ folder (the 500 Hz WFDB records)", _HINT)
        code_map = ptbxl_statement_map(statements, task)
        class_names = ptbxl_class_names(statements, task)

        folds = pd.to_numeric(db["strat_fold"], errors="coerce")
        keep_fold = folds.isin(PTBXL_SPLIT_FOLDS[split])
        ids, label_sets, files, fold_list = [], [], [], []
        known = set(statements.index)
        for ecg_id, row in db[keep_fold].iterrows():
            codes = parse_scp_codes(row["scp_codes"], ecg_id)
            unknown = sorted(str(c) for c in codes if c not in known)
            if unknown:  # "AFIB " or "sr" would be passed over: the record dropped, or a class turned negative
                raise ValueError(f"PTB-XL: {root / 'ptbxl_database.csv'}: ecg_id {ecg_id}: scp_codes "
                                 f"{', '.join(map(repr, unknown))} not in scp_statements.csv (its codes are "
                                 "spelt exactly, in capitals)")
            names = {code_map[c] for c in codes if c in code_map}
            if not names:
                continue
            ids.append(str(ecg_id))
            label_sets.append(names)
            files.append(str(row["filename_hr"]))
            fold_list.append(int(folds[ecg_id]))
        super().__init__(root, split, class_names, ids, multi_hot(label_sets, class_names), task=task)
        self.filenames = files
        self.strat_folds = np.asarray(fold_list, dtype=np.int64)

    def _source(self, index: int) -> str:
        return str(self.root / self.filenames[index])

    def _read(self, index: int):
        record = read_ptbxl_record(self.root / self.filenames[index])
        return record.signal, record.sampling_rate, record.lead_names
