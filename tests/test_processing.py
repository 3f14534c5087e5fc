"""The processor: signal conditioning policies, clear errors, file readers (WFDB, the real DICOM ECG), text."""

import re
import numpy as np
import pytest
import torch

from dbeta.processing_dbeta import (
    MIMIC_LEADS,
    STANDARD_LEADS,
    DBetaFeatureExtractor,
    DBetaProcessor,
    ECGReadError,
    assemble_report,
    canonical_lead_name,
    normalize_report,
    read_dicom,
    read_ecg_file,
    read_wfdb,
)
from tests.tiny import ecg_batch, train_t5_tokenizer


@pytest.fixture(scope="module")
def fe():
    return DBetaFeatureExtractor()


def test_single_and_batch_shapes(fe):
    signals = ecg_batch(3, 6000).numpy()  # flat (all-zero) records are refused, so real-looking ones
    one = fe(signals[0, :, :5000], sampling_rate=500)["ecg_values"]
    many = fe(signals[:, :, :5000], sampling_rate=500)["ecg_values"]
    ragged = fe([signals[0], torch.from_numpy(signals[1, :, :4000])], sampling_rate=[500, 500])["ecg_values"]
    assert one.shape == (1, 12, 5000) and many.shape == (3, 12, 5000) and ragged.shape == (2, 12, 5000)
    assert one.dtype == torch.float32
    assert isinstance(fe(signals[0], sampling_rate=500, return_tensors="np")["ecg_values"], np.ndarray)


def test_sampling_rate_is_required(fe):
    with pytest.raises(ValueError, match="sampling_rate is required"):
        fe(np.zeros((12, 5000)))


def test_resampling_preserves_a_sine(fe):
    t = np.arange(4000) / 400.0  # 10 s at 400 Hz, like CODE-test
    x = np.tile(np.sin(2 * np.pi * 1.5 * t), (12, 1))
    out = fe(x, sampling_rate=400)["ecg_values"][0].numpy()
    ref = np.sin(2 * np.pi * 1.5 * np.arange(5000) / 500.0)
    assert np.abs(out[0, 100:-100] - ref[100:-100]).max() < 1e-2


def test_resampling_leaves_an_offset_and_a_tilted_baseline_alone(fe):
    """resample_poly pads with zeros: a +20 mV offset became a step at the record's edges that rang (0.7 mV in
    the first samples for 5 mV) and flipped the top label of neurokit2 ECGs at 250 and 360 Hz (helper), where at
    500 Hz the model, which centres each lead, scores the offset record exactly as the original."""
    x = ecg_batch(1, 2500).numpy()[0]  # 10 s at 250 Hz
    plain = fe(x, sampling_rate=250)["ecg_values"][0].numpy()
    shifted = fe(x + 20.0, sampling_rate=250)["ecg_values"][0].numpy() - 20.0
    assert np.abs(shifted - plain).max() < 1e-4
    ramp = np.tile(np.linspace(-1.0, 1.0, 2500, dtype=np.float32), (12, 1)) + 0.1 * x  # baseline wander
    out = fe(ramp, sampling_rate=250)["ecg_values"][0].numpy()
    expected = np.linspace(-1.0, 1.0, 5000) + 0.1 * plain
    assert np.abs(out - expected)[:, :20].max() < 0.05 and np.abs(out - expected)[:, -20:].max() < 0.05


def test_length_policy_pad_and_crop():
    x = np.arange(12 * 6000, dtype=np.float32).reshape(12, 6000)
    # sample numbers as values: far beyond millivolts, so the amplitude bound is turned off here
    start = DBetaFeatureExtractor(crop="start", max_amplitude_mv=None)(x, sampling_rate=500)["ecg_values"][0]
    center = DBetaFeatureExtractor(crop="center", max_amplitude_mv=None)(x, sampling_rate=500)["ecg_values"][0]
    assert start[0, 0] == 0 and center[0, 0] == 500
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    fr = DBetaFeatureExtractor(crop="random", max_amplitude_mv=None)
    assert torch.equal(fr(x, sampling_rate=500, generator=rng1)["ecg_values"],
                       fr(x, sampling_rate=500, generator=rng2)["ecg_values"])
    ramp = np.tile(np.linspace(1, 2, 2500, dtype=np.float32), (12, 1))
    short = DBetaFeatureExtractor()(ramp, sampling_rate=500)["ecg_values"][0]
    assert short[:, :2500].eq(torch.from_numpy(ramp)).all() and short[:, 2500:].eq(0).all()  # zero-padded at the end


def test_too_short_and_empty_are_errors(fe):
    with pytest.raises(ValueError, match="shorter than the minimum"):
        fe(np.zeros((12, 500)), sampling_rate=500)
    with pytest.raises(ValueError, match="empty"):
        fe(np.zeros((12, 0)), sampling_rate=500)
    with pytest.raises(ValueError, match="empty"):
        fe([], sampling_rate=500)


def test_wrong_lead_count_names_the_record_and_hints_transpose(fe):
    with pytest.raises(ValueError, match=r"ecg\[1\]: expected 12 leads"):
        fe([ecg_batch(1)[0].numpy(), np.zeros((8, 5000))], sampling_rate=500)
    with pytest.raises(ValueError, match="pass ecg.T"):
        fe(np.zeros((5000, 12)), sampling_rate=500)
    # with lead names (deepfake-ecg's eight leads as [samples, leads]) the hint was missing: "8 lead names for 5000"
    eight = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    with pytest.raises(ValueError, match=r"8 lead names for 5000 leads \(rows\) \(it looks like \[samples, leads\]"):
        fe(np.zeros((5000, 8)), sampling_rate=500, lead_names=eight)


