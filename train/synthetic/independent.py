"""A second synthetic 12-lead ECG generator of independent design, for EVALUATION only (a rhythm test set).

It shares no signal code with `cardiac` (the training corpus's generator), so a model that learned that generator's
fingerprint rather than physiology will not score well here. Its design differs at every step:

- beats: McSharry et al.'s dynamical model (IEEE TBME 50:289, 2003) in three orthogonal (Frank X, Y, Z) channels as
  in Sameni et al.'s multichannel extension (EURASIP JASP 2007): each channel follows
  dz/dt = -sum_i a_i * dtheta_i * omega * exp(-dtheta_i^2 / 2 b_i^2) - (z - z0), with waves P, Q, R, S, T placed in
  the PHASE of a limit cycle (not in time) and z0 the respiratory baseline; integrated in closed form per sample
  (the driving term is the time derivative of sum_i a_i b_i^2 exp(...), the damping a one-pole filter);
- leads: Dower's inverse transform from Frank X, Y, Z to I, II, V1-V6 (Dower et al., J Electrocardiol 1980);
  III, aVR, aVL, aVF by Einthoven / Goldberger;
- RR: sinus from McSharry's bimodal spectrum (Mayer waves near 0.1 Hz, respiratory sinus arrhythmia near 0.25 Hz);
  atrial fibrillation from an AV node that conducts random atrial impulses after a random refractory time; flutter
  from whole flutter cycles (2:1, 3:1, 4:1 or variable conduction);
- atrial activity: AF with or without visible f waves (a frequency-modulated 4-9 Hz oscillation); flutter waves as
  a band-limited sawtooth (six Fourier harmonics);
- noise: pink (1/f) noise, EMG bursts (high-passed white noise under smooth envelopes), electrode-motion steps
  with exponential recovery, mains hum.

Classes: NORM (sinus rhythm 60-100 bpm), SBRAD (< 60), STACH (> 100), AFIB, AFLT. The PTB-XL layout it writes
(`python -m train.synthetic.independent`) gives these as the rhythm task's SR, SBRAD, STACH, AFIB, AFLT.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.signal import lfilter

from .classes import CLASS_SPECS
from .layouts import SYNTHETIC_NOTICE, new_synthetic_folder, readme_text, write_ptbxl_folder
from .reports import template_report

INDEPENDENT_CLASSES = ("NORM", "SBRAD", "STACH", "AFIB", "AFLT")
_HR = {"NORM": (62.0, 98.0), "SBRAD": (40.0, 57.0), "STACH": (104.0, 155.0), "AFIB": (65.0, 150.0)}

# Dower's inverse matrix: rows I, II, V1..V6; columns Frank X (left), Y (foot), Z (back).
DOWER = np.array([
    [0.632, -0.235, 0.059],
    [0.235, 1.066, -0.132],
    [-0.515, 0.157, -0.917],
    [0.044, 0.164, -1.387],
    [0.882, 0.098, -1.277],
    [1.213, 0.127, -0.601],
    [1.125, 0.127, -0.086],
    [0.831, 0.076, 0.230],
])

# Waves P, Q, R, S, T: centre and width (s) relative to R at 60 bpm, and peak (mV) in Frank X, Y, Z. They become
# phases and phase widths of the limit cycle through the record's mean RR (McSharry scale them by heart rate too).
_CENTRE = np.array([-0.17, -0.026, 0.0, 0.026, 0.27])
_WIDTH = np.array([0.022, 0.009, 0.010, 0.010, 0.045])
_PEAK = np.array([
    [0.08, 0.12, -0.03],   # P: leftward, inferior
    [-0.12, 0.02, -0.25],  # Q: septum, rightward and anterior
    [1.1, 0.6, 0.5],       # R: left ventricle, leftward, inferior, posterior
    [-0.25, -0.3, 0.3],    # S: basal, rightward and superior
    [0.3, 0.25, -0.2],     # T
])


def _sinus_rr(rng: np.random.Generator, mean_rr: float, n: int) -> np.ndarray:
    """n RR intervals (s) from McSharry's bimodal spectrum, sampled once per mean beat."""
    f = np.fft.rfftfreq(4 * n, d=mean_rr)
    lf_hf = rng.uniform(0.5, 2.0)
    spectrum = lf_hf * np.exp(-0.5 * ((f - rng.uniform(0.08, 0.12)) / 0.01) ** 2) \
        + np.exp(-0.5 * ((f - rng.uniform(0.2, 0.35)) / 0.01) ** 2)
    series = np.fft.irfft(np.sqrt(spectrum) * np.exp(2j * np.pi * rng.random(len(f))), 4 * n)[:n]
    series = (series - series.mean()) / (series.std() + 1e-12)
    return mean_rr * (1.0 + rng.uniform(0.01, 0.045) * series)


