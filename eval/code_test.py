"""CODE-test (Ribeiro et al. 2020): 827 annotated 12-lead ECGs in one HDF5 array, test split only."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from eval.downstream_base import (
    ECGLabelDataset,
    PathLike,
    check_limb_leads,
    check_split,
    describe_layout,
    read_table,
    require_dir,
    require_file,
)
from eval.label_sets import CODE_TEST_CANONICAL, CODE_TEST_COLUMNS
from dbeta.processing_dbeta import canonical_lead_name

# The lead order of the `tracings` array. The dataset's own README (Zenodo record 3765780, "ecg_tracings.hdf5")
# gives {DI, DII, DIII, AVL, AVF, AVR, V1-V6}: aVL, aVF, aVR, not the usual aVR, aVL, aVF (which is the order
# the same authors give for the *model input* of their CODE network). Check a file with
# eval.downstream_base.check_limb_leads: under the right names III = II - I, aVR = -(I+II)/2, aVL = I - II/2,
# aVF = II - I/2 hold up to noise.
CODE_TEST_LEADS = ("I", "II", "III", "aVL", "aVF", "aVR", "V1", "V2", "V3", "V4", "V5", "V6")
CODE_TEST_RATE = 400.0
LIMB_RESIDUAL_WARNING = 0.5  # eval.downstream_base.check_limb_leads: ~0 under the right names, >= 1 when swapped
CODE_TEST_SAMPLES = 4096  # per exam in the release: 10.24 s at 400 Hz (shorter exams zero-padded)

_HINT = (
    "download CODE-test (Zenodo record 3765780: ecg_tracings.hdf5 and annotations/) and pass the folder "
    "holding ecg_tracings.hdf5"
)


def _exam_id(value) -> Optional[int]:
    """An exam id as an int (from an int, a whole float, or its text as str or bytes), else None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if np.isfinite(number) and number == round(number) else None