def test_a_table_of_leads_is_refused_with_the_conversion_to_pass():
    """neurokit2's multileads ECG is a pandas DataFrame (one column per lead): "unsupported ECG input of type
    DataFrame" said nothing of what to pass instead."""
    import pandas as pd

    df = pd.DataFrame(np.zeros((5000, 12)), columns=list(STANDARD_LEADS))
    fe = DBetaFeatureExtractor()
    with pytest.raises(TypeError, match=r"pass ecg=df.to_numpy\(\).T, lead_names=list\(df.columns\)"):
        fe(df, sampling_rate=500)
    from dbeta.pipeline_dbeta import as_record

    with pytest.raises(TypeError, match=r"DataFrame: give an array .* pass ecg=df.to_numpy\(\).T"):
        as_record(df, sampling_rate=500)  # the pipeline's reading of one input
    assert fe(df.to_numpy().T, sampling_rate=500, lead_names=list(df.columns), implausible="warn")[
        "ecg_values"].shape == (1, 12, 5000)


def test_mimic_lead_order_is_fixed_by_lead_names(fe):
    wave = 0.1 * np.sin(np.arange(5000) / 50.0)  # 0 at sample 0; a constant record would be refused as flat
    x = np.stack([(i + wave).astype(np.float32) for i in range(12)])  # lead i starts at value i
    out = fe(x, sampling_rate=500, lead_names=list(MIMIC_LEADS))["ecg_values"][0]
    assert out[4, 0] == 5 and out[5, 0] == 4  # aVL and aVF swapped into standard order
    with pytest.raises(ValueError, match="missing lead"):  # strict mode; the default zeroes it (test_leads.py)
        fe(x[:11], sampling_rate=500, lead_names=list(MIMIC_LEADS)[:11], missing_leads="raise")


def test_lead_name_spellings():
    assert canonical_lead_name("Lead aVR (Goldberger)") == "aVR"
    assert canonical_lead_name("DII") == "II" and canonical_lead_name("v1") == "V1"
    with pytest.raises(ValueError, match="unknown lead"):
        canonical_lead_name("X9")


def test_nan_policies():
    x = np.tile(np.linspace(0, 1, 5000, dtype=np.float32), (12, 1))
    x[3, 100:200] = np.nan
    x[5, 0:10] = np.inf
    out = DBetaFeatureExtractor()(x, sampling_rate=500)["ecg_values"][0].numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[3, 100:200], np.linspace(0, 1, 5000)[100:200], atol=1e-6)  # bridged linearly
    assert out[5, 0] == pytest.approx(x[5, 10])  # edges take the nearest finite value
    with pytest.raises(ValueError, match="NaN"):
        DBetaFeatureExtractor(nan_policy="raise")(x, sampling_rate=500)
    x[7] = np.nan
    with pytest.raises(ValueError, match="lead V2 has no finite sample"):  # row 7 was named "lead 7" (III?)
        DBetaFeatureExtractor()(x, sampling_rate=500)
    # named as the caller's lead, wherever it sits in the caller's order or among the leads in use
    mimic = x[[STANDARD_LEADS.index(name) for name in MIMIC_LEADS]]
    with pytest.raises(ValueError, match="lead V2 has no finite sample"):
        DBetaFeatureExtractor()(mimic, sampling_rate=500, lead_names=MIMIC_LEADS)
    with pytest.raises(ValueError, match="lead V2 has no finite sample"):
        DBetaFeatureExtractor()(x, sampling_rate=500, leads=["I", "V2"])
    zeroed = DBetaFeatureExtractor(nan_policy="zero")(x, sampling_rate=500)["ecg_values"][0]
    assert zeroed[7].eq(0).all()


def test_a_mostly_missing_lead_is_implausible_not_silently_invented():
    """Repair bridges gaps; a lead whose samples are mostly NaN (99%: 0.1 s of signal stretched over 10 s) would
    be scored as an ECG. Refused by default, a warning where a long run must go on (implausible="warn")."""
    fe = DBetaFeatureExtractor()
    x = ecg_batch(1)[0].numpy()
    gappy = x.copy()
    gappy[4, 2400:] = np.nan  # 52% of lead aVL
    with pytest.raises(ValueError, match=r"ecg\[0\]: lead aVL has 52.0% NaN/inf samples"):
        fe(gappy, sampling_rate=500)
    for policy in ("interpolate", "zero"):
        with pytest.warns(UserWarning, match="lead aVL has 52.0% NaN/inf"):
            fe(gappy, sampling_rate=500, nan_policy=policy, implausible="warn")
    gappy[4, 2600:] = x[4, 2600:]  # 4% missing: an ordinary gap, bridged
    assert np.isfinite(fe(gappy, sampling_rate=500)["ecg_values"].numpy()).all()
    gappy[4] = np.nan  # no finite sample: with nan_policy="zero" a missing lead, not a mostly invented one
    assert fe(gappy, sampling_rate=500, nan_policy="zero")["ecg_values"][0, 4].eq(0).all()


