"""Records of any length: the pipeline's windows (spans, scores equal to scoring each window alone, aggregates),
chunked WFDB reading, the errors, and the CLI's table and plot."""

import csv
import json

import dbeta.pipeline_dbeta as pipeline_dbeta
import numpy as np
import pytest
from dbeta.pipeline_dbeta import aggregate_scores, uncovered_samples, window_spans

from tests.tiny import ecg_batch, tiny_zero_shot_pipeline
from train.export import export_model

LABELS = ["NORM", "AFIB", "sinus bradycardia"]
NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def long_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """An ECG-like [12, seconds * 500] signal whose rate changes every 10 s, so windows differ."""
    pieces = [ecg_batch(1, samples=5000, seed=seed + k)[0].numpy() for k in range(int(np.ceil(seconds / 10)))]
    return np.concatenate(pieces, axis=1)[:, :int(round(seconds * 500))]


def write_wfdb(folder, name, signal, fs=500):
    import wfdb

    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=NAMES, p_signal=signal.T.astype(np.float64),
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    return folder / name


@pytest.fixture(scope="module")
def pipe():
    return tiny_zero_shot_pipeline()[2]


def test_window_spans():
    assert window_spans(100, 10, 10, 2) == [(s, s + 10) for s in range(0, 100, 10)]
    assert window_spans(100, 10, 5, 2) == [(s, s + 10) for s in range(0, 91, 5)]  # no window only re-covers the end
    # the tail is a full window ending at the end (a zero-padded 5-sample tail read as a slow rhythm, helper)
    assert window_spans(95, 10, 10, 2)[-2:] == [(80, 90), (85, 95)]
    assert window_spans(91, 10, 10, 2)[-1] == (81, 91)
    assert window_spans(7, 10, 10, 2) == [(0, 7)]  # shorter than one window: one window
    assert window_spans(1, 10, 10, 2) == []
    assert window_spans(100, 10, 30, 2) == [(0, 10), (30, 40), (60, 70), (90, 100)]  # gaps when stride > window
    assert uncovered_samples(100, window_spans(100, 10, 30, 2)) == 60  # was reported as 0
    assert uncovered_samples(95, window_spans(95, 10, 10, 2)) == 0
    assert window_spans(33, 5, 10, 2) == [(0, 5), (10, 15), (20, 25), (28, 33)]