class CODETestDataset(ECGLabelDataset):
    """CODE-test: 827 exams, 400 Hz, 4096 samples, 12 leads; 6 classes from annotations/gold_standard.csv.

    Expected layout (the Zenodo download)::

        root/ecg_tracings.hdf5              (dataset `tracings`, shape [827, 4096, 12]: exam, sample, lead)
        root/annotations/gold_standard.csv  (827 rows, columns 1dAVb, RBBB, LBBB, SB, AF, ST; row i = exam i)

    (gold_standard.csv directly in root is accepted too.) Classes, in column order, named by
    eval.label_sets.CODE_TEST_CLASSES: 1AVB, RBBB, LBBB, SBRAD, AFIB, STACH (from 1dAVb, RBBB, LBBB, SB, AF, ST;
    SB is sinus bradycardia, AF atrial fibrillation, ST sinus tachycardia). Only the split "test" exists ("all"
    is the same records). Record ids are the row numbers "0".."826" (the release has no exam ids). Files that both
    carry exam ids (an `exam_id` column in the CSV and an `exam_id` dataset in the HDF5, as CODE-15%'s parts do)
    are matched by id, in the CSV's order, and the ids are the record ids; ids in one file only are refused.

    Units (`scale_to_mv`, default 1.0): the README says the values are "at the scale 1e-4V" and, in the same
    sentence, that a signal in volts "should be multiplied by 1000", which is the scale of millivolts. Read
    literally, 1e-4 V per unit would be 0.1 mV per unit (mV = value * 0.1); the x1000 rule means 1 unit = 1 mV.
    Public measurements of the arrays (median lead-II R wave about 1.5 mV when read as mV) fit millivolts, so
    the default treats the stored values as mV. Pass `scale_to_mv=0.1` for the literal 1e-4 V reading. We have
    not checked this against the file here (it is not available offline).

    Lead order (`lead_names`, default `CODE_TEST_LEADS`): I, II, III, aVL, aVF, aVR, V1-V6, as the dataset's
    README states; see the note at CODE_TEST_LEADS.

    Padding: exams shorter than 4096 samples (7 s and 10 s recordings) were zero-padded on both sides by the
    authors. Items keep all 4096 samples as stored; cropping belongs to the processor.

    The HDF5 file is opened on first use in each process (so DataLoader workers each get their own handle) and
    read one exam at a time.
    """

    name = "code-test"

    def __init__(
        self,
        root: PathLike,
        split: str = "test",
        scale_to_mv: float = 1.0,
        lead_names: Sequence[str] = CODE_TEST_LEADS,
        sampling_rate: Optional[float] = None,
    ):
        check_split(split, "CODE-test", allowed=("test", "all"))
        root = require_dir(Path(root), "CODE-test", "the dataset folder", _HINT)
        self.h5_path = require_file(root / "ecg_tracings.hdf5", "CODE-test", "ecg_tracings.hdf5",
                                    _HINT + describe_layout(root))
        gold = root / "annotations" / "gold_standard.csv"
        if not gold.is_file() and (root / "gold_standard.csv").is_file():
            gold = root / "gold_standard.csv"
        require_file(gold, "CODE-test", "annotations/gold_standard.csv", _HINT)
        table = read_table(gold, "CODE-test", CODE_TEST_COLUMNS)
        labels = table[list(CODE_TEST_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        class_names = [CODE_TEST_CANONICAL[c] for c in CODE_TEST_COLUMNS]
        bad = ~np.isin(labels, (0.0, 1.0))  # NaN (an empty cell) and text fail too
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"CODE-test: {gold} holds {int(bad.sum())} value(s) other than 0 and 1 (first: line {row + 2}, "
                f"column {CODE_TEST_COLUMNS[col]}: {str(table[CODE_TEST_COLUMNS[col]].iloc[row])!r})"
            )

        self.sampling_rate = CODE_TEST_RATE if sampling_rate is None else float(sampling_rate)
        matched = self._check_tracings(table, gold, rate_given=sampling_rate is not None)
        lead_names = [str(n) for n in lead_names]
        if len(lead_names) != 12:
            raise ValueError(f"CODE-test: lead_names must name the 12 stored leads, got {len(lead_names)}")
        for lead in lead_names:
            canonical_lead_name(lead)  # fail early on a misspelt lead
        if not np.isfinite(scale_to_mv) or scale_to_mv <= 0:
            raise ValueError(f"CODE-test: scale_to_mv must be a positive number, got {scale_to_mv}")
        if matched is None:
            ids, self._rows = [str(i) for i in range(len(table))], list(range(len(table)))
        else:
            ids, self._rows = matched
        super().__init__(root, split, class_names, ids, labels)
        self.scale_to_mv = float(scale_to_mv)
        self.lead_names = lead_names
        self.gold_standard_path = gold
        self._h5 = None
        self._h5_pid: Optional[int] = None
        self._warn_if_limb_leads_disagree()
        self.close()  # opened again in each process that reads

    def _check_tracings(self, table, gold: Path, rate_given: bool = False) -> Optional[tuple]:
        """Checks the array against the table. None: rows pair by position (the release, which has no exam ids);
        else (exam ids, the HDF5 row of each table row), matched by `exam_id` when both files carry it (as
        CODE-15%'s do)."""
        import h5py

        try:
            with h5py.File(self.h5_path, "r") as f:
                if "tracings" not in f:
                    raise ValueError(
                        f"CODE-test: {self.h5_path} has no dataset 'tracings' (it has: {', '.join(f.keys())})"
                    )
                if not isinstance(f["tracings"], h5py.Dataset):
                    raise ValueError(f"CODE-test: {self.h5_path}: 'tracings' is a group, not an array "
                                     "[exams, samples, 12]")
                shape, dtype = f["tracings"].shape, f["tracings"].dtype
                stored_ids = np.asarray(f["exam_id"]).ravel() if "exam_id" in f else None
        except OSError as err:
            raise ValueError(f"CODE-test: {self.h5_path} is not a readable HDF5 file ({err})") from err
        if len(shape) != 3 or shape[2] != 12:
            raise ValueError(
                f"CODE-test: {self.h5_path}: 'tracings' has shape {shape}, expected [exams, samples, 12]"
            )
        if dtype.kind not in "fiu":  # booleans or complex numbers cast to float32 would be scored as an ECG
            raise ValueError(f"CODE-test: {self.h5_path}: 'tracings' holds {dtype}, not numbers of a signal")
        if shape[1] != CODE_TEST_SAMPLES and not rate_given:  # another rate read at 400 Hz: stretched in time
            raise ValueError(f"CODE-test: {self.h5_path}: {shape[1]} samples per exam, where the release has "
                             f"{CODE_TEST_SAMPLES} at {CODE_TEST_RATE:g} Hz: pass the file's sampling_rate")
        listed = "exam_id" in table.columns
        if stored_ids is None or not listed:
            if stored_ids is not None or listed:  # one file names exams, the other cannot be checked against it
                raise ValueError(
                    f"CODE-test: {self.h5_path if listed else gold} has no exam_id but "
                    f"{gold if listed else self.h5_path} does, so its labels cannot be matched to the tracings "
                    "(pairing them by position mislabels any file in another order): give both an exam_id, or "
                    "neither, as in the release"
                )
            if shape[0] != len(table):
                raise ValueError(
                    f"CODE-test: {self.h5_path} holds {shape[0]} exams but the gold standard has {len(table)} rows"
                )
            return None
        if len(stored_ids) != shape[0]:
            raise ValueError(f"CODE-test: {self.h5_path}: 'exam_id' has {len(stored_ids)} entries for "
                             f"{shape[0]} tracings")
        where = {}
        for row, value in enumerate(stored_ids.tolist()):
            exam = _exam_id(value)
            if exam is None:
                raise ValueError(f"CODE-test: {self.h5_path}: exam_id[{row}] is {value!r}, not a whole number")
            where.setdefault(exam, []).append(row)
        rows, exams, line_of = [], [], {}
        for line, value in enumerate(table["exam_id"].tolist(), start=2):
            exam = _exam_id(value)
            if exam is None or exam in line_of:
                why = "not a whole number" if exam is None else f"listed twice (first on line {line_of[exam]})"
                raise ValueError(f"CODE-test: {gold} line {line}: exam_id {str(value)!r} is {why}")
            line_of[exam] = line
            found = where.get(exam, [])
            if len(found) != 1:
                raise ValueError(f"CODE-test: {gold} line {line}: exam_id {exam} is "
                                 f"{'not in' if not found else 'stored twice in'} {self.h5_path}")
            rows.append(found[0])
            exams.append(str(exam))
        # CODE-15%'s files end with a zero-filled exam whose id is 0; any other exam the table leaves out means the
        # two files disagree about which exams these are
        unlisted = sorted(e for e in where if e not in line_of and e != 0)
        if unlisted:
            raise ValueError(f"CODE-test: {self.h5_path} holds {len(unlisted)} exam(s) {gold} does not list (first: "
                             f"exam_id {unlisted[0]}): give the gold standard of every stored exam")
        return exams, rows

    def _warn_if_limb_leads_disagree(self, exams: int = 8) -> None:
        """The release's README gives its limb-lead order; a file in another order (the standard aVR, aVL, aVF)
        would be read under the wrong names without a word. Warn when the first exams do not obey Einthoven's and
        Goldberger's relations under `lead_names` (devices derive III, aVR, aVL, aVF from I and II)."""
        worst = []
        for index in range(min(exams, len(self))):
            signal = np.asarray(self._tracings()[self._rows[index]], dtype=np.float64).T
            if np.abs(signal).max() > 0:  # CODE-15%'s zero-filled exam says nothing
                worst.append(max(check_limb_leads(signal, self.lead_names).values()))
        if worst and float(np.median(worst)) > LIMB_RESIDUAL_WARNING:
            warnings.warn(f"CODE-test: {self.h5_path}: under lead_names {', '.join(self.lead_names[:6])}, the limb "
                          f"leads of the first {len(worst)} exams do not obey Einthoven's and Goldberger's relations "
                          f"(median worst residual {np.median(worst):.2f}; near 0 when the names are right): the "
                          "file may store its limb leads in another order; pass lead_names= with its order",
                          UserWarning, stacklevel=3)

    def _tracings(self):
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py

            self._h5 = h5py.File(self.h5_path, "r")
            self._h5_pid = os.getpid()
        return self._h5["tracings"]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_h5_pid"] = None
        return state

    def close(self) -> None:
        if self._h5 is not None:
            try:
                self._h5.close()
            finally:
                self._h5 = None

    def _source(self, index: int) -> str:
        return f"{self.h5_path} (tracings[{self._rows[index]}])"

    def record_files(self, index: int) -> list:
        return [str(self.h5_path)]

    def _read(self, index: int):
        exam = np.asarray(self._tracings()[self._rows[index]], dtype=np.float32)  # [samples, 12]
        return exam.T * np.float32(self.scale_to_mv), self.sampling_rate, list(self.lead_names)
