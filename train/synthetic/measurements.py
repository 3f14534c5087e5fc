"""Measurements of a synthetic record in words, as a cart's interpretation adds them to its statement (optional).

Real reports (MIMIC-IV-ECG's machine statements, PTB-XL's) name the finding; these sentences say what the tracing
shows (rhythm regularity, P waves, PR, QRS width and voltage, axis), so findings share words with every condition
that has them, and a class the corpus never names might be reached by a prompt made of words it did teach.
QRS voltage is measured on the signal; rate and regularity come from the generator's beat times (premature
beats left out), PR, QRS width and axis from its parameters (what a cart's fiducial points would give). Off by
default: see README, "Classes the corpus never names", for what it did on the demo.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

SOKOLOW_LYON_MV = 3.5  # S(V1) + max(R(V5), R(V6)) at or above this: voltage criteria of left ventricular hypertrophy
LIMB_LVH_AVL_MV = 1.1  # R in aVL at or above this, or
LIMB_LVH_I_III_MV = 2.5  # R in I + S in III at or above this: limb-lead voltage criteria of LVH (Gubner-Ungerleider)
LOW_VOLTAGE_MV = 0.5  # the largest limb-lead QRS peak-to-peak below this: low voltage
IRREGULAR_RR_CV = 0.12  # coefficient of variation of the RR intervals between conducted beats
_I, _III, _AVL, _V1, _V5, _V6 = 0, 2, 4, 6, 10, 11  # rows in STANDARD_LEADS order
MEASUREMENT_DETAILS = ("none", "abnormal", "all")  # what the layouts' `measurements` option may ask for


def measure(signal: np.ndarray, info: dict, sampling_rate: int = 500) -> Dict[str, float]:
    """Rate, RR variation, Sokolow-Lyon voltage, the limb-lead LVH voltages and the largest limb-lead QRS amplitude
    of one record."""
    x = signal - np.median(signal, axis=1, keepdims=True)  # the isoelectric line is the commonest level
    beats = np.asarray(info["beat_times"], dtype=np.float64)
    # the premature beats' times are entries of beat_times itself, so exact comparison finds them
    conducted = ~np.isin(beats, np.concatenate([info["pvc_times"], info["pac_times"]]))
    half = int(0.06 * sampling_rate)
    centre = np.rint(beats * sampling_rate).astype(int)
    inside = conducted & (centre - half >= 0) & (centre + half < x.shape[1])
    if inside.sum() < 2:
        raise ValueError(f"a record with {int(inside.sum())} conducted beat(s) inside its {x.shape[1]} samples has "
                         "no rate or QRS voltage to describe; records need at least two")
    windows = np.stack([x[:, c - half : c + half] for c in centre[inside]])  # [beats, 12, samples]
    r = np.median(windows.max(axis=2), axis=0)
    s = np.median(-windows.min(axis=2), axis=0)
    # RR between two conducted beats only: a premature beat is not an irregular rhythm
    pairs = conducted[1:] & conducted[:-1]
    rr = np.diff(beats)[pairs]
    return {
        "rate_bpm": 60.0 / float(np.mean(np.diff(beats))),
        "rr_cv": float(np.std(rr) / np.mean(rr)) if len(rr) > 1 else 0.0,
        "sokolow_lyon_mv": float(s[_V1] + max(r[_V5], r[_V6])),
        "r_avl_mv": float(r[_AVL]),
        "r_i_s_iii_mv": float(r[_I] + s[_III]),
        "limb_qrs_mv": float(np.max((r + s)[:6])),
    }


def measurement_statement(signal: np.ndarray, info: dict, sampling_rate: int = 500, detail: str = "abnormal") -> str:
    """The record's measurements in words, no numbers (numbers would make every report unique to a sentence
    encoder). `detail="abnormal"`: only what is abnormal, as a cart adds it ("" for a normal tracing), e.g.
    "prolonged pr interval. increased qrs voltage."; `"all"`: every measurement, normal ones included, e.g.
    "regular ventricular rhythm at a normal rate. p waves before every qrs. normal pr interval. narrow qrs.
    normal qrs voltage. normal axis."."""
    if detail not in MEASUREMENT_DETAILS[1:]:
        raise ValueError(f"detail must be one of {MEASUREMENT_DETAILS[1:]}, got {detail!r}")
    m = measure(signal, info, sampling_rate)
    irregular = m["rr_cv"] >= IRREGULAR_RR_CV
    if detail == "all":
        rate = "slow" if m["rate_bpm"] < 60 else "fast" if m["rate_bpm"] > 100 else "normal"
        rhythm = f"{'irregular' if irregular else 'regular'} ventricular rhythm at a {rate} rate"
    else:
        rhythm = "irregular ventricular rhythm"
    found = [(rhythm, irregular)]  # (words, abnormal) in report order; "abnormal" keeps the abnormal ones only
    if info.get("pr_ms") is None:
        found.append(("no p waves", True))
    else:
        # a premature ventricular beat has no P wave of its own
        found.append(("p waves before every conducted qrs" if len(info["pvc_times"]) else "p waves before every qrs",
                      False))
        found.append(("prolonged pr interval", True) if info["pr_ms"] > 200 else ("normal pr interval", False))
    found.append(("wide qrs", True) if info["qrs_ms"] >= 120 else ("narrow qrs", False))
    if m["sokolow_lyon_mv"] >= SOKOLOW_LYON_MV:
        found.append(("increased qrs voltage", True))
    elif m["limb_qrs_mv"] < LOW_VOLTAGE_MV:
        found.append(("low qrs voltage in the limb leads", True))
    else:
        found.append(("normal qrs voltage", False))
    if info["qrs_axis"] < -30:
        found.append(("left axis deviation", True))
    elif info["qrs_axis"] > 90:
        found.append(("right axis deviation", True))
    else:
        found.append(("normal axis", False))
    parts = [words for words, abnormal in found if abnormal or detail == "all"]
    return ". ".join(parts) + "." if parts else ""