def test_aggregate_rules():
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.6], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    np.testing.assert_allclose(aggregate_scores(scores, "mean"), scores.mean(axis=0))
    np.testing.assert_allclose(aggregate_scores(scores, "max"), [0.7, 0.8, 0.6])
    np.testing.assert_allclose(aggregate_scores(scores, "fraction"), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(aggregate_scores(scores, "fraction", multi_label=True), [0.75, 0.25, 0.25])


def test_windows_of_an_array_equal_scoring_each_window_alone(pipe):
    signal = long_signal(35)
    out = pipe(signal, sampling_rate=500, candidate_labels=LABELS, window_seconds=10, stride_seconds=10)
    assert [(w["start"], w["end"]) for w in out["windows"]] == [(0, 10), (10, 20), (20, 30), (25, 35)]
    for w in out["windows"]:
        alone = pipe(signal[:, int(w["start"] * 500):int(w["end"] * 500)], sampling_rate=500,
                     candidate_labels=LABELS)
        got = {d["label"]: d["score"] for d in w["scores"]}
        assert [d["label"] for d in w["scores"]] == LABELS
        assert got == pytest.approx({d["label"]: d["score"] for d in alone}, abs=1e-5)
    matrix = np.array([[d["score"] for d in w["scores"]] for w in out["windows"]])
    agg = {d["label"]: d["score"] for d in out["aggregate"]}
    assert agg == pytest.approx(dict(zip(LABELS, matrix.mean(axis=0))))
    assert out["leads"] == NAMES and out["duration"] == 35 and out["unscored_seconds"] == 0
    assert len({tuple(np.round(r, 6)) for r in matrix}) > 1  # the windows really differ
    with pytest.warns(UserWarning, match="5.00 s of signal per window, zero-padded to the model's 10 s input"):
        top = pipe(signal, sampling_rate=500, candidate_labels=LABELS, window_seconds=5, stride_seconds=2.5,
                   aggregate="fraction")
    assert len(top["windows"]) == 13 and top["aggregate_rule"] == "fraction"
    sparse = pipe(signal, sampling_rate=500, candidate_labels=LABELS, window_seconds=10, stride_seconds=12)
    assert [(w["start"], w["end"]) for w in sparse["windows"]] == [(0, 10), (12, 22), (24, 34), (25, 35)]
    assert sparse["unscored_seconds"] == 4  # 10-12 and 22-24: no window
    assert sum(d["score"] for d in top["aggregate"]) == pytest.approx(1.0)


def test_a_wfdb_file_is_read_in_chunks_and_scores_like_the_array(pipe, tmp_path, monkeypatch):
    signal = long_signal(120, seed=5)
    record = write_wfdb(tmp_path, "long", signal)
    from dbeta.processing_dbeta import read_ecg_file

    as_read = read_ecg_file(record).signal  # int16 quantised, as the windows will see it
    reads = []
    real = pipeline_dbeta.read_wfdb

    def spy(path, sampfrom=0, sampto=None):
        reads.append((sampfrom, sampto))
        return real(path, sampfrom=sampfrom, sampto=sampto)

    monkeypatch.setattr(pipeline_dbeta, "read_wfdb", spy)
    from_file = pipe(str(record), candidate_labels=LABELS, window_seconds=10, stride_seconds=5, chunk_seconds=30)
    from_array = pipe(as_read, sampling_rate=500, candidate_labels=LABELS, window_seconds=10, stride_seconds=5)
    assert len(reads) > 1 and all(b - a <= (30 + 10) * 500 for a, b in reads)  # never the whole record at once
    assert [(w["start"], w["end"]) for w in from_file["windows"]] == [
        (w["start"], w["end"]) for w in from_array["windows"]]
    for a, b in zip(from_file["windows"], from_array["windows"]):
        assert [d["score"] for d in a["scores"]] == pytest.approx([d["score"] for d in b["scores"]], abs=1e-5)


def test_a_wfdb_file_read_in_chunks_is_checked_against_its_checksums(pipe, tmp_path):
    """read_wfdb compares the header's checksums on whole reads only, and the windows path reads sample ranges: two
    long records' .dat files exchanged (same size) were scored as each other, and a sample damaged 100 s in was
    read as it stood. The whole record is checked, a chunk at a time, before any window is scored."""
    from dbeta.processing_dbeta import ECGReadError, check_wfdb_checksums

    a = write_wfdb(tmp_path, "a", long_signal(120, seed=1))
    write_wfdb(tmp_path, "b", long_signal(120, seed=2))
    check_wfdb_checksums(a, chunk_samples=7000)  # chunks that do not divide the record
    bytes_a = (tmp_path / "a.dat").read_bytes()
    (tmp_path / "a.dat").write_bytes((tmp_path / "b.dat").read_bytes())
    (tmp_path / "b.dat").write_bytes(bytes_a)
    with pytest.raises(ECGReadError, match=r"a: the samples do not match the header's checksums"):
        pipe(str(a), candidate_labels=LABELS, chunk_seconds=30)
    damaged = bytearray(bytes_a)
    at = (100 * 500 * 12 + 3) * 2  # lead 3 at 100 s, format 16: two bytes a sample, leads interleaved
    damaged[at] ^= 0x10
    (tmp_path / "a.dat").write_bytes(bytes(damaged))
    with pytest.raises(ECGReadError, match=r"checksums \(signal 3 \(aVR\) in a\.dat: header -?\d+, samples -?\d+\)"):
        pipe(str(a), candidate_labels=LABELS, chunk_seconds=30)


def test_a_multi_segment_record_scores_like_the_single_file(pipe, tmp_path):
    """Long recordings are often stored in segments; the header then names no leads itself (its segments do),
    and every window failed with "0 lead names for 12 leads"."""
    signal = long_signal(40, seed=7)
    whole = write_wfdb(tmp_path, "whole", signal)
    write_wfdb(tmp_path, "seg0", signal[:, :7000])
    write_wfdb(tmp_path, "seg1", signal[:, 7000:])
    (tmp_path / "multi.hea").write_text(f"multi/2 12 500 {signal.shape[1]}\nseg0 7000\nseg1 {signal.shape[1] - 7000}\n")
    a = pipe(str(tmp_path / "multi"), candidate_labels=LABELS, window_seconds=10, stride_seconds=10)
    b = pipe(str(whole), candidate_labels=LABELS, window_seconds=10, stride_seconds=10)
    assert len(a["windows"]) == 4 and all(w["scores"] for w in a["windows"])
    for x, y in zip(a["windows"], b["windows"]):
        assert [d["score"] for d in x["scores"]] == pytest.approx([d["score"] for d in y["scores"]], abs=1e-5)


def test_a_window_the_processor_refuses_is_kept_with_its_error_and_left_out_of_the_aggregate(pipe):
    signal = long_signal(30)
    signal[:, 5000:10000] = 0.0  # 10-20 s: every lead flat (electrodes off)
    out = pipe(signal, sampling_rate=500, candidate_labels=LABELS, window_seconds=10, aggregate="max")
    assert out["windows"][1]["scores"] is None and "flat signal" in out["windows"][1]["error"]
    assert out["n_windows_scored"] == 2
    matrix = np.array([[d["score"] for d in out["windows"][i]["scores"]] for i in (0, 2)])
    assert {d["label"]: d["score"] for d in out["aggregate"]} == pytest.approx(dict(zip(LABELS, matrix.max(0))))


def test_window_errors(pipe):
    signal = long_signal(20)
    call = dict(sampling_rate=500, candidate_labels=LABELS)
    with pytest.raises(ValueError, match="stride_seconds must be a positive number of seconds, got 0"):
        pipe(signal, window_seconds=10, stride_seconds=0, **call)
    with pytest.raises(ValueError, match="stride_seconds must be a positive number"):
        pipe(signal, window_seconds=10, stride_seconds=-5, **call)
    with pytest.raises(ValueError, match=r"window_seconds=30 is longer than the model's input \(10 s\)"):
        pipe(signal, window_seconds=30, **call)
    with pytest.raises(ValueError, match="aggregate must be one of mean, max, fraction"):
        pipe(signal, window_seconds=10, aggregate="median", **call)
    with pytest.raises(ValueError, match="shorter than the processor's minimum 2 s"):
        pipe(signal[:, :500], window_seconds=10, **call)
    with pytest.raises(TypeError, match="window_second"):
        pipe(signal, window_second=10, **call)
    # an array saved [samples, leads] was refused as "0.02 s of signal" (helper): its layout is named first
    with pytest.raises(ValueError, match=r"got 10000 rows \(it looks like \[samples, leads\]: pass ecg.T\)"):
        pipe(signal.T, window_seconds=10, **call)
    with pytest.raises(ValueError, match=r"2 lead names for 10000 leads \(rows\) \(it looks like"):
        pipe({"signal": signal[:2].T, "sampling_rate": 500, "lead_names": ["I", "II"]}, window_seconds=10,
             candidate_labels=LABELS)
    with pytest.raises(ValueError, match="stride_seconds must be at most 1e7 seconds"):  # was an OverflowError
        pipe(signal, window_seconds=10, stride_seconds=1e308, **call)
    with pytest.warns(UserWarning, match="7.00 s of signal, zero-padded to the model's 10 s input"):
        short = pipe(signal[:, :3500], window_seconds=10, **call)  # a window longer than the record: one window
    assert [(w["start"], w["end"]) for w in short["windows"]] == [(0, 7)]
    # a short record read whole is padded alike and said so; a full 10 s record is not
    with pytest.warns(UserWarning, match="3.00 s of signal, zero-padded to the model's 10 s input: the flat rest "
                                         "reads as missing beats"):
        pipe(signal[:, :1500], **call)
    import warnings

    with warnings.catch_warnings():  # nor is one a few samples short (rounding at odd rates: 19997 at 2000 Hz)
        warnings.simplefilter("error")
        pipe(signal[:, :5000], **call)
        pipe(signal[:, :4960], **call)


def test_cli_writes_the_window_table_json_and_plot(pipe, tmp_path):
    from eval.windows import main

    out_dir = export_model(pipe.model, tmp_path / "model", processor=pipe.processor)
    record = write_wfdb(tmp_path, "rec", long_signal(40, seed=9))
    result = main(["--model", str(out_dir), "--record", str(record), "--labels", *LABELS, "--window-seconds", "10",
                   "--stride-seconds", "10", "--output", str(tmp_path / "w.csv"), "--plot", str(tmp_path / "w.png"),
                   "--quiet"])
    rows = list(csv.DictReader(open(tmp_path / "w.csv")))
    assert [r["start_s"] for r in rows] == ["0", "10", "20", "30"]
    assert float(rows[2][LABELS[1]]) == pytest.approx(
        next(d["score"] for d in result["windows"][2]["scores"] if d["label"] == LABELS[1]), abs=1e-6)
    assert (tmp_path / "w.png").stat().st_size > 10_000
    main(["--model", str(out_dir), "--record", str(record), "--labels", *LABELS, "--aggregate", "max",
          "--output", str(tmp_path / "w.json"), "--quiet"])
    assert json.loads((tmp_path / "w.json").read_text())["aggregate_rule"] == "max"
    # a subset's name (argparse made ['limb'] of it: "unknown lead name 'limb'"; helper:
    # /tmp/hK/repro/cli_leads_named_subset.sh)
    limb = main(["--model", str(out_dir), "--record", str(record), "--labels", *LABELS, "--leads", "limb",
                 "--output", str(tmp_path / "limb.json"), "--quiet"])
    assert limb["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF"]
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(out_dir), "--record", str(record), "--labels", "AFIB", "--stride-seconds", "0",
              "--output", str(tmp_path / "x.csv"), "--quiet"])
    assert stop.value.code == 2


