"""Beat and rhythm model of the main synthetic generator: Gaussian waves along a 3-D heart vector, projected on leads.

Each wave of each beat (P, septal Q, R, S, bundle-branch components, ST shift, T) is a Gaussian in time times a
3-D "heart vector" (x = patient's left, y = inferior, z = anterior). Leads I, II and V1-V6 are projections of that
vector; the other four limb leads are derived exactly (Einthoven / Goldberger):

    III = II - I,   aVR = -(I + II) / 2,   aVL = I - II / 2,   aVF = II - I / 2.

Every record gets its own heart rate, sinus arrhythmia, electrical axis, wave directions and amplitudes, electrode
placement, baseline wander and noise, and sinus records sometimes carry a premature beat (PVC or PAC), so the
classes overlap in every single number and are separable only by their morphology and rhythm. Atrial fibrillation
has irregular RR (coefficient of variation 0.13-0.45; independent beat to beat in most records, drifting in runs in
the rest, so irregularity is not one generator's RR statistics) and no P waves, with visible f waves in some records only;
atrial flutter has a sawtooth at 250-350/min conducted 2:1, 4:1 or variably. Neither cue alone separates sinus
rhythm from fibrillation: a quarter of sinus records have marked sinus arrhythmia and some have small P waves,
and a third of all records carry muscle tremor (band-limited noise local to each electrode, as large as fine f
waves but not coherent across leads), so that high-frequency activity alone does not mean fibrillation. T waves
vary about threefold in height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import CLASS_SPECS


# Directions of the eight independent leads in heart-vector space (x left, y inferior, z anterior) and their
# relative gain (the chest electrodes sit closer to the heart). V leads lie near the horizontal plane.
_V_ANGLES = np.deg2rad([115.0, 95.0, 75.0, 55.0, 30.0, 5.0])
_V_TILT = np.array([0.0, 0.0, 0.05, 0.10, 0.15, 0.20])
_V_GAIN = np.array([1.0, 1.6, 1.7, 1.5, 1.2, 0.9])


def _lead_matrix(rng: np.random.Generator) -> np.ndarray:
    """[8, 3] projection for I, II, V1..V6 with per-record electrode placement jitter on the chest leads."""
    ang = _V_ANGLES + np.deg2rad(rng.normal(0.0, 4.0, 6))
    gain = _V_GAIN * rng.uniform(0.9, 1.1, 6)
    chest = np.stack([np.cos(ang), _V_TILT, np.sin(ang)], axis=1) * gain[:, None]
    limb = np.array([[1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]])
    return np.concatenate([limb, chest], axis=0)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _rotation(frontal_deg: float, horizontal_deg: float) -> np.ndarray:
    """Rotate heart vectors: `frontal` about the anterior axis (shifts the limb-lead axis, + = rightward/inferior)
    and `horizontal` about the vertical axis (shifts the chest-lead transition)."""
    a, b = np.deg2rad(frontal_deg), np.deg2rad(horizontal_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[np.cos(b), 0.0, -np.sin(b)], [0.0, 1.0, 0.0], [np.sin(b), 0.0, np.cos(b)]])
    return ry @ rz


def _jitter(vectors: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    """Turn each row vector by a small random angle (per-record beat morphology); lengths are kept."""
    out = vectors + rng.normal(0.0, np.deg2rad(degrees), vectors.shape) * np.linalg.norm(vectors, axis=-1,
                                                                                         keepdims=True)
    return out * (np.linalg.norm(vectors, axis=-1, keepdims=True) / np.linalg.norm(out, axis=-1, keepdims=True))


# Heart-rate range (bpm) and rhythm of each class; classes without an entry are sinus at 55-95 bpm.
_HR_RANGE = {"NORM": (60, 100), "SBRAD": (38, 57), "STACH": (103, 150), "AFIB": (60, 140), "LVH": (55, 95)}
_SINUS = frozenset(CLASS_SPECS) - {"AFIB", "AFLT"}
ECTOPIC_PROBABILITY = 0.12  # share of sinus records with one or two premature beats


@dataclass
class SyntheticECG:
    signal: np.ndarray  # [12, samples] float32 mV, STANDARD_LEADS order
    label: str
    info: dict  # the generating parameters: hr, rr_ms, pr_ms, qrs_ms, qt_ms, axes, beat times, ectopic beats


def _qrs_components(label: str, rng: np.random.Generator):
    """(offsets s relative to the beat fiducial, sigmas s, vectors [k,3] mV) of the ventricular depolarisation."""
    if label == "CRBBB":
        stretch = rng.uniform(0.92, 1.1)
        offs = np.array([-0.030, 0.0, 0.050]) * stretch
        sig = np.array([0.010, 0.013, 0.019]) * stretch
        vec = np.stack(
            [
                _unit([-0.30, 0.10, 0.60]) * rng.uniform(0.25, 0.4),  # septal: r in V1, q in I/V6
                _unit([0.70, 0.55, -0.35]) * rng.uniform(0.9, 1.3),  # LV: S in V1, R in V6
                _unit([-0.60, 0.05, 0.80]) * rng.uniform(0.6, 0.95),  # late RV: R' in V1, broad S in I/V6
            ]
        )
    elif label == "CLBBB":
        stretch = rng.uniform(0.92, 1.1)
        offs = np.array([-0.030, 0.030]) * stretch
        sig = np.array([0.017, 0.019]) * stretch
        vec = np.stack(
            [
                _unit([0.60, 0.20, -0.50]) * rng.uniform(0.8, 1.1),  # no septal q; both humps leftward-posterior
                _unit([0.75, 0.15, -0.55]) * rng.uniform(0.95, 1.35),  # -> notched broad R in I/V6, QS in V1
            ]
        )
    else:
        stretch = rng.uniform(0.85, 1.08)
        r_amp = rng.uniform(0.9, 1.5) * (rng.uniform(1.8, 2.4) if label == "LVH" else 1.0)
        offs = np.array([-0.022, 0.0, 0.025]) * stretch
        sig = np.array([0.008, 0.011, 0.010]) * stretch
        vec = np.stack(
            [
                _unit([-0.35, 0.10, 0.60]) * rng.uniform(0.15, 0.3),  # septal q
                _unit([0.70, 0.55, -0.15]) * r_amp,  # main R
                _unit([-0.30, -0.40, -0.60]) * rng.uniform(0.3, 0.6) * (1.6 if label == "LVH" else 1.0),  # S
            ]
        )
    return offs, sig, vec

def _rhythm(label: str, rng: np.random.Generator, duration: float):
    """Beat times (s, the first before 0), RR intervals, the preceding RR of each beat, a PVC mask, a PAC mask,
    the flutter cycle length (s) and its AV conduction ("2:1", "4:1" or "variable"), both None unless AFLT."""
    lo, hi = _HR_RANGE.get(label, (55, 95))
    rr0 = 60.0 / rng.uniform(lo, hi)
    flutter = conduction = None
    if label == "AFLT":
        flutter = 60.0 / rng.uniform(250.0, 350.0)
        mode = rng.random()
        n = int(duration / (2 * flutter)) + 8
        if mode < 0.55:
            ratio, conduction = np.full(n, 2), "2:1"
        elif mode < 0.8:
            ratio, conduction = np.full(n, 4), "4:1"
        else:  # variable block: irregular, but in whole flutter cycles
            ratio, conduction = rng.choice([2, 3, 4], n, p=[0.5, 0.2, 0.3]), "variable"
        rr = ratio * flutter
        rr0 = float(rr[0])
    elif label == "AFIB":
        n = int((duration + 2.0) / (rr0 * 0.6)) + 4
        cv = rng.uniform(0.13, 0.45)
        if rng.random() < 0.6:  # independent intervals, as AV-node conduction of random atrial impulses gives
            rr = rr0 * rng.gamma(cv**-2, cv**2, n)
        else:  # intervals that drift in runs: irregular RR need not be independent beat to beat
            phi = rng.uniform(0.3, 0.85)
            x = np.empty(n)
            x[0] = rng.normal()
            for j in range(1, n):
                x[j] = phi * x[j - 1] + np.sqrt(1.0 - phi * phi) * rng.normal()
            rr = rr0 * np.exp(cv * x - cv * cv / 2.0)
        rr = np.clip(rr, 0.28, 2.2)
    else:
        n = int((duration + 2.0) / (rr0 * 0.6)) + 4
        # respiratory sinus arrhythmia, marked in a quarter of the records (as in the young)
        rsa = rng.uniform(0.0, 0.05) if rng.random() < 0.75 else rng.uniform(0.05, 0.15)
        f_resp = rng.uniform(0.15, 0.35)
        beat_phase = 2 * np.pi * f_resp * rr0 * np.arange(n) + rng.uniform(0, 2 * np.pi)
        rr = rr0 * (1.0 + rsa * np.sin(beat_phase) + rng.normal(0.0, 0.012, n))
    times = -rng.uniform(0.2, 1.0) * rr0 + np.cumsum(rr)
    pvc = np.zeros(len(times), dtype=bool)
    pac = np.zeros(len(times), dtype=bool)
    if label in _SINUS and rng.random() < ECTOPIC_PROBABILITY:
        inside = np.nonzero((times > 1.0) & (times < duration - 1.5))[0]
        for j in rng.choice(inside, min(len(inside), int(rng.integers(1, 3))), replace=False):
            if pvc[j - 1 : j + 2].any() or pac[j - 1 : j + 2].any():
                continue
            early = rng.uniform(0.25, 0.4) * rr[j - 1]
            if rng.random() < 0.5:  # PVC: the sinus node is not reset, so a full compensatory pause follows
                pvc[j] = True
                times[j] -= early
            else:  # PAC: the sinus node is reset, the following beats move earlier too
                pac[j] = True
                times[j:] -= early * rng.uniform(0.6, 0.9)
                times[j] -= early * 0.25
    keep = times < duration + 0.8
    times, pvc, pac = times[keep], pvc[keep], pac[keep]
    rr = np.diff(times, prepend=times[0] - rr0)
    rr_prev = np.concatenate([[rr[0]], rr[:-1]])
    return times, rr, rr_prev, pvc, pac, flutter, conduction


def _pvc_components(rng: np.random.Generator):
    """A ventricular ectopic beat: wide bizarre QRS (two broad humps) and a large discordant T."""
    qrs_dir = _unit(rng.normal(0.0, 1.0, 3))
    vec = np.stack([qrs_dir * rng.uniform(1.2, 2.0), _jitter(qrs_dir[None], rng, 35.0)[0] * rng.uniform(0.6, 1.2)])
    offs = np.array([-0.02, 0.035])
    sig = np.array([0.02, 0.022])
    t_vec = -qrs_dir * rng.uniform(0.3, 0.5)
    return offs, sig, vec, t_vec


def synthesize(label: str, rng: np.random.Generator, sampling_rate: int = 500, duration: float = 10.0) -> SyntheticECG:
    """Generate one record of class `label`; see the module docstring for the model."""
    if label not in CLASS_SPECS:
        raise ValueError(f"unknown class {label!r}; supported: {', '.join(CLASS_SPECS)}")
    fs = float(sampling_rate)
    n = int(round(duration * fs))
    t = np.arange(n) / fs
    atrial_sinus = label not in ("AFIB", "AFLT")

    times, rr, rr_prev, pvc, pac, flutter, conduction = _rhythm(label, rng, duration)
    nb = len(times)

    # --- waves of one beat ------------------------------------------------------------------------------------
    rot = _rotation(
        rng.normal(-15.0 if label == "CLBBB" else 0.0, 18.0), rng.normal(0.0, 10.0)
    )
    scale = float(np.exp(rng.normal(np.log(1.4), 0.3)))  # healthy voltages vary ~2x; some meet LVH voltage criteria
    q_off, q_sig, q_vec = _qrs_components(label, rng)
    q_vec = _jitter(q_vec, rng, 6.0)
    qrs_on = float(np.min(q_off - 2.5 * q_sig))
    qrs_end = float(np.max(q_off + 2.5 * q_sig))

    qtc = rng.uniform(0.37, 0.43)
    t_sig = rng.uniform(0.035, 0.05)
    qt = qtc * np.sqrt(rr_prev)  # per beat
    t_center = qrs_on + qt - 2.5 * t_sig
    if label in ("CLBBB", "CRBBB"):
        terminal = q_vec[-1]
        t_vec = -_unit(terminal) * rng.uniform(0.2, 0.4)  # secondary (discordant) repolarisation
    else:
        t_vec = _jitter(_unit([0.55, 0.55, 0.25])[None], rng, 12.0)[0] * rng.uniform(0.2, 0.65)
        if label == "STD_":
            t_vec = t_vec * rng.uniform(0.2, 0.6)  # flattened T
        if label == "LVH":
            t_vec = _unit([-0.6, -0.2, 0.3]) * rng.uniform(0.15, 0.3)  # strain pattern

    comps_off = [q_off]
    comps_sig = [q_sig]
    comps_vec = [q_vec]

    st_vec = None
    if label == "STD_":  # depression in I, II, aVL, aVF?, V4-V6 (reciprocal rise in aVR/V1)
        st_vec = _unit([-0.65, -0.45, -0.05]) * rng.uniform(0.3, 0.5)
    elif label == "STE_":  # anterior or inferior injury current
        st_vec = (
            _unit([-0.05, 0.10, 0.95]) * rng.uniform(0.25, 0.4)
            if rng.random() < 0.6
            else _unit([0.0, 0.95, 0.15]) * rng.uniform(0.35, 0.5)
        )
    elif label == "CLBBB":
        st_vec = -_unit(q_vec[-1]) * rng.uniform(0.1, 0.2)
    if st_vec is not None:
        st_sig = rng.uniform(0.04, 0.05)
        comps_off.append(np.array([qrs_end + 0.07]))
        comps_sig.append(np.array([st_sig]))
        comps_vec.append(st_vec[None, :])

    p_sig = rng.uniform(0.018, 0.026)
    pr = rng.uniform(0.22, 0.34) if label == "1AVB" else rng.uniform(0.12, 0.19)
    p_center = qrs_on - pr + 2.5 * p_sig
    p_vec = _jitter(_unit([0.55, 0.75, 0.30])[None], rng, 10.0)[0] * rng.uniform(0.04, 0.22)  # some P waves small

    fixed_off = np.concatenate(comps_off)
    fixed_sig = np.concatenate(comps_sig)
    fixed_vec = np.concatenate(comps_vec, axis=0)

    # all Gaussians of the record: the fixed components of every supraventricular beat, P waves of the sinus
    # beats (a PAC's P comes from elsewhere in the atria), T waves (offset per beat), and the PVCs' own waves
    beat_amp = 1.0 + rng.normal(0.0, 0.03, nb)  # small beat-to-beat amplitude variation
    sv = ~pvc
    centers = [(times[sv, None] + fixed_off[None, :]).ravel(), times[sv] + t_center[sv]]
    sigmas = [np.tile(fixed_sig, int(sv.sum())), np.full(int(sv.sum()), t_sig)]
    vectors = [(fixed_vec[None] * beat_amp[sv, None, None]).reshape(-1, 3), t_vec[None] * beat_amp[sv, None]]
    if atrial_sinus:
        sinus_p = sv & ~pac
        centers.append(times[sinus_p] + p_center)
        sigmas.append(np.full(int(sinus_p.sum()), p_sig))
        vectors.append(np.repeat(p_vec[None], int(sinus_p.sum()), axis=0))
        if pac.any():
            pac_vec = _unit([0.2, -0.7, 0.3]) * np.linalg.norm(p_vec)  # low-atrial focus: inverted P in II
            centers.append(times[pac] + p_center + 0.02)
            sigmas.append(np.full(int(pac.sum()), p_sig))
            vectors.append(np.repeat(pac_vec[None], int(pac.sum()), axis=0))
    if pvc.any():
        v_off, v_sig, v_vec, v_t = _pvc_components(rng)
        k = int(pvc.sum())
        centers += [(times[pvc, None] + v_off[None]).ravel(), times[pvc] + 0.32]
        sigmas += [np.tile(v_sig, k), np.full(k, 0.06)]
        vectors += [np.tile(v_vec, (k, 1)), np.repeat(v_t[None], k, axis=0)]
    vectors = np.concatenate(vectors) @ rot.T * scale
    heart = _sum_gaussians(np.concatenate(centers), np.concatenate(sigmas), vectors, n, fs)  # [3, n]

    f_amp = 0.0
    if label == "AFIB" and rng.random() < 0.6:  # coarse f waves (4-9 Hz, wandering amplitude); otherwise fine AF
        f_amp = rng.uniform(0.02, 0.08)
        freqs = rng.uniform(4.0, 9.0, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        fw = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None]).sum(0) / 1.7
        fw *= 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 2 * np.pi))
        heart += np.outer(rot @ _unit([0.30, 0.55, 0.80]), fw * f_amp)
    if flutter is not None:  # typical flutter: slow fall and quick rise, negative sawtooth in the inferior leads
        f_amp = rng.uniform(0.1, 0.2)
        phase = ((t - times[0] - p_center) / flutter) % 1.0
        saw = np.where(phase < 0.8, 1.0 - 2.0 * phase / 0.8, -1.0 + 2.0 * (phase - 0.8) / 0.2)
        saw = np.convolve(saw, np.ones(max(1, int(0.02 * fs))) / max(1, int(0.02 * fs)), "same")
        heart += np.outer(rot @ _unit([0.25, 0.9, 0.35]), saw * f_amp)

    # --- leads, wander, noise (on the eight independent leads; the other four are derived) -----------------
    lead_mat = _lead_matrix(rng)
    leads = lead_mat @ heart  # [8, n]
    wander = np.zeros((3, n))
    for _ in range(2):
        wander += np.outer(rng.normal(0.0, 1.0, 3), np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3)))
    leads += (lead_mat @ wander) * rng.uniform(0.0, 0.08)
    leads += rng.normal(0.0, 0.05, (8, 1)) + np.outer(rng.normal(0.0, 0.02, 8), t / duration)  # offsets, drift
    leads += rng.normal(0.0, rng.uniform(0.004, 0.02), (8, n))
    if rng.random() < 0.35:  # muscle tremor: band-limited noise local to each electrode, unlike f waves
        width = int(rng.integers(max(1, int(0.004 * fs)), max(2, int(0.025 * fs)) + 1))
        emg = np.apply_along_axis(np.convolve, 1, rng.normal(0.0, 1.0, (8, n)), np.ones(width) / width, "same")
        emg *= rng.uniform(0.005, 0.04) / (emg.std(axis=1, keepdims=True) + 1e-12)
        leads += emg * (rng.random((8, 1)) < 0.7)
    mains = rng.choice([50.0, 60.0])
    leads += np.outer(rng.uniform(0.0, 0.015, 8), np.sin(2 * np.pi * mains * t + rng.uniform(0, 6.3)))

    leads = leads.astype(np.float32)
    i, ii = leads[0], leads[1]
    out = np.empty((12, n), dtype=np.float32)
    out[0], out[1] = i, ii
    out[2] = ii - i
    out[3] = -(i + ii) / np.float32(2)
    out[4] = i - ii / np.float32(2)
    out[5] = ii - i / np.float32(2)
    out[6:] = leads[2:]

    frontal = lambda v: float(np.degrees(np.arctan2(v[1], v[0])))  # noqa: E731 (ECG convention: +90 = inferior)
    qrs_vec = (q_vec * (q_sig[:, None] / q_sig.max())).sum(0) @ rot.T
    inside = (times >= 0) & (times < duration)
    beats_rr = rr[(times > 0) & (times < duration)]
    info = {
        "label": label,
        "hr": 60.0 / float(np.mean(beats_rr)) if len(beats_rr) else 60.0 / float(np.mean(rr)),
        "rr_ms": float(np.mean(rr) * 1000),
        "pr_ms": float(pr * 1000) if atrial_sinus else None,
        "p_ms": float(5 * p_sig * 1000) if atrial_sinus else None,
        "qrs_ms": float((qrs_end - qrs_on) * 1000),
        "qt_ms": float(qtc * np.sqrt(np.mean(rr)) * 1000),
        "p_axis": frontal(rot @ p_vec) if atrial_sinus else None,
        "qrs_axis": frontal(qrs_vec),
        "t_axis": frontal(rot @ t_vec),
        "conduction": conduction,  # flutter's AV conduction; None but for AFLT
        "atrial_wave_mv": float(f_amp),  # f/F-wave amplitude; 0 for sinus rhythm and for fine AF
        "beat_times": times[inside],
        "pvc_times": times[inside & pvc],
        "pac_times": times[inside & pac],
    }
    return SyntheticECG(out, label, info)


def _sum_gaussians(centers, sigmas, vectors, n: int, fs: float) -> np.ndarray:
    """sum_j vectors[j] * exp(-(t - centers[j])^2 / (2 sigmas[j]^2)), each evaluated on a +-4.5 sigma window."""
    half = int(np.ceil(4.5 * float(sigmas.max()) * fs))
    offs = np.arange(-half, half + 1)
    c = np.rint(centers * fs).astype(np.int64)
    idx = c[:, None] + offs[None, :]
    g = np.exp(-0.5 * ((idx / fs - centers[:, None]) / sigmas[:, None]) ** 2)
    valid = (idx >= 0) & (idx < n)
    flat = idx[valid]
    gv = g[valid]
    rows = np.nonzero(valid)[0]
    out = np.empty((3, n))
    for d in range(3):
        out[d] = np.bincount(flat, weights=gv * vectors[rows, d], minlength=n)
    return out


def generate_ecg(label: str, rng: np.random.Generator, sampling_rate: int = 500, duration: float = 10.0) -> np.ndarray:
    """One synthetic 12-lead ECG of class `label`: [12, samples] float32 millivolts, leads in STANDARD_LEADS order
    (I, II, III, aVR, aVL, aVF, V1-V6)."""
    return synthesize(label, rng, sampling_rate, duration).signal