def test_the_checks_judge_the_samples_the_model_reads_not_the_rest_of_a_long_record():
    """A 60 s record whose first 10 s were zeros (electrodes not yet on) was scored as an all-zero input, since the
    flat and NaN checks looked at the whole record and the model reads its first 10 s; a spike at 50 s refused a
    record whose 10 s read were fine (helper). The checks now run on the part read, and say so."""
    fe = DBetaFeatureExtractor()
    x = np.concatenate([ecg_batch(1, seed=k)[0].numpy() for k in range(6)], axis=1)  # 60 s at 500 Hz
    off = x.copy()
    off[:, :5000] = 0.0
    with pytest.raises(ValueError, match=r"ecg\[0\] \(the 10 s the model reads, from 0 s\): flat signal"):
        fe(off, sampling_rate=500)
    assert fe(off, sampling_rate=500, crop="center")["ecg_values"].abs().sum() > 0  # reads 25-35 s
    missing = x.copy()
    missing[:, :5000] = np.nan
    with pytest.raises(ValueError, match=r"the 10 s the model reads, from 0 s\): flat signal"):
        fe(missing, sampling_rate=500)
    missing[:, :5000] = x[:, :5000]
    missing[4, :6000] = np.nan  # aVL missing where read, finite later: an absent lead there, as before (helper)
    for policy in ("interpolate", "zero"):
        values, used = fe.condition(missing, 500, nan_policy=policy, return_lead_mask=True)
        assert not used[4] and used.sum() == 11 and not values[4].any()
    missing[4, :6000] = x[4, :6000]
    missing[4, 1000:4000] = np.nan  # 60% of what is read
    with pytest.raises(ValueError, match=r"the 10 s the model reads, from 0 s\): lead aVL has 60.0% NaN/inf"):
        fe(missing, sampling_rate=500)
    # a random crop reads any part over an epoch: the whole record is judged, as fine-tuning's record scan (its
    # first 10 s) would otherwise pass a record whose later windows are refused mid-training (helper)
    late = x.copy()
    late[1, 20000:22500] = 200.0
    fe(late, sampling_rate=500)
    with pytest.raises(ValueError, match=r"ecg\[0\]: implausible amplitude"):
        fe(late, sampling_rate=500, crop="random")
    spike = x.copy()
    spike[1, 25000] = 2000.0  # 2 V at 50 s, never read
    assert torch.equal(fe(spike, sampling_rate=500)["ecg_values"], fe(x, sampling_rate=500)["ecg_values"])
    with pytest.raises(ValueError, match="implausible amplitude"):
        fe(spike[:, 24000:34000], sampling_rate=500)
    # at another rate the part read maps back to the record's own samples: 10 s of 1000 Hz are 10000 samples
    fast = np.repeat(x[:, :20000], 2, axis=1)
    fast[:, 9000:10000] = np.nan  # the last 1 s read of lead I..V6: 10%, bridged
    fe(fast, sampling_rate=1000)
    fast[:, 4000:10000] = np.nan  # 60% of what is read, though 15% of the record
    with pytest.raises(ValueError, match="lead I has 60.0% NaN/inf"):
        fe(fast, sampling_rate=1000)
    assert fe.read_window(40000, 1000) == (0, 10000) and fe.read_window(40000, 1000, crop="center") == (15000, 25000)
    assert fe.read_window(3000, 500) == (0, 3000)


def test_minmax_normalisation():
    x = ecg_batch(1)[0].numpy()
    out = DBetaFeatureExtractor(normalization="minmax")(x, sampling_rate=500)["ecg_values"][0]
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.99
    with pytest.raises(ValueError, match="normalization"):
        DBetaFeatureExtractor(normalization="zscore")


def test_feature_extractor_round_trips_its_settings(tmp_path):
    fe = DBetaFeatureExtractor(normalization="minmax", crop="center", min_duration=1.0)
    fe.save_pretrained(tmp_path)
    again = DBetaFeatureExtractor.from_pretrained(tmp_path)
    assert (again.normalization, again.crop, again.min_duration) == ("minmax", "center", 1.0)