def _af_rr(rng: np.random.Generator, mean_rr: float, duration: float) -> np.ndarray:
    """AV node in AF: atrial impulses at 350-600/min (Poisson); one is conducted when the node has recovered from
    the previous conduction (a refractory time drawn per beat)."""
    rate = rng.uniform(6.0, 10.0)
    impulses = np.cumsum(rng.exponential(1.0 / rate, int(rate * (duration + 6.0) * 1.5)))
    refractory = 0.75 * mean_rr
    out, last = [], 0.0
    for t in impulses:
        if t - last >= refractory * rng.uniform(0.7, 1.3):
            out.append(t - last)
            last = t
    return np.asarray(out[1:])


def _rhythm(label: str, rng: np.random.Generator, duration: float):
    """R-peak times (s, from before 0 to after the end) and the flutter cycle (s) for AFLT."""
    cycle = None
    if label == "AFLT":
        cycle = 60.0 / rng.uniform(240.0, 340.0)
        n = int(duration / (2 * cycle)) + 8
        pattern = rng.integers(4)
        ratio = (np.full(n, 2), np.full(n, 4), np.full(n, 3), rng.choice([2, 4], n))[pattern]
        rr = ratio * cycle
    elif label == "AFIB":
        rr = _af_rr(rng, 60.0 / rng.uniform(*_HR[label]), duration)
    else:
        mean_rr = 60.0 / rng.uniform(*_HR[label])
        rr = _sinus_rr(rng, mean_rr, int((duration + 4.0) / mean_rr) + 4)
    times = np.cumsum(rr) - rng.uniform(1.0, 2.0) * rr[0]
    return times[times < duration + 2.0], cycle


def _phase(t: np.ndarray, times: np.ndarray, mean_rr: float) -> np.ndarray:
    """Limit-cycle phase (2 pi per beat, R at multiples of 2 pi). Around each R it runs at the record's mean rate so
    that QRS and T keep their duration on short and long beats; the rest of each cycle absorbs the RR change."""
    rr_next = np.diff(times, append=times[-1] + mean_rr)
    room = np.minimum(1.0, 0.9 * rr_next / (0.6 * mean_rr))
    after, before = 0.45 * mean_rr * room, 0.25 * mean_rr * np.concatenate([[1.0], room[:-1]])
    k = 2 * np.pi * np.arange(len(times))
    knots_t = np.stack([times - before, times, times + after], axis=1).ravel()
    knots_p = np.stack([k - 2 * np.pi * before / mean_rr, k, k + 2 * np.pi * after / mean_rr], axis=1).ravel()
    return np.interp(t, knots_t, knots_p)


def _pink(rng: np.random.Generator, shape, fs: float) -> np.ndarray:
    """Unit-variance 1/f noise (0.05 Hz up) along the last axis."""
    n = shape[-1]
    f = np.fft.rfftfreq(n, 1.0 / fs)
    spec = (rng.normal(size=shape[:-1] + (len(f),)) + 1j * rng.normal(size=shape[:-1] + (len(f),)))
    spec /= np.sqrt(np.maximum(f, 0.05))
    x = np.fft.irfft(spec, n)
    return x / x.std(axis=-1, keepdims=True)