def test_cli_outputs_never_replace_the_record_the_model_or_each_other(pipe, tmp_path, capsys):
    """Refused before any work (exit 2), each file left as it was: a table written over the record's header or
    the model's config.json, a table and a plot on one path, a label spelt like one of the CSV's own columns."""
    from eval.windows import main

    out_dir = export_model(pipe.model, tmp_path / "model", processor=pipe.processor)
    record = write_wfdb(tmp_path, "rec", long_signal(20, seed=9))
    before = {p: p.read_bytes() for p in [*tmp_path.glob("rec.*"), out_dir / "config.json"]}
    base = ["--model", str(out_dir), "--record", str(record), "--quiet"]
    for extra, message in (
            (["--labels", *LABELS, "--output", str(tmp_path / "rec.hea")], "must be a .csv"),
            (["--labels", *LABELS, "--output", str(out_dir / "config.json")], "would replace a file in"),
            (["--labels", *LABELS, "--output", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.json")],
             "must be an image"),
            (["--labels", *LABELS, "--output", str(tmp_path / "a.csv"), "--plot", str(tmp_path / "a.csv")],
             "must be an image"),
            (["--labels", "error", "AFIB", "--output", str(tmp_path / "a.csv")], "label(s) error would share")):
        with pytest.raises(SystemExit) as stop:
            main(base + extra)
        assert stop.value.code == 2 and message in capsys.readouterr().err, extra
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "a.csv").exists()
    # a .npy record missing, truncated or holding objects: numpy tracebacks, exit 1 (helper); now exit 2 naming it
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")
    from eval.explain import main as explain_main

    for name in ("absent.npy", "objects.npy", "cut.npy"):
        for cli in (main, explain_main):
            argv = ["--model", str(out_dir), "--record", str(tmp_path / name), "--sampling-rate", "500",
                    "--labels", *LABELS, "--output", str(tmp_path / ("w.csv" if cli is main else "w.png"))]
            if cli is explain_main:
                argv += ["--label", LABELS[0]]
            with pytest.raises(SystemExit) as stop:
                cli(argv)
            err = capsys.readouterr().err
            assert stop.value.code == 2 and f"--record {tmp_path / name}: not a readable .npy array" in err, err


