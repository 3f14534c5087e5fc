"""A machine-read measurement line for a synthetic record, in words: what a cart's interpretation prints.

Real reports (MIMIC-IV-ECG's machine statements, PTB-XL's) name the finding; a morphology line describes what the
tracing shows (rate, regularity, P waves, PR, QRS width and voltage, axis) for every record, so findings share
words with the conditions that have them. A class the corpus never names (LVH: increased voltage, left axis) can
then be described by a prompt made of words the corpus did teach. Rate, regularity and voltage are measured on
the signal; PR, QRS and axis are the generator's own values (what a cart's fiducial points would give).
"""

from __future__ import annotations

from typing import Dict

import numpy as np

SOKOLOW_LYON_MV = 3.5  # S(V1) + max(R(V5), R(V6)) at or above this: voltage criteria of left ventricular hypertrophy
LOW_VOLTAGE_MV = 0.5  # the largest limb-lead QRS peak-to-peak below this: low voltage
IRREGULAR_RR_CV = 0.12  # coefficient of variation of the RR intervals between conducted beats
_V1, _V5, _V6 = 6, 10, 11  # rows in STANDARD_LEADS order


def measure(signal: np.ndarray, info: dict, sampling_rate: int = 500) -> Dict[str, float]:
    """Rate, RR variation, Sokolow-Lyon voltage and the largest limb-lead QRS amplitude of one record."""
    x = signal - np.median(signal, axis=1, keepdims=True)  # the isoelectric line is the commonest level
    ectopic = set(np.round(np.concatenate([info["pvc_times"], info["pac_times"]]), 6))
    beats = np.asarray(info["beat_times"], dtype=np.float64)
    conducted = np.array([round(t, 6) not in ectopic for t in beats], dtype=bool)
    half = int(0.06 * sampling_rate)
    centre = np.rint(beats * sampling_rate).astype(int)
    inside = conducted & (centre - half >= 0) & (centre + half < x.shape[1])
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
        "limb_qrs_mv": float(np.max((r + s)[:6])),
    }


def measurement_statement(signal: np.ndarray, info: dict, sampling_rate: int = 500) -> str:
    """The record's measurement line, e.g. "ventricular rate 72 bpm, regular. p waves before every qrs. pr interval
    164 ms. qrs duration 92 ms. normal qrs voltage. normal axis." (lower case, sentences joined by ". ")."""
    m = measure(signal, info, sampling_rate)
    parts = [f"ventricular rate {int(round(m['rate_bpm']))} bpm, "
             + ("irregular" if m["rr_cv"] >= IRREGULAR_RR_CV else "regular")]
    if info.get("pr_ms") is None:
        parts.append("no p waves")
    else:
        pr = int(round(info["pr_ms"]))
        parts += ["p waves before every qrs", f"pr interval {pr} ms" + (", prolonged" if pr > 200 else "")]
    qrs = int(round(info["qrs_ms"]))
    parts.append(f"qrs duration {qrs} ms" + (", wide" if qrs >= 120 else ""))
    if m["sokolow_lyon_mv"] >= SOKOLOW_LYON_MV:
        parts.append("increased qrs voltage")
    elif m["limb_qrs_mv"] < LOW_VOLTAGE_MV:
        parts.append("low qrs voltage in the limb leads")
    else:
        parts.append("normal qrs voltage")
    axis = info["qrs_axis"]
    parts.append("left axis deviation" if axis < -30 else "right axis deviation" if axis > 90 else "normal axis")
    return ". ".join(parts) + "."