def test_wfdb_reader_units_and_truncation(tmp_path):
    wfdb = pytest.importorskip("wfdb")
    sig = ecg_batch(1)[0].numpy().T.astype(np.float64)  # [samples, leads] in mV
    wfdb.wrsamp("rec", fs=500, units=["uV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=sig * 1000,
                fmt=["16"] * 12, adc_gain=[1.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    rec = read_wfdb(tmp_path / "rec")
    assert rec.sampling_rate == 500 and rec.lead_names == list(STANDARD_LEADS)
    assert np.abs(rec.signal - sig.T).max() < 2e-3  # microvolts converted to millivolts (1 uV resolution)
    data = tmp_path / "rec.dat"
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    with pytest.raises(ECGReadError, match="rec"):
        read_wfdb(tmp_path / "rec")
    with pytest.raises(ECGReadError, match="header not found"):
        read_wfdb(tmp_path / "absent")
    np.save(tmp_path / "rec.npy", sig.T)  # an array file: no rate to read, and not a WFDB record
    from dbeta.processing_dbeta import read_ecg_file

    with pytest.raises(ECGReadError, match=r"rec.npy: a .npy file is not read as an ECG file .* sampling_rate="):
        read_ecg_file(tmp_path / "rec.npy")


def test_a_signal_file_that_does_not_fit_its_header_is_refused(tmp_path):
    """wfdb reads what the header says: 16-bit samples under a header claiming format 212, or a CinC .mat saved as
    [samples, leads], came out as noise within a few mV and were scored as ECGs."""
    wfdb = pytest.importorskip("wfdb")
    from scipy.io import savemat

    sig = ecg_batch(1)[0].numpy().astype(np.float64)  # [12, 5000] mV
    wfdb.wrsamp("r16", fs=500, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=sig.T, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    header = (tmp_path / "r16.hea").read_text()
    (tmp_path / "r212.hea").write_text(header.replace("r16.dat 16", "r16.dat 212").replace("r16 ", "r212 ", 1))
    with pytest.raises(ECGReadError, match=r"r16.dat: 120000 bytes, but the header implies 90000 \(12 signals x "
                                           r"5000 samples in format 212\)"):
        read_wfdb(tmp_path / "r212")
    # a half-downloaded or empty signal file: wfdb's own failure inside its reader ("cannot reshape array...")
    # named neither the file nor the cause
    data = (tmp_path / "r16.dat").read_bytes()
    for size in (100000, 119999, 0):
        (tmp_path / "cut.hea").write_text(header.replace("r16.dat", "cut.dat").replace("r16 ", "cut ", 1))
        (tmp_path / "cut.dat").write_bytes(data[:size])
        with pytest.raises(ECGReadError, match=rf"cut.dat: {size} bytes, but the header implies 120000"):
            read_wfdb(tmp_path / "cut")
    counts = np.round(sig * 1000).astype(np.int16)
    lines = "".join(f"A1.mat 16+24 1000/mV 16 0 {counts[i, 0]} 0 0 {lead}\n" for i, lead in enumerate(STANDARD_LEADS))
    (tmp_path / "A1.hea").write_text("A1 12 500 5000\n" + lines)
    savemat(tmp_path / "A1.mat", {"val": counts}, format="4")  # the CinC layout: [leads, samples]
    assert np.abs(read_wfdb(tmp_path / "A1").signal - sig).max() < 1e-3
    savemat(tmp_path / "A1.mat", {"val": counts.T}, format="4")  # the same bytes in the other order
    with pytest.raises(ECGReadError, match=r"A1.mat: the MATLAB matrix is 5000 x 12, the header implies 12 signals"):
        read_wfdb(tmp_path / "A1")
    # a rate wfdb cannot parse is read as its default 250 Hz: the record would be resampled at half its speed
    (tmp_path / "neg.hea").write_text(header.replace("r16 12 500 ", "neg 12 -500 ", 1))
    assert (tmp_path / "neg.hea").read_text() != header.replace("r16 ", "neg ", 1)
    with pytest.raises(ECGReadError, match=r"neg.hea: sampling frequency '-500' in the record line is not a positive"):
        read_wfdb(tmp_path / "neg")


def test_real_dicom_ecg_through_the_processor():
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    rec = read_ecg_file(get_testdata_file("waveform_ecg.dcm"))
    assert rec.signal.shape == (12, 10000) and rec.sampling_rate == 1000
    assert [canonical_lead_name(n) for n in rec.lead_names] == list(STANDARD_LEADS)
    assert 0.3 < np.abs(rec.signal).max() < 10  # millivolts, not microvolts
    # Einthoven: III = II - I holds on the real recording
    assert np.abs(rec.signal[2] - (rec.signal[1] - rec.signal[0])).max() < 0.05
    out = DBetaFeatureExtractor()(rec.signal, sampling_rate=rec.sampling_rate, lead_names=rec.lead_names)
    assert out["ecg_values"].shape == (1, 12, 5000)
    with pytest.raises(ECGReadError, match="not a DICOM waveform"):
        read_dicom(__file__)


def test_report_text_cleaning():
    assert normalize_report("  *** Sinus rhythm. Normal EKG ***  ") == "sinus rhythm. normal ecg"
    assert normalize_report("=-Atrial fibrillation=") == "atrial fibrillation"
    assert assemble_report(["Sinus rhythm", "", None, float("nan"), "Normal ECG."]) == "Sinus rhythm. Normal ECG"


def test_processor_text_and_ecg_together():
    proc = DBetaProcessor(DBetaFeatureExtractor(), train_t5_tokenizer())
    batch = proc(ecg=ecg_batch(2).numpy(), sampling_rate=500, text=["Sinus rhythm.", "AFIB"])
    assert set(batch) == {"ecg_values", "input_ids", "attention_mask"}
    assert batch["input_ids"].shape[0] == 2 and batch["ecg_values"].shape == (2, 12, 5000)
    with pytest.raises(ValueError, match=r"text\[1\] is empty"):
        proc(text=["sinus rhythm", "   "])
    with pytest.raises(ValueError, match="empty after normalization"):
        proc(text=["***"])
    for bad, kind in ((float("nan"), "float"), (("sinus rhythm",), "tuple"), (3, "int")):  # never str()-ed
        with pytest.raises(TypeError, match=rf"text\[1\] must be a string, got {kind}"):
            proc(text=["sinus rhythm", bad])
    assert proc(text=[np.str_("sinus rhythm")])["input_ids"].tolist() == proc(text=["sinus rhythm"])["input_ids"].tolist()
    with pytest.raises(ValueError, match="give an ECG"):
        proc()


# ----- issue 12: options per call, implausible input, clear errors --------------------------------------------


def test_per_call_options_apply_and_unknown_keywords_are_refused():
    fe = DBetaFeatureExtractor()
    x = ecg_batch(1)[0].numpy()
    x[7] = np.nan  # the default nan_policy ("interpolate") refuses a lead without a finite sample
    zeroed = fe(x, sampling_rate=500, nan_policy="zero")["ecg_values"][0]
    assert zeroed[7].eq(0).all() and zeroed[0].abs().max() > 0
    scaled = fe(x, sampling_rate=500, nan_policy="zero", normalization="minmax")["ecg_values"][0]
    assert scaled.min() == 0 and scaled.max() > 0.99
    assert fe.nan_policy == "interpolate" and fe.normalization == "none"  # a call does not change the settings
    with pytest.raises(TypeError, match=r"nan_polciy.*nan_policy"):
        fe(x, sampling_rate=500, nan_polciy="zero")
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        fe(x, sampling_rate=500, nan_policy="drop")
    proc = DBetaProcessor(fe, train_t5_tokenizer())
    assert proc(ecg=x, sampling_rate=500, nan_policy="zero")["ecg_values"][0, 7].eq(0).all()
    with pytest.raises(TypeError, match=r"normalisation.*normalization"):
        proc(ecg=x, sampling_rate=500, normalisation="minmax")


def test_implausible_amplitudes_and_flat_records_are_refused_naming_the_record():
    fe = DBetaFeatureExtractor()
    x = ecg_batch(1)[0].numpy()
    counts = np.round(x * 200).astype(np.int16)  # int16 ADC counts at 200 counts/mV, passed as if mV
    for bad in (counts, x * 1e30, x * 1000.0):
        with pytest.raises(ValueError, match=r"ecg\[0\]: implausible amplitude for millivolts: lead"):
            fe(bad, sampling_rate=500)
    spikes = x.copy()
    spikes[3, 100:103] = 1e30  # a few corrupt samples
    with pytest.raises(ValueError, match="implausible amplitude"):
        fe(spikes, sampling_rate=500)
    spikes = x.astype(np.float64)
    spikes[3, 100:103] = 1e39  # beyond float32: an inf after the cast, which the NaN repair would have bridged
    with pytest.raises(ValueError, match=r"ecg\[0\]: 3 sample\(s\) beyond float32's range \(largest 1e\+39\)"):
        fe(spikes, sampling_rate=500)
    # the same ECG in volts (MNE's and neurokit's unit) passed the upper bound and was scored: a lower one
    with pytest.raises(ValueError, match=r"ecg\[0\]: implausible amplitude for millivolts: the largest lead, "
                                         r"\w+, spans only 0\.00\d+ mV \(.*volts passed as mV\?\)"):
        fe(x * 1e-3, sampling_rate=500)
    assert DBetaFeatureExtractor(max_amplitude_mv=None)(x * 1e-3, sampling_rate=500)["ecg_values"].shape[0] == 1
    assert fe(x * 1e-3, sampling_rate=500, normalization="minmax")["ecg_values"].max() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match=r"ecg\[1\]: flat signal"):
        fe([x, np.zeros((12, 5000))], sampling_rate=500)  # the second record is named, not the first
    with pytest.raises(ValueError, match=r"flat signal: every lead is constant \(value 3\)"):
        fe(np.full((12, 5000), 3.0), sampling_rate=500)
    small = x / np.abs(x).max() * 0.4e-3  # volts of an ECG whose largest lead spans 0.8 mV: not "constant"
    with pytest.raises(ValueError, match=r"flat signal: no lead spans more than 0\.000\d+ .*volts passed as mV"):
        fe(small, sampling_rate=500)
    assert fe(small, sampling_rate=500, normalization="minmax")["ecg_values"].abs().max() == pytest.approx(1.0, abs=1e-4)
    with pytest.warns(UserWarning, match="implausible amplitude"):
        out = fe(counts, sampling_rate=500, implausible="warn")["ecg_values"]
    assert out.abs().max() > 50
    # minmax scaling removes the unit, and the bound can be turned off; an ECG in mV passes untouched
    assert fe(counts, sampling_rate=500, normalization="minmax")["ecg_values"].max() == pytest.approx(1.0)
    assert DBetaFeatureExtractor(max_amplitude_mv=None)(counts, sampling_rate=500)["ecg_values"].shape == (1, 12, 5000)
    assert torch.allclose(fe(x, sampling_rate=500)["ecg_values"][0], torch.from_numpy(x))


def test_sampling_rate_and_lead_names_of_the_wrong_type_are_clear_errors():
    fe = DBetaFeatureExtractor()
    x = ecg_batch(1)[0].numpy()
    with pytest.raises(ValueError, match="sampling_rate must be a number of Hz.*'abc'"):
        fe(x, sampling_rate="abc")
    with pytest.raises(ValueError, match="sampling_rate must be one number .* got 5000 values for 1 ECG"):
        fe(x, sampling_rate=np.arange(5000))
    assert fe(x, sampling_rate=np.array([500]))["ecg_values"].shape == (1, 12, 5000)
    with pytest.raises(ValueError, match="lead_names must be a list with one name per lead"):
        fe(x, sampling_rate=500, lead_names="I II III aVR aVL aVF V1 V2 V3 V4 V5 V6")
    with pytest.raises(ValueError, match="sampling_rate must be a number"):
        fe.condition(x, "500 Hz")
    huge = x.astype(np.float64)
    huge[3, 100:110] = 1e39
    for bad, named in ((x > 0, "ECG samples must be real numbers, got an array of bool"),
                       (x.astype(np.complex64), "ECG samples must be real numbers, got an array of complex"),
                       (huge, "10 sample\\(s\\) beyond float32's range")):  # no voltages
        # as an array, a tensor or nested lists alike (the last two were cast to float32 before any check)
        for given in (bad, torch.from_numpy(bad), bad.tolist()):
            with pytest.raises(ValueError, match=named):
                fe(given, sampling_rate=500)
    gap = x.tolist()  # nested lists with a missing sample (JSON null): a NaN, repaired as the policy says
    gap[3][100] = None
    assert torch.isfinite(fe(gap, sampling_rate=500)["ecg_values"]).all()
    # a sampling interval given as the rate would ask the resampler for tens of GB; 5 Hz cannot carry an ECG
    for rate in (0.002, 5, 1e6):
        with pytest.raises(ValueError, match=re.escape(f"sampling_rate {rate:g} Hz is outside the 50-20000 Hz")):
            fe(x, sampling_rate=rate)
    assert fe(x[:, :1000], sampling_rate=100)["ecg_values"].shape == (1, 12, 5000)  # PTB-XL's 100 Hz records


def test_known_extra_leads_are_dropped_and_unknown_names_refused():
    fe = DBetaFeatureExtractor()
    x = ecg_batch(1)[0].numpy()
    reference = fe(x, sampling_rate=500)["ecg_values"]
    for extra in (["vx", "vy", "vz"], ["X", "Y", "Z"], ["V3R", "V4R", "V7"]):
        signal = np.concatenate([x, x[:3] * 0.5])
        out = fe(signal, sampling_rate=500, lead_names=list(STANDARD_LEADS) + extra)["ecg_values"]
        assert torch.equal(out, reference), extra
    with pytest.raises(ValueError, match=r"ecg\[0\]: unknown lead name 'foo'.*dropped"):
        fe(np.concatenate([x, x[:1]]), sampling_rate=500, lead_names=list(STANDARD_LEADS) + ["foo"])
    with pytest.raises(ValueError, match="II appear more than once"):
        fe(np.concatenate([x, x[:1]]), sampling_rate=500, lead_names=list(STANDARD_LEADS) + ["DII"])


def _dicom_copy(tmp_path, name, edit=None):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    if edit is not None:
        edit(ds.WaveformSequence[0].ChannelDefinitionSequence[1])
    ds.save_as(tmp_path / name)
    return tmp_path / name


def test_dicom_is_recognised_by_content_and_bad_channels_name_the_file(tmp_path):
    from pydicom.data import get_testdata_file

    plain = _dicom_copy(tmp_path, "ecg_export")  # no .dcm suffix
    rec = read_ecg_file(plain)
    assert np.array_equal(rec.signal, read_ecg_file(get_testdata_file("waveform_ecg.dcm")).signal)

    def no_source(channel):
        del channel.ChannelSourceSequence

    def mmhg(channel):
        channel.ChannelSensitivityUnitsSequence[0].CodeValue = "mm[Hg]"

    def zero_sensitivity(channel):
        channel.ChannelSensitivity = "0"

    for edit, needle in ((no_source, "channel 1 has no ChannelSourceSequence"), (mmhg, "not a voltage"),
                         (zero_sensitivity, "ChannelSensitivity 0")):
        path = _dicom_copy(tmp_path, f"{edit.__name__}.dcm", edit)
        with pytest.raises(ECGReadError, match=needle) as err:
            read_ecg_file(path)
        assert str(path) in str(err.value)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A tiny model export with its processor (processor_config.json and the remote-code files)."""
    from dbeta.modeling_dbeta import DBetaModel
    from tests.tiny import tiny_config, tiny_t5_text_config
    from train.export import build_processor, export_model

    tok = train_t5_tokenizer()
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tok))))
    return export_model(model, tmp_path_factory.mktemp("proc") / "export", processor=build_processor(tok))


def test_constructor_and_from_pretrained_refuse_unknown_keywords(tiny_export):
    """A misspelt setting given to the constructor or to from_pretrained (direct or through AutoProcessor) is a
    TypeError naming it with the likely intended one; real settings, the tokenizer's own and transformers'
    loading keywords still work."""
    from transformers import AutoProcessor

    with pytest.raises(TypeError, match=r"'nan_polcy' \(did you mean 'nan_policy'\?\).*known: crop"):
        DBetaFeatureExtractor(nan_polcy="zero")
    with pytest.raises(TypeError, match="nan_polcy"):
        DBetaProcessor(DBetaFeatureExtractor(), train_t5_tokenizer(), nan_polcy="zero")
    for load in (DBetaProcessor.from_pretrained, AutoProcessor.from_pretrained):
        with pytest.raises(TypeError, match=r"from_pretrained.*'nan_polcy' \(did you mean 'nan_policy'\?\)"):
            load(tiny_export, trust_remote_code=True, nan_polcy="zero")
        with pytest.raises(TypeError, match=r"'padding_sid' \(did you mean 'padding_side'\?\)"):
            load(tiny_export, trust_remote_code=True, padding_sid="left")
        processor = load(tiny_export, trust_remote_code=True, nan_policy="zero", model_max_length=64,
                         padding_side="left", local_files_only=True, revision="main")
        assert processor.feature_extractor.nan_policy == "zero" and processor.tokenizer.model_max_length == 64
        assert processor.tokenizer.padding_side == "left"
        plain = load(tiny_export, trust_remote_code=True)
        settings = {k: v for k, v in plain.feature_extractor.to_dict().items() if k != "auto_map"}
        assert settings == DBetaFeatureExtractor().to_dict()
    # the feature extractor alone: transformers passes over a keyword it does not know (it may be another
    # part's: pipeline() and AutoProcessor hand every keyword to every part), so only a near-spelling is refused
    from transformers import AutoFeatureExtractor

    for load in (DBetaFeatureExtractor.from_pretrained, AutoFeatureExtractor.from_pretrained):
        for typo, meant in (("nan_polcy", "nan_policy"), ("sampling_rates", "sampling_rate"),
                            ("normalisation", "normalization")):
            with pytest.raises(TypeError, match=rf"from_pretrained.*'{typo}' \(did you mean '{meant}'\?\)"):
                load(tiny_export, trust_remote_code=True, **{typo: "zero"})
        extractor = load(tiny_export, trust_remote_code=True, nan_policy="zero", padding_side="left",
                         dtype="float32", attn_implementation="eager", local_files_only=True)
        assert extractor.nan_policy == "zero"


def test_the_models_input_settings_cannot_change_at_load(tiny_export):
    """`sampling_rate=250` at load was taken as the rate to resample *to* (records reached the model at 250 Hz with
    5 s of zeros) and `lead_names=` as the order to write leads in: both silently changed every input. Refused;
    the saved values (or none) load as before."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    for load in (AutoProcessor.from_pretrained, DBetaProcessor.from_pretrained, AutoFeatureExtractor.from_pretrained,
                 DBetaFeatureExtractor.from_pretrained):
        with pytest.raises(ValueError, match=r"sampling_rate=250 \(saved: 500\).*per call"):
            load(tiny_export, trust_remote_code=True, sampling_rate=250)
        with pytest.raises(ValueError, match=r"lead_names=.*cannot change at load"):
            load(tiny_export, trust_remote_code=True, lead_names=list(MIMIC_LEADS))
        with pytest.raises(ValueError, match=r"num_samples=2500"):
            load(tiny_export, trust_remote_code=True, num_samples=2500)
        load(tiny_export, trust_remote_code=True, sampling_rate=500.0, lead_names=np.array(STANDARD_LEADS))


def test_a_setting_an_older_export_did_not_save_still_applies_at_load(tiny_export, tmp_path):
    """transformers applies a loading keyword only when the saved config has its key: `missing_leads="raise"` or
    `keep_samples=300` given for an export written before those settings (or without them) was dropped without a
    word, and a bad value was never checked (helper)."""
    import json
    import shutil

    from transformers import AutoFeatureExtractor, AutoProcessor

    folder = shutil.copytree(tiny_export, tmp_path / "older")
    config = json.loads((folder / "processor_config.json").read_text())
    for key in ("keep_samples", "missing_leads", "implausible"):
        config["feature_extractor"].pop(key, None)
    (folder / "processor_config.json").write_text(json.dumps(config))
    for load in (AutoProcessor.from_pretrained, AutoFeatureExtractor.from_pretrained,
                 DBetaFeatureExtractor.from_pretrained):
        loaded = load(folder, trust_remote_code=True, missing_leads="raise", implausible="warn", keep_samples=300)
        fe = getattr(loaded, "feature_extractor", loaded)
        assert (fe.missing_leads, fe.implausible, fe.keep_samples) == ("raise", "warn", 300)
        with pytest.raises(ValueError, match="keep_samples must be None or a whole number"):
            load(folder, trust_remote_code=True, keep_samples="500")
    assert load(folder, trust_remote_code=True).keep_samples is None  # an older export: no cut


def test_keep_samples_cuts_records_and_refuses_another_crop():
    fe = DBetaFeatureExtractor(keep_samples=2500)
    x = ecg_batch(1, 10000).numpy()[0]
    np.testing.assert_array_equal(fe.condition(x, 500), DBetaFeatureExtractor().condition(x[:, :2500], 500))
    with pytest.raises(ValueError, match="crop='center' with keep_samples=2500: .*nothing to crop"):
        fe.condition(x, 500, crop="center")
    from eval.features import resolve_protocol_num_samples

    class Cpsc:
        protocol_num_samples = 2500

    class Ptbxl:
        protocol_num_samples = None

    assert resolve_protocol_num_samples(Cpsc(), "auto", DBetaFeatureExtractor(keep_samples=1000)) == 1000
    assert resolve_protocol_num_samples(Ptbxl(), "auto", fe) == 2500
    assert resolve_protocol_num_samples(Ptbxl(), 2000, fe) == 2000
    for asked in ("none", 4000):  # the processor would cut to 2500 whatever the run's JSON said
        with pytest.raises(ValueError, match="reads only the first 2500 samples"):
            resolve_protocol_num_samples(Ptbxl(), asked, fe)


def test_a_processor_config_with_an_unknown_setting_is_refused_naming_the_folder(tiny_export, tmp_path):
    """A feature-extractor setting this version does not know (written by a newer version, or a typo in an edited
    file) may change how signals are conditioned: an error naming the folder and the key, not a silent skip."""
    import json
    import shutil

    from transformers import AutoFeatureExtractor, AutoProcessor

    folder = shutil.copytree(tiny_export, tmp_path / "newer")
    config = json.loads((folder / "processor_config.json").read_text())
    config["feature_extractor"]["highpass_hz"] = 0.5
    (folder / "processor_config.json").write_text(json.dumps(config))
    for load in (DBetaProcessor.from_pretrained, AutoProcessor.from_pretrained, AutoFeatureExtractor.from_pretrained,
                 DBetaFeatureExtractor.from_pretrained):
        # transformers 5.25's AutoFeatureExtractor reads the file itself and hands only its contents on
        where = rf"({folder}|a saved processor config)" if load == AutoFeatureExtractor.from_pretrained else folder
        with pytest.raises(ValueError, match=rf"{where}.*does not know: highpass_hz"):
            load(folder, trust_remote_code=True)


def test_wfdb_header_length_agrees_with_wfdb(tmp_path):
    """read_wfdb takes the sample count from the record line instead of a second wfdb.rdheader parse: it must
    agree with wfdb on every record-line form, and defer to wfdb for the forms it does not read."""
    import wfdb

    from dbeta.processing_dbeta import _wfdb_header_length

    signal_line = "r.dat 16 200/mV 16 0 0 0 0 I"
    for i, record_line in enumerate(["r 1 500 5000", "r 1 500/500(0) 5000 10:00:00 01/01/2000", "r 1 500",
                                     "r 1", "r 1 360 650000", "# comment\nr 1 250 1200"]):
        base = tmp_path / f"h{i}"
        (base.with_suffix(".hea")).write_text(record_line + "\n" + signal_line + "\n")
        assert _wfdb_header_length(wfdb, str(base)) == (wfdb.rdheader(str(base)).sig_len or None), record_line


def test_from_dict_refuses_a_setting_it_does_not_know():
    """transformers 5.25's AutoFeatureExtractor reads processor_config.json itself and calls from_dict: a setting of a
    newer version came back as "unexpected keyword argument(s) 'highpass_hz'", saying nothing of why."""
    saved = DBetaFeatureExtractor().to_dict()
    assert DBetaFeatureExtractor.from_dict(dict(saved)).to_dict() == saved
    with pytest.raises(ValueError, match="does not know: highpass_hz .*Written by a newer version"):
        DBetaFeatureExtractor.from_dict({**saved, "highpass_hz": 0.5})


def _write_12_lead_wfdb(folder, name, seed=0, units="mV", scale=1.0, **kwargs):
    """A 10 s 500 Hz 12-lead WFDB record (format 16, 1000 units per mV of signal) and the signal written, in mV."""
    import wfdb

    rng = np.random.default_rng(seed)
    t = np.arange(5000) / 500
    mv = np.stack([0.8 * np.sin(2 * np.pi * (1 + i / 10) * t) + 0.05 * rng.normal(size=t.size) for i in range(12)])
    wfdb.wrsamp(name, fs=500, units=[units] * 12, sig_name=list(STANDARD_LEADS), p_signal=mv.T * scale,
                fmt=["16"] * 12, adc_gain=[1000.0 / scale] * 12, baseline=[0] * 12, write_dir=str(folder), **kwargs)
    return mv


def test_read_wfdb_refuses_an_uncalibrated_signal(tmp_path):
    """An ADC gain of 0 or none means 'uncalibrated' (WFDB header spec); wfdb read such a signal at 200 units/mV, so a
    1000/mV record came out 5x too large without a word."""
    _write_12_lead_wfdb(tmp_path, "rec")
    hea = tmp_path / "rec.hea"
    lines = hea.read_text().splitlines()
    for i, replace in enumerate([lambda ln: ln.replace("1000.0(0)/mV", "0/mV"),
                                 lambda ln: ln.replace("1000.0(0)/mV", "0(0)/mV"),
                                 lambda ln: " ".join(ln.split()[:2])]):
        changed = list(lines)
        changed[3] = replace(changed[3])  # signal 2: lead III
        hea.write_text("\n".join(changed) + "\n")
        with pytest.raises(ECGReadError,
                           match=r"rec\.hea: signal 2( \(III\))? in rec\.dat has ADC gain .*uncalibrated"):
            read_wfdb(tmp_path / "rec")
    hea.write_text("\n".join(lines) + "\n")
    assert read_wfdb(tmp_path / "rec").signal.shape == (12, 5000)


def test_read_wfdb_refuses_a_header_without_a_sampling_rate(tmp_path):
    """A record line with no sampling frequency ('rec 12') was read at wfdb's default 250 Hz: a 500 Hz record ran at
    half speed. The pipeline's long-record path (wfdb_info) says the same."""
    from dbeta.processing_dbeta import wfdb_info

    _write_12_lead_wfdb(tmp_path, "rec")
    hea = tmp_path / "rec.hea"
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join(["rec 12"] + lines[1:]) + "\n")
    for read in (read_wfdb, wfdb_info):
        with pytest.raises(ECGReadError, match=r"rec\.hea: the record line 'rec 12' states no sampling frequency"):
            read(tmp_path / "rec")


def test_read_wfdb_takes_micro_sign_units_from_the_header_text(tmp_path):
    """wfdb's header reader drops a non-ASCII letter: 'µV' (micro sign) or 'μV' (Greek mu) was read as 'V', a
    microvolt record scaled by 1e6. The units come from the header text (UTF-8, else latin-1)."""
    truth = _write_12_lead_wfdb(tmp_path, "ascii", units="uV", scale=1000.0)
    assert np.allclose(read_wfdb(tmp_path / "ascii").signal, truth, atol=2e-3)
    for name, unit, encoding in [("micro", "\u00b5V", "utf-8"), ("mu", "\u03bcV", "utf-8"),
                                 ("latin", "\u00b5V", "latin-1")]:
        _write_12_lead_wfdb(tmp_path, name, units="uV", scale=1000.0)
        hea = tmp_path / f"{name}.hea"
        hea.write_bytes(hea.read_text().replace("/uV", "/" + unit).encode(encoding))
        record = read_wfdb(tmp_path / name)
        assert np.allclose(record.signal, truth, atol=2e-3), (unit, encoding, np.ptp(record.signal[0]))


def test_read_wfdb_refuses_a_fixed_layout_record_with_leads_in_other_orders(tmp_path):
    """wfdb reads a fixed-layout multi-segment record by position and names the leads after one segment: a segment
    in another lead order (aVF before aVL) had its leads swapped without a word."""
    import wfdb

    mv = _write_12_lead_wfdb(tmp_path, "full")
    names = list(STANDARD_LEADS)
    kw = dict(fs=500, units=["mV"] * 12, fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
              write_dir=str(tmp_path))
    wfdb.wrsamp("rec_0001", sig_name=names, p_signal=mv[:, :2500].T, **kw)
    wfdb.wrsamp("rec_0002", sig_name=names, p_signal=mv[:, 2500:].T, **kw)
    (tmp_path / "rec.hea").write_text("rec/2 12 500 5000\nrec_0001 2500\nrec_0002 2500\n")
    same = read_wfdb(tmp_path / "rec")
    assert same.lead_names == names and np.allclose(same.signal, mv, atol=2e-3)
    other = names[:4] + ["aVF", "aVL"] + names[6:]
    wfdb.wrsamp("rec_0002", sig_name=other, p_signal=mv[[names.index(n) for n in other], 2500:].T, **kw)
    with pytest.raises(ECGReadError, match=r"rec: a fixed-layout multi-segment record whose segment rec_0002 lists"):
        read_wfdb(tmp_path / "rec")


def test_read_wfdb_compares_the_header_checksums(tmp_path):
    """The header's per-signal checksums were never compared: two records' signal files exchanged (same size) were
    read as each other's. Whole-record reads compare them; a piece (sampfrom/sampto) cannot (the windows path checks
    the record with check_wfdb_checksums: tests/test_windows.py), and all-zero checksums are placeholders."""
    _write_12_lead_wfdb(tmp_path, "a", seed=0)
    _write_12_lead_wfdb(tmp_path, "b", seed=1)
    read_wfdb(tmp_path / "a")
    da, db = tmp_path / "a.dat", tmp_path / "b.dat"
    bytes_a = da.read_bytes()
    da.write_bytes(db.read_bytes())
    db.write_bytes(bytes_a)
    with pytest.raises(ECGReadError, match=r"a: the samples do not match the header's checksums \(signal 0 \(I\) "
                                           r"in a\.dat: header -?\d+, samples -?\d+"):
        read_wfdb(tmp_path / "a")
    assert read_wfdb(tmp_path / "a", sampfrom=0, sampto=2500).signal.shape == (12, 2500)
    hea = tmp_path / "a.hea"
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join(lines[:1] + [" ".join(ln.split()[:6] + ["0"] + ln.split()[7:]) for ln in lines[1:]])
                   + "\n")
    assert read_wfdb(tmp_path / "a").signal.shape == (12, 5000)


def test_a_leading_none_does_not_turn_one_record_into_many():
    """A nested-list ECG whose first sample is None (JSON's null) was read as a batch of one-lead ECGs, and
    per-record lead names whose first entry is None as one name list for all records (helper:
    /tmp/hL/repro/leading_null.py, lead_names_first_none.py)."""
    from dbeta.pipeline_dbeta import _split_batch

    fe = DBetaFeatureExtractor()
    x = np.random.default_rng(0).normal(size=(12, 5000)).astype(np.float32) * 0.3
    rows = x.tolist()
    rows[0][0] = None
    out = fe(rows, sampling_rate=500)
    assert out["ecg_values"].shape == (1, 12, 5000)
    assert isinstance(_split_batch(rows), np.ndarray)  # one record, not a list of rows
    names = list(STANDARD_LEADS)
    batch = fe([x, x[::-1].copy(), x], sampling_rate=500, lead_names=[None, names[::-1], names])
    assert batch["ecg_values"].shape == (3, 12, 5000)
    np.testing.assert_allclose(batch["ecg_values"][1].numpy(), batch["ecg_values"][0].numpy(), atol=1e-6)