def test_window_benchmark_on_a_few_minutes(tmp_path):
    """benchmarks/window_speed.py end to end on 72 s (the 24 h run is opt-in by --hours)."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("window_speed", ROOT / "benchmarks" / "window_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    record = bench.write_long_record(tmp_path, "holter", 72)
    import wfdb

    assert wfdb.rdheader(str(record)).sig_len == 72 * 500
    assert wfdb.rdrecord(str(record), sampfrom=1000, sampto=1010).p_signal.shape == (10, 12)
    out = bench.run(0.02, ["small"], 4, 10.0, 10.0)
    small = out["results"]["small"]
    assert small["windows"] == 8 and small["windows_per_s"] > 0  # 7 full windows and the 2 s tail
    assert small["peak_rss_mb_after"] >= small["peak_rss_mb_before"] > 0


def test_stitched_record_for_the_demo(tmp_path):
    from eval.windows import stitch_records
    from train.synthetic.layouts import write_ptbxl_layout

    write_ptbxl_layout(tmp_path / "ptbxl", n=200, seed=1)
    out = stitch_records(tmp_path / "ptbxl", tmp_path / "long", classes=("SR", "AFIB"), per_class=2)
    import wfdb

    header = wfdb.rdheader(out["path"])
    assert header.sig_len == 4 * 5000 and [s["class"] for s in out["segments"]] == ["SR", "SR", "AFIB", "AFIB"]
    assert out["segments"][2]["start"] == 20.0
    with pytest.raises(ValueError, match="class 'XYZ' is not a rhythm class"):
        stitch_records(tmp_path / "ptbxl", tmp_path / "long2", classes=("XYZ",))


def test_nan_policy_is_a_call_keyword_of_every_scoring_path_and_of_the_clis(pipe, tmp_path):
    """A lead with no finite sample is refused with the advice nan_policy='zero', which no pipeline call and
    neither CLI could pass: it is now a call keyword (this call only) and --nan-policy. Zeroed, the lead scores
    as absent: the same scores as the record without it."""
    from eval.explain import main as explain_main
    from eval.windows import main as windows_main

    signal = long_signal(10, seed=3).astype(np.float32)
    dead = signal.copy()
    dead[3] = np.nan
    with pytest.raises(ValueError, match="lead aVR has no finite sample"):
        pipe(dead, sampling_rate=500, candidate_labels=LABELS)
    with pytest.warns(UserWarning, match="aVR"):
        zeroed = pipe(dead, sampling_rate=500, candidate_labels=LABELS, nan_policy="zero")
    keep = [i for i in range(12) if i != 3]
    with pytest.warns(UserWarning, match="aVR"):
        without = pipe({"signal": signal[keep], "sampling_rate": 500, "lead_names": [NAMES[i] for i in keep]},
                       candidate_labels=LABELS)
    assert [d["label"] for d in zeroed] == [d["label"] for d in without]
    assert [d["score"] for d in zeroed] == pytest.approx([d["score"] for d in without], abs=1e-6)
    with pytest.warns(UserWarning, match="aVR"):
        windows = pipe.windows(dead, candidate_labels=LABELS, sampling_rate=500, nan_policy="zero", progress=False)
    assert windows["n_windows_scored"] == 1 and "aVR" not in windows["leads"]
    with pytest.raises(ValueError, match="nan_policy must be one of interpolate, zero, raise, got 'zeros'"):
        pipe(dead, sampling_rate=500, candidate_labels=LABELS, nan_policy="zeros")
    with pytest.raises(ValueError, match="NaN/inf samples"):  # this call only: the processor keeps its own
        pipe(np.where(np.arange(5000) == 7, np.nan, signal), sampling_rate=500, candidate_labels=LABELS,
             nan_policy="raise")
    assert pipe.processor.feature_extractor.nan_policy == "interpolate"

    model_dir = export_model(pipe.model, tmp_path / "model", processor=pipe.processor)
    np.save(tmp_path / "dead.npy", dead)
    common = ["--model", str(model_dir), "--record", str(tmp_path / "dead.npy"), "--sampling-rate", "500",
              "--labels", *LABELS]
    with pytest.raises(SystemExit) as stop:
        windows_main([*common, "--output", str(tmp_path / "w.csv"), "--quiet"])
    assert stop.value.code == 2
    with pytest.warns(UserWarning, match="aVR"):
        result = windows_main([*common, "--output", str(tmp_path / "w.csv"), "--quiet", "--nan-policy", "zero"])
    assert result["aggregate"][0]["score"] == pytest.approx(zeroed[0]["score"], abs=1e-5)
    with pytest.warns(UserWarning, match="aVR"):
        explained = explain_main([*common, "--output", str(tmp_path / "e.png"), "--n-steps", "2",
                                  "--nan-policy", "zero"])
    assert "aVR" not in explained["leads"]


def test_the_window_table_keeps_times_of_long_recordings(tmp_path):
    """The CSV wrote times with `:g` (6 significant digits): windows of a 1.25-day record half a second apart shared
    one start, and a 14-day patch recording's read 1.20959e+06 (helper: /tmp/hK/repro/windows_csv_time_rounding.py)."""
    from eval.windows import write_window_table

    starts = [0.0, 107987.5, 107990.0, 1209587.5, 3 / 257]
    result = {"aggregate": [{"label": "AFIB", "score": 0.5}],
              "windows": [{"start": t, "end": t + 10, "scores": [{"label": "AFIB", "score": 0.5}]} for t in starts]}
    write_window_table(result, tmp_path / "w.csv")
    rows = list(csv.DictReader(open(tmp_path / "w.csv")))
    assert [r["start_s"] for r in rows] == ["0", "107987.5", "107990", "1209587.5", "0.011673"]
    assert [r["end_s"] for r in rows] == ["10", "107997.5", "108000", "1209597.5", "10.011673"]