def _noise(rng: np.random.Generator, n_leads: int, t: np.ndarray, fs: float) -> np.ndarray:
    n = len(t)
    out = _pink(rng, (n_leads, n), fs) * rng.uniform(0.005, 0.03, (n_leads, 1))
    # EMG: broadband muscle noise above 20 Hz in bursts with raised-cosine envelopes
    white = rng.normal(size=(n_leads, n))
    spec = np.fft.rfft(white, axis=-1)
    spec[:, np.fft.rfftfreq(n, 1.0 / fs) < 20.0] = 0.0
    emg = np.fft.irfft(spec, n, axis=-1)
    envelope = np.zeros(n)
    for _ in range(int(rng.integers(0, 4))):
        centre, width = rng.uniform(0, t[-1]), rng.uniform(0.3, 1.5)
        inside = np.abs(t - centre) < width / 2
        envelope[inside] += 0.5 * (1 + np.cos(2 * np.pi * (t[inside] - centre) / width))
    out += emg * envelope * rng.uniform(0.0, 0.08, (n_leads, 1))
    # electrode motion: a step that decays back over a fraction of a second, on one lead
    for _ in range(int(rng.integers(0, 3))):
        lead, start = int(rng.integers(n_leads)), rng.uniform(0, t[-1])
        after = t >= start
        out[lead, after] += rng.normal(0.0, 0.3) * np.exp(-(t[after] - start) / rng.uniform(0.2, 0.8))
    out += np.outer(rng.uniform(0.0, 0.02, n_leads), np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t))
    return out


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Random heart orientation: frontal-plane axis and horizontal rotation (Frank coordinates)."""
    a, b = np.deg2rad(rng.normal(0.0, 20.0)), np.deg2rad(rng.normal(0.0, 12.0))
    frontal = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    horizontal = np.array([[np.cos(b), 0.0, np.sin(b)], [0.0, 1.0, 0.0], [-np.sin(b), 0.0, np.cos(b)]])
    return horizontal @ frontal


def independent_ecg(label: str, rng: np.random.Generator, sampling_rate: int = 500,
                    duration: float = 10.0) -> np.ndarray:
    """One record of class `label` (INDEPENDENT_CLASSES): [12, samples] float32 mV, leads I, II, III, aVR, aVL,
    aVF, V1-V6."""
    if label not in INDEPENDENT_CLASSES:
        raise ValueError(f"unknown class {label!r} for the independent generator; supported: "
                         f"{', '.join(INDEPENDENT_CLASSES)}")
    fs = float(sampling_rate)
    n = int(round(duration * fs))
    t = np.arange(n) / fs
    times, cycle = _rhythm(label, rng, duration)
    mean_rr = float(np.median(np.diff(times)))
    theta = _phase(t, times, mean_rr)

    # wave timing at this rate (PR shortens a little, QT with the square root of RR), then this record's morphology
    centre = _CENTRE * np.array([mean_rr ** 0.25, 1.0, 1.0, 1.0, np.sqrt(mean_rr)])
    centre = centre * np.array([rng.uniform(0.8, 1.15), 1.0, 1.0, 1.0, rng.uniform(0.9, 1.1)])
    width = _WIDTH * rng.uniform(0.85, 1.2)
    theta_i = (2 * np.pi * centre / mean_rr)[:, None] + rng.normal(0.0, 0.01, (5, 3))  # channels out of step
    b = (2 * np.pi * width / mean_rr)[:, None] * rng.uniform(0.9, 1.1, (5, 3))
    peak = (_PEAK @ _rotation(rng).T) * rng.uniform(0.8, 1.2, (5, 3)) * rng.uniform(0.6, 1.5)
    if label in ("AFIB", "AFLT"):
        peak[0] = 0.0
    a = peak / b ** 2  # McSharry's a_i: the wave's peak of a_i * b_i^2 in the integrated form

    # respiration modulates the R amplitude (electrical axis sways with the lungs) and drives z0
    resp_f, resp_phase = rng.uniform(0.15, 0.4), rng.uniform(0, 2 * np.pi)
    breath = np.sin(2 * np.pi * resp_f * t + resp_phase)
    d = (theta[None, None, :] - theta_i[:, :, None] + np.pi) % (2 * np.pi) - np.pi
    g = (a * b ** 2)[:, :, None] * np.exp(-0.5 * (d / b[:, :, None]) ** 2)  # [wave, channel, sample]
    g[2] *= 1.0 + rng.uniform(0.0, 0.08) * breath
    drive = g.sum(0)  # [3, n]
    z0 = np.outer(rng.uniform(0.02, 0.12, 3), breath)
    dt = 1.0 / fs
    forcing = np.diff(drive, axis=1, prepend=drive[:, :1]) + dt * z0
    frank = lfilter([1.0], [1.0, -(1.0 - dt)], forcing, axis=1, zi=drive[:, :1])[0]

    if label == "AFIB" and rng.random() < 0.5:  # visible f waves; otherwise irregular RR and no P alone
        f_inst = rng.uniform(4.5, 8.5) + np.cumsum(rng.normal(0.0, 0.02, n))
        fw = np.sin(2 * np.pi * np.cumsum(np.clip(f_inst, 3.5, 9.5)) / fs) * rng.uniform(0.03, 0.1)
        frank += np.outer(np.array([0.2, 0.5, -0.8]), fw)
    elif cycle is not None:
        k = np.arange(1, 7)
        saw = (np.sin(2 * np.pi * k[:, None] * (t[None] - times[0] + 0.1) / cycle) / k[:, None]).sum(0)
        frank += np.outer(np.array([0.1, 0.9, -0.3]), saw * rng.uniform(0.06, 0.12))

    leads = DOWER @ frank
    leads[2:] *= rng.uniform(0.85, 1.15, (6, 1))  # chest electrode placement
    leads += _noise(rng, 8, t, fs)
    leads = leads.astype(np.float32)
    i, ii = leads[0], leads[1]
    out = np.empty((12, n), dtype=np.float32)
    out[0], out[1], out[2] = i, ii, ii - i
    out[3] = -(i + ii) / np.float32(2)
    out[4] = i - ii / np.float32(2)
    out[5] = ii - i / np.float32(2)
    out[6:] = leads[2:]
    return out


def write_independent_ptbxl(out_dir, n: int, seed: int = 0, classes: Optional[Sequence[str]] = None,
                            progress: bool = False, write_lr: bool = True) -> Path:
    """`n` records of this generator (balanced classes) in the PTB-XL 1.0.x layout (see layouts.write_ptbxl_folder);
    reports are templates. Returns the folder."""
    classes = tuple(classes) if classes else INDEPENDENT_CLASSES
    unknown = [c for c in classes if c not in INDEPENDENT_CLASSES]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct ones of {', '.join(INDEPENDENT_CLASSES)}; got {list(classes)}")
    lay = np.random.default_rng([int(seed), 78])
    labels = [classes[i % len(classes)] for i in lay.permutation(n)]

    def make_record(i: int, label: str):
        rng = np.random.default_rng([int(seed), 77, i])
        signal = independent_ecg(label, rng)
        report = template_report(label, rng, {})
        return signal, report, dict(CLASS_SPECS[label].template_codes)

    needed = {code for c in classes for code in CLASS_SPECS[c].template_codes}
    with new_synthetic_folder(out_dir) as staging:
        write_ptbxl_folder(staging, labels, make_record, lay, needed, progress, "independent synthetic PTB-XL",
                           write_lr=write_lr)
        (staging / "README.txt").write_text(readme_text(
            "ptbxl", n, seed, classes, False, "python -m train.synthetic.independent",
            "Signals from the independent evaluation generator (train/synthetic/independent.py: McSharry-style "
            "dynamical model, Dower leads), not the one that makes the pretraining corpus."))
    return Path(out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.synthetic.independent",
        description="Write a SYNTHETIC PTB-XL-layout rhythm set from the independent evaluation generator.",
    )
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--n", type=int, default=1500, help="number of records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="+", default=None,
                        help=f"default and supported: {' '.join(INDEPENDENT_CLASSES)}")
    parser.add_argument("--no-lr", action="store_true", help="skip records100/ (the 100 Hz copies)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    print(SYNTHETIC_NOTICE, file=sys.stderr)
    t0 = time.perf_counter()
    try:
        out = write_independent_ptbxl(args.output, args.n, args.seed, args.classes, progress=True,
                                      write_lr=not args.no_lr)
    except (ValueError, FileExistsError, PermissionError) as err:
        parser.error(str(err))
    dt = time.perf_counter() - t0
    print(f"wrote {args.n} synthetic records (independent generator, PTB-XL layout) to {out} in {dt:.1f} s "
          f"({args.n / dt:.0f} records/s). The signals are SYNTHETIC; see {out / 'README.txt'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