def test_a_lead_lost_in_some_windows_is_named(pipe):
    """V2 flat after 10 s of 30: its windows scored it as a zero row (rightly), but `leads` listed it, no window
    said which leads it used and no warning came, where the same stretch scored alone warns (helper:
    /tmp/hK/repro/windows_partly_flat_lead.py)."""
    import warnings

    signal = long_signal(30, seed=4)
    signal[NAMES.index("V2"), 5000:] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pipe(signal, sampling_rate=500, candidate_labels=LABELS, window_seconds=10, progress=False)
    assert "V2" in result["leads"]  # used in the first window
    assert ["V2" in w["leads"] for w in result["windows"]] == [True, False, False]
    said = [str(w.message) for w in caught if "some windows" in str(w.message)]
    assert said and "V2 in 2 of 3 (from 10 s)" in said[0], [str(w.message) for w in caught]


def test_a_format_8_record_is_read_whole(pipe, tmp_path):
    """Format 8 stores first differences and wfdb starts a range read from the initial value: every chunk after the
    first was offset (up to 0.13 mV; the encoder's normalisation hides a constant offset, the samples do not), and
    the chunked checksum check refused a valid record longer than a chunk (helper:
    /tmp/hN/repro/format8_long_record_refused.py). Such a record is read whole."""
    import wfdb

    from dbeta.processing_dbeta import read_ecg_file

    d = np.round(long_signal(60, seed=3) * 100).astype(np.int64)  # 100 adu/mV; wfdb.wrsamp cannot write format 8
    steps = np.diff(d, axis=1, prepend=d[:, :1])  # the first stored difference is from the initial value: 0
    assert np.abs(steps).max() <= 127
    (tmp_path / "f8.dat").write_bytes(steps.T.astype(np.int8).tobytes())
    sums = [(int(c) + 32768) % 65536 - 32768 for c in d.sum(axis=1)]
    (tmp_path / "f8.hea").write_text(f"f8 12 500 {d.shape[1]}\n" + "".join(
        f"f8.dat 8 100/mV 8 0 {d[i, 0]} {sums[i]} 0 {name}\n" for i, name in enumerate(NAMES)))
    whole = read_ecg_file(tmp_path / "f8").signal
    piece = wfdb.rdrecord(str(tmp_path / "f8"), sampfrom=20000, sampto=20010).p_signal.T
    assert np.abs(piece - whole[:, 20000:20010]).max() > 0.01  # wfdb's own range read is offset
    from dbeta.processing_dbeta import check_wfdb_checksums

    check_wfdb_checksums(tmp_path / "f8", chunk_samples=7000)  # a valid record: was refused chunk by chunk
    source = pipeline_dbeta._RecordSource(str(tmp_path / "f8"))
    np.testing.assert_allclose(source.read(20000, 20010), whole[:, 20000:20010], atol=1e-6)
    assert pipe(str(tmp_path / "f8"), candidate_labels=LABELS, window_seconds=10, chunk_seconds=20,
                progress=False)["n_windows_scored"] == 6
