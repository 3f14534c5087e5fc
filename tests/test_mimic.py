"""MIMIC-IV-ECG ingest: drop accounting, subject split, resume, streaming, decoding, collation (synthetic data)."""

import csv
import json

import numpy as np
import pytest

from dbeta.processing_dbeta import MIMIC_LEADS, STANDARD_LEADS
from train import synthetic as syn
from train.mimic import (
    ADC_NAN,
    RecordDropped,
    MimicECGCollator,
    build_row,
    decode_signal,
    decode_signals,
    iter_record_list,
    load_prepared_mimic,
    mimic_dataloader,
    mimic_iterable_dataset,
    parse_wfdb_header,
    read_record,
    subject_split,
)
from train.prepare_mimic import main as prepare_main, prepare_mimic

N = 40
SEED = 11
BROKEN = {}  # reason -> study_id of the record broken that way (filled by the broken_root fixture)

EXPECTED_DROPS = {
    "malformed_record_list_row": 1,
    "duplicate_study": 1,
    "missing_report": 1,
    "empty_report": 1,
    "conflicting_reports": 1,
    "missing_record": 1,
    "missing_dat": 1,
    "bad_header": 1,
    "truncated_dat": 1,
    "header_data_mismatch": 1,
    "checksum_mismatch": 1,
    "wrong_lead_count": 1,
    "wrong_sampling_rate": 1,
    "all_nan_lead": 1,
}


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


def _write_rows(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _labels(root):
    with open(root / "synthetic_labels.csv", newline="") as f:
        return {r["study_id"]: r["label"] for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory):
    """A synthetic MIMIC-IV-ECG folder with one record broken in each way the ingest must survive."""
    root = syn.write_mimic_layout(tmp_path_factory.mktemp("mimic") / "mimic", N, seed=SEED)
    rl_header, rl = _read_csv(root / "record_list.csv")
    mm_header, mm = _read_csv(root / "machine_measurements.csv")
    path_of = {r[1]: root / r[4] for r in rl}
    study = [r[1] for r in rl]
    broken = {}

    def take(reason):
        s = study[len(broken) * 3 + 1]  # spread over subjects/chunks
        broken[reason] = s
        return s, path_of[s]

    s, p = take("truncated_dat")
    data = p.with_suffix(".dat").read_bytes()
    p.with_suffix(".dat").write_bytes(data[: len(data) // 2])
    s, p = take("missing_dat")
    p.with_suffix(".dat").unlink()
    s, p = take("missing_record")
    p.with_suffix(".dat").unlink()
    p.with_suffix(".hea").unlink()
    s, p = take("bad_header")
    p.with_suffix(".hea").write_text("this is not a WFDB header\n")
    s, p = take("header_data_mismatch")
    with open(p.with_suffix(".dat"), "ab") as f:
        f.write(b"\x00\x01" * 12)
    s, p = take("checksum_mismatch")
    raw = bytearray(p.with_suffix(".dat").read_bytes())
    raw[1000] ^= 0x40
    p.with_suffix(".dat").write_bytes(bytes(raw))
    x = syn.generate_ecg("NORM", np.random.default_rng(5))[[STANDARD_LEADS.index(n) for n in MIMIC_LEADS]]
    s, p = take("wrong_lead_count")
    syn.write_wfdb(p.name, p.parent, syn.to_adc(x[:8], 200.0), 500, MIMIC_LEADS[:8], 200.0)
    s, p = take("wrong_sampling_rate")
    syn.write_wfdb(p.name, p.parent, syn.to_adc(x[:, ::2], 200.0), 250, MIMIC_LEADS, 200.0)
    s, p = take("all_nan_lead")
    y = x.copy()
    y[4] = np.nan
    syn.write_wfdb(p.name, p.parent, syn.to_adc(y, 200.0), 500, MIMIC_LEADS, 200.0)
    # kept despite a NaN run (the processor repairs it)
    s, p = take("partial_nan")
    y = x.copy()
    y[7, 1000:1100] = np.nan
    syn.write_wfdb(p.name, p.parent, syn.to_adc(y, 200.0), 500, MIMIC_LEADS, 200.0)

    s = take("empty_report")[0]
    s_mm = take("missing_report")[0]  # its machine_measurements row is malformed
    for row in mm:
        if row[1] == s:
            for i in range(4, 22):
                row[i] = ""
    mm = [row if row[1] != s_mm else row[:3] for row in mm]
    # a study listed twice with two reports: which one describes its ECG is unknowable (the first was kept silently)
    s_two = take("conflicting_reports")[0]
    row = list(next(r for r in mm if r[1] == s_two))
    row[4] = "atrial fibrillation" if row[4] != "atrial fibrillation" else "sinus rhythm"
    mm.append(row)
    mm.append(list(next(r for r in mm if r[1] == study[2])))  # listed twice, the same report: kept
    _write_rows(root / "machine_measurements.csv", mm_header, mm)
    rl.insert(5, ["not-a-number", "garbage", "x"])
    dup = next(r for r in rl if r[1] == study[-1])
    rl.append(list(dup))
    _write_rows(root / "record_list.csv", rl_header, rl)
    broken["duplicate_study"] = dup[1]
    BROKEN.clear()
    BROKEN.update(broken)
    return root


@pytest.fixture(scope="module")
def prepared(broken_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    summary = prepare_mimic(broken_root, out, num_proc=1, val_fraction=0.3, seed=SEED, chunk_size=8, progress=False)
    return out, summary


def _rows_by_study(ds_dict):
    rows = {}
    for split in ds_dict:
        for r in ds_dict[split].with_format("numpy"):
            rows[int(r["study_id"])] = (split, r)
    return rows


def test_ingest_summary_counts(prepared, broken_root):
    out, summary = prepared
    assert summary["read"] == N + 2  # + malformed row + duplicate row
    assert summary["dropped"] == EXPECTED_DROPS
    assert summary["kept"] == N + 2 - sum(EXPECTED_DROPS.values())
    assert summary["malformed_csv_rows"] == {"record_list.csv": 1, "machine_measurements.csv": 1}
    assert json.loads((out / "summary.json").read_text())["dropped"] == EXPECTED_DROPS
    with open(out / "dropped.csv", newline="") as f:
        dropped = list(csv.DictReader(f))
    assert len(dropped) == sum(EXPECTED_DROPS.values())
    by_reason = {d["reason"]: d["study_id"] for d in dropped}
    for reason, study in BROKEN.items():
        if reason != "partial_nan" and reason != "duplicate_study":
            assert by_reason[reason] == study, reason
    ds = load_prepared_mimic(out)
    assert sum(len(ds[s]) for s in ds) == summary["kept"]
    assert int(BROKEN["partial_nan"]) in _rows_by_study(ds)
    # the straight-from-the-folder pretraining path leaves out what ingest drops before reading a signal
    from train.pretrain_data import mimic_entries

    splits, skipped = mimic_entries(broken_root, SEED, 0.3)
    assert skipped["conflicting_reports"] == 1 and skipped["duplicate_study"] == 1
    assert int(BROKEN["conflicting_reports"]) not in {s for d in splits.values() for s in d["study_id"]}


def test_subject_level_split(prepared):
    out, summary = prepared
    ds = load_prepared_mimic(out)
    train = set(ds["train"]["subject_id"])
    val = set(ds["validation"]["subject_id"])
    assert train and val and not (train & val)
    assert summary["splits"]["train"] == {"records": len(ds["train"]), "subjects": len(train)}
    assert summary["splits"]["validation"] == {"records": len(ds["validation"]), "subjects": len(val)}
    listed = {int(x) for x in (out / "validation_subjects.txt").read_text().split()}
    assert listed == val
    for s in train:
        assert subject_split(s, SEED, 0.3) == "train"
    for s in val:
        assert subject_split(s, SEED, 0.3) == "validation"


def test_schema_and_decode_round_trip(prepared, broken_root):
    import wfdb

    out, _ = prepared
    ds = load_prepared_mimic(out)
    assert ds["train"].features["signal"].shape == (12, 5000) and ds["train"].features["signal"].dtype == "int16"
    rows = _rows_by_study(ds)
    for study, (_, row) in list(rows.items())[:6] + [(int(BROKEN["partial_nan"]), rows[int(BROKEN["partial_nan"])])]:
        assert list(row["lead_names"]) == list(MIMIC_LEADS)
        assert float(row["sampling_rate"]) == 500.0
        rec = wfdb.rdrecord(str(broken_root / str(row["path"])))
        ref = rec.p_signal.T
        got = decode_signal(row)
        assert got.dtype == np.float32 and got.shape == (12, 5000)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        ok = ~np.isnan(ref)
        assert np.abs(got[ok] - ref[ok]).max() < 1e-6
    nan_row = rows[int(BROKEN["partial_nan"])][1]
    assert (nan_row["signal"][7, 1000:1100] == ADC_NAN).all()
    # decode works on python-list rows (the default datasets format) too
    plain = ds["train"][0]
    np.testing.assert_array_equal(decode_signal(plain), decode_signal(ds["train"].with_format("numpy")[0]))


def test_processor_turns_rows_into_standard_order(prepared, broken_root):
    out, _ = prepared
    ds = load_prepared_mimic(out)["train"].with_format("numpy")
    labels = _labels(broken_root)
    _, rl = _read_csv(broken_root / "record_list.csv")
    index_of = {}
    for r in rl:
        if r[1].isdigit():
            index_of.setdefault(r[1], len(index_of))
    rows = [ds[i] for i in range(4)]
    batch = MimicECGCollator()(rows)
    ecg = batch["ecg_values"]
    assert tuple(ecg.shape) == (4, 12, 5000) and str(ecg.dtype) == "torch.float32"
    assert batch["report"] == [r["report"] for r in rows]
    for b, row in enumerate(rows):
        study = str(int(row["study_id"]))
        x = syn.generate_ecg(labels[study], syn._record_rng(SEED, index_of[study]))  # standard order
        assert np.abs(ecg[b].numpy() - x).max() <= 0.5 / 200 + 1e-6
        stored = decode_signal(row)  # MIMIC order: aVF at index 4, aVL at index 5
        np.testing.assert_array_equal(ecg[b, STANDARD_LEADS.index("aVL")].numpy(), stored[MIMIC_LEADS.index("aVL")])
        np.testing.assert_array_equal(ecg[b, STANDARD_LEADS.index("aVF")].numpy(), stored[MIMIC_LEADS.index("aVF")])
    # NaN runs are repaired by the processor
    nan_study = int(BROKEN["partial_nan"])
    full = load_prepared_mimic(out)
    row = _rows_by_study(full)[nan_study][1]
    repaired = MimicECGCollator()([row])["ecg_values"]
    assert bool(repaired.isfinite().all())


def test_streaming_rows_equal_prepared_rows(prepared, broken_root):
    out, _ = prepared
    prepared_rows = _rows_by_study(load_prepared_mimic(out))
    stream = mimic_iterable_dataset(broken_root, num_shards=3)
    streamed = {int(r["study_id"]): r for r in stream.with_format("numpy")}
    assert streamed.keys() == prepared_rows.keys()
    for study, row in streamed.items():
        ref = prepared_rows[study][1]
        assert set(row) == set(ref)
        for key in row:
            np.testing.assert_array_equal(np.asarray(row[key]), np.asarray(ref[key]), err_msg=key)
    assert stream.features == load_prepared_mimic(out)["train"].features
    limited = list(mimic_iterable_dataset(broken_root, limit=4, num_shards=2))
    assert 0 < len(limited) <= 4


def stop_after_chunks(monkeypatch, k: int) -> None:
    """Interrupt the ingest (as Ctrl-C would) when it starts its (k+1)-th chunk (one process: chunks run in turn)."""
    import train.prepare_mimic as pm

    real, calls = pm.process_chunk, []

    def counted(task):
        if len(calls) == k:
            raise KeyboardInterrupt
        calls.append(task)
        return real(task)

    monkeypatch.setattr(pm, "process_chunk", counted)


def test_resume_matches_uninterrupted_run(broken_root, prepared, tmp_path, monkeypatch):
    ref_out, ref_summary = prepared
    out = tmp_path / "resumed"
    kwargs = dict(val_fraction=0.3, seed=SEED, chunk_size=8, progress=False)
    with monkeypatch.context() as patch:
        stop_after_chunks(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            prepare_mimic(broken_root, out, num_proc=1, **kwargs)
    done = sorted(p.name for p in (out / "work" / "chunks").iterdir())
    assert done == ["chunk-00000", "chunk-00001"] and not (out / "summary.json").exists()
    # a chunk that was being written when the process died is redone
    (out / "work" / "chunks" / "chunk-00002.tmp").mkdir()
    (out / "work" / "chunks" / "chunk-00002.tmp" / "train.arrow").write_bytes(b"partial")
    # other settings are refused instead of mixing two ingests
    with pytest.raises(ValueError, match="other settings"):
        prepare_mimic(broken_root, out, num_proc=1, **{**kwargs, "seed": SEED + 1})
    first = json.loads((out / "work" / "chunks" / "chunk-00000" / "result.json").read_text())
    summary = prepare_mimic(broken_root, out, num_proc=2, **kwargs)
    assert json.loads((out / "work" / "chunks" / "chunk-00000" / "result.json").read_text()) == first  # not redone
    strip = lambda s: {k: v for k, v in s.items() if k != "elapsed_s_last_run"}  # noqa: E731
    assert strip(summary) == strip(ref_summary)
    a, b = load_prepared_mimic(ref_out), load_prepared_mimic(out)
    for split in ("train", "validation"):
        assert a[split].to_pandas().drop(columns=["signal"]).equals(b[split].to_pandas().drop(columns=["signal"]))
        np.testing.assert_array_equal(
            np.stack(a[split].with_format("numpy")["signal"]), np.stack(b[split].with_format("numpy")["signal"])
        )
    # a finished output is not rebuilt
    assert prepare_mimic(broken_root, out, num_proc=1, **kwargs)["settings"] == summary["settings"]


def test_cli_stop_and_resume(broken_root, tmp_path, monkeypatch):
    out = tmp_path / "cli"
    args = ["--mimic-root", str(broken_root), "--output", str(out), "--chunk-size", "16", "--quiet", "--limit", "30",
            "--num-proc", "1"]
    with monkeypatch.context() as patch:
        stop_after_chunks(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            prepare_main(args)
    assert not (out / "summary.json").exists()
    assert prepare_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read"] == 30 and summary["dataset"] == "dataset"
    ds = load_prepared_mimic(out)
    assert not list((out / "work" / "chunks").rglob("*.arrow"))  # shards removed once OUTPUT/dataset holds the data
    assert len(ds["train"]) + len(ds["validation"]) == summary["kept"]
    assert prepare_main(["--mimic-root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x"), "--quiet"]) == 2


def test_record_list_parsing(broken_root):
    entries = list(iter_record_list(broken_root))
    assert len(entries) == N + 2
    assert [e["status"] for e in entries].count("malformed_record_list_row") == 1
    assert [e["status"] for e in entries].count("duplicate_study") == 1
    entry = next(e for e in entries if e["status"] is None)
    row = build_row(broken_root, entry, "sinus rhythm")
    assert row["signal"].dtype == np.int16 and row["signal"].shape == (12, 5000)
    assert row["adc_gain"].tolist() == [200.0] * 12 and row["baseline"].tolist() == [0] * 12


def test_header_parser_matches_wfdb(tmp_path):
    import wfdb

    headers = {
        "mimic": "40689238 12 500 5000 08:44:00 23/07/2180\n"
        + "".join(f"40689238.dat 16 200.0(0)/mV 16 0 -13 -5163 0 {n}\n" for n in MIMIC_LEADS),
        "ptbxl": "00001_hr 12 500 5000\n"
        + "".join(f"00001_hr.dat 16 1000.0(0)/mV 16 0 -119 1508 0 {n}\n" for n in syn.PTBXL_HEADER_LEADS),
        "defaults": "# a comment\nrec 2 360 650000\nrec.dat 212 200 11 1024 995 -22131 0 MLII\nrec.dat 212 200 11 1024 1011 20052 0 V5\n",
        "units_baseline": "r 3 250\nr.dat 16 1000(-5)/uV 12 0\nr.dat 16\nr.dat 16 0.5/mV 16 0 0 0 0 lead with spaces\n",
    }
    for name, text in headers.items():
        (tmp_path / f"{name}.hea").write_text(text)
        mine = parse_wfdb_header(text)
        ref = wfdb.rdheader(str(tmp_path / name))
        for field in ("n_sig", "fs", "sig_len", "file_name", "fmt", "baseline", "units", "adc_res",
                      "adc_zero", "init_value", "checksum", "block_size", "sig_name"):
            assert getattr(mine, field) == getattr(ref, field), (name, field, getattr(mine, field), getattr(ref, field))
        # an absent gain stays 0 ("uncalibrated") where wfdb substitutes its default of 200
        assert [g or 200.0 for g in mine.adc_gain] == ref.adc_gain, name
    assert parse_wfdb_header(headers["units_baseline"]).adc_gain == [1000.0, 0.0, 0.5]
    with pytest.raises(ValueError):
        parse_wfdb_header("multi/3 2 500 1000\n")


def test_uncalibrated_or_rateless_headers_are_dropped(tmp_path):
    """The ingest read an ADC gain of 0 or none (the WFDB spec's "uncalibrated") as 200 adu/mV, as wfdb does: a
    record stored at 1000 adu/mV entered the corpus 5x too large. A record line without a rate was read at 250 Hz
    and dropped as a 250 Hz record. Both are dropped now, saying why."""
    x = syn.generate_ecg("NORM", np.random.default_rng(2))[[STANDARD_LEADS.index(n) for n in MIMIC_LEADS]]
    folder = tmp_path / "files" / "p1000" / "p10000001" / "s40000001"
    folder.mkdir(parents=True)
    syn.write_wfdb("40000001", folder, syn.to_adc(x, 1000.0), 500, MIMIC_LEADS, 1000.0)
    hea = folder / "40000001.hea"
    path = "files/p1000/p10000001/s40000001/40000001"
    assert read_record(tmp_path, path)["adc_gain"].tolist() == [1000.0] * 12
    lines = hea.read_text().splitlines()
    for gain in ("0", "0.0(0)/mV"):  # (an absent gain leaves no lead name either: parse_wfdb_header's test)
        sig = lines[3].split()  # the third signal, lead III: file, format, gain(baseline)/units, ...
        sig[2] = gain
        hea.write_text("\n".join(lines[:3] + [" ".join(sig)] + lines[4:]) + "\n")
        with pytest.raises(RecordDropped, match=r"ADC gain 0 or absent for \['III'\]") as err:
            read_record(tmp_path, path)
        assert err.value.reason == "uncalibrated"
        # the same through wfdb's reading, which a header this module's parser refuses falls back to (a stray
        # token after the record line's date): wfdb fills in 200 (helper: /tmp/hN/repro/uncalibrated_via_wfdb_
        # fallback.py)
        hea.write_text("\n".join([lines[0] + " 12:00:00 01/01/2020 x"] + lines[1:3] + [" ".join(sig)] + lines[4:])
                       + "\n")
        with pytest.raises(RecordDropped, match=r"ADC gain 0 or absent for \['III'\]"):
            read_record(tmp_path, path)
    record_line = lines[0].split()
    hea.write_text("\n".join([" ".join(record_line[:2])] + lines[1:]) + "\n")
    with pytest.raises(RecordDropped, match="states no sampling frequency") as err:
        read_record(tmp_path, path)
    assert err.value.reason == "wrong_sampling_rate"


def test_read_record_microvolt_units(tmp_path):
    """Units other than mV are folded into adc_gain, so decode_signal still returns millivolts."""
    import wfdb

    x = syn.generate_ecg("NORM", np.random.default_rng(2))[[STANDARD_LEADS.index(n) for n in MIMIC_LEADS]]
    folder = tmp_path / "files" / "p1000" / "p10000001" / "s40000001"
    folder.mkdir(parents=True)
    wfdb.wrsamp("40000001", fs=500, units=["uV"] * 12, sig_name=list(MIMIC_LEADS), p_signal=(x * 1000).T.astype(np.float64),
                fmt=["16"] * 12, adc_gain=[1.0] * 12, baseline=[10] * 12, write_dir=str(folder))
    rec = read_record(tmp_path, "files/p1000/p10000001/s40000001/40000001")
    np.testing.assert_allclose(rec["adc_gain"], 1000.0)
    got = decode_signal(rec)
    assert np.abs(got - x).max() <= 0.5e-3 + 1e-6
    # the same units spelt 'µV' in a UTF-8 header were read as 'ÂµV' and the record dropped as bad_units (helper:
    # /tmp/hM/repro/ingest_utf8_micro_volt_header.sh); read_wfdb reads them as microvolts
    hea = folder / "40000001.hea"
    hea.write_bytes(hea.read_text().replace("/uV", "/µV").encode("utf-8"))
    again = read_record(tmp_path, "files/p1000/p10000001/s40000001/40000001")
    np.testing.assert_array_equal(again["adc_gain"], rec["adc_gain"])


def test_arrow_batches_and_dataloader(prepared):
    out, _ = prepared
    ds = load_prepared_mimic(out)["train"]
    rows = [ds.with_format("numpy")[i] for i in range(5)]
    table = ds.with_format("arrow")[list(range(5))]
    a, b = MimicECGCollator()(rows), MimicECGCollator()(table)
    np.testing.assert_array_equal(a["ecg_values"].numpy(), b["ecg_values"].numpy())
    assert a["report"] == b["report"] and a["study_id"].tolist() == b["study_id"].tolist()
    batched = decode_signals(np.stack([r["signal"] for r in rows]), np.stack([r["adc_gain"] for r in rows]),
                             np.stack([r["baseline"] for r in rows]))
    np.testing.assert_allclose(batched, np.stack([decode_signal(r) for r in rows]), rtol=1e-6, atol=1e-6)
    seen = []
    for batch in mimic_dataloader(ds, batch_size=4, shuffle=True, seed=1):
        assert batch["ecg_values"].shape[1:] == (12, 5000)
        seen += batch["study_id"].tolist()
    assert sorted(seen) == sorted(ds["study_id"])


def test_a_resume_over_changed_inputs_is_refused(broken_root, tmp_path, monkeypatch, capsys):
    """A resumed ingest kept its finished chunks' rows and drops: after a partial download finished (30 .dat files
    arrived) or a CSV line was fixed, it exited 0 with the old drops (helper: 44 kept where a fresh ingest keeps
    75). Refused now, naming what changed."""
    import shutil

    root = tmp_path / "mimic"
    shutil.copytree(broken_root, root)
    out = tmp_path / "out"
    kwargs = dict(val_fraction=0.3, seed=SEED, chunk_size=8, progress=False, num_proc=1)
    with monkeypatch.context() as patch:
        stop_after_chunks(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            prepare_mimic(root, out, **kwargs)
    first = json.loads((out / "work" / "chunks" / "chunk-00000" / "result.json").read_text())
    missing = [r for r in first["dropped_rows"] if r[4] == "missing_dat"]
    assert missing, "the fixture's missing .dat should fall in the first chunk"
    dat = root / f"{missing[0][3]}.dat"
    dat.write_bytes(b"\0" * 10)  # the download caught up
    with pytest.raises(ValueError, match=r"1 record\(s\) missing when this ingest started are there now"):
        prepare_mimic(root, out, **kwargs)
    dat.unlink()
    # a download under way left a short .dat, dropped as truncated; finished since, it stayed dropped (helper)
    chunks = sorted((out / "work" / "chunks").glob("*/result.json"))
    short = [r for c in chunks for r in json.loads(c.read_text())["dropped_rows"] if r[4] == "truncated_dat"]
    assert short, "the fixture's truncated .dat should fall in the finished chunks"
    short_dat = root / f"{short[0][3]}.dat"
    data = short_dat.read_bytes()
    import os

    before = short_dat.stat()
    short_dat.write_bytes(data + data)  # the rest arrived, stamped with the server's older time (wget -N)
    os.utime(short_dat, (before.st_atime - 86400 * 900, before.st_mtime - 86400 * 900))
    with pytest.raises(ValueError, match=r"1 record\(s\) dropped for their files have changed since .*a download "
                                         "finished"):
        prepare_mimic(root, out, **kwargs)
    short_dat.write_bytes(data)
    os.utime(short_dat, ns=(before.st_atime_ns, before.st_mtime_ns))
    csv_path = root / "machine_measurements.csv"
    csv_path.write_text(csv_path.read_text() + "\n")
    with pytest.raises(ValueError, match="machine_measurements.csv under .* changed since this ingest started"):
        prepare_mimic(root, out, **kwargs)
    done = prepare_mimic(root, out, restart=True, **kwargs)
    assert done["kept"] and done["inputs"]["machine_measurements.csv"][0] == csv_path.stat().st_size
    # a finished dataset is not rebuilt behind the user's back, but a change of its CSVs is said
    csv_path.write_text(csv_path.read_text() + "\n")
    assert prepare_mimic(root, out, **{**kwargs, "progress": True})["kept"] == done["kept"]
    assert "changed since" in capsys.readouterr().err


def test_reports_differing_only_in_spacing_are_one_report(tmp_path):
    """A study listed twice whose reports differ only by a doubled space (or a tab) was dropped as
    conflicting_reports, though N3S and the tokenizer read them as one text (helper:
    /tmp/hM/repro/whitespace_only_conflicting_reports.sh). Reports are kept with whitespace collapsed."""
    from train.mimic import read_reports

    header = ["subject_id", "study_id", "cart_id"] + [f"report_{i}" for i in range(18)]
    rows = [["1", "11", "0", "Sinus rhythm", "Normal ECG"] + [""] * 16,
            ["1", "11", "0", "Sinus  rhythm", "Normal\tECG "] + [""] * 16,
            ["2", "22", "0", "Sinus rhythm"] + [""] * 17,
            ["2", "22", "0", "Atrial fibrillation"] + [""] * 17]
    with open(tmp_path / "machine_measurements.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header] + rows)
    reports, conflicting = read_reports(tmp_path)
    assert conflicting == {22}
    assert reports[11] == "sinus rhythm. normal ecg"


def test_older_ingest_format_is_used_with_a_warning_naming_the_changes(prepared, tmp_path):
    import shutil
    import warnings

    from train.prepare_mimic import FORMAT_VERSION
    from train.pretrain_data import load_splits

    out = tmp_path / "prepared"
    shutil.copytree(prepared[0], out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current format loads without a word
        load_prepared_mimic(out)
        load_splits(out / "dataset")
    summary = json.loads((out / "summary.json").read_text())
    summary["settings"]["format_version"] = FORMAT_VERSION - 2
    (out / "summary.json").write_text(json.dumps(summary))
    for load in (lambda: load_prepared_mimic(out), lambda: load_splits(out / "dataset"), lambda: load_splits(out)):
        with pytest.warns(UserWarning, match=f"ingest format {FORMAT_VERSION - 2}") as caught:
            ds = load()
        message = str(caught[0].message)
        assert f"({FORMAT_VERSION}) records with an ADC gain of 0" in message and "--restart" in message
        assert f"({FORMAT_VERSION - 1}) a study with two different reports" in message
        assert sum(len(ds[s]) for s in ds) == summary["kept"]
    summary["settings"]["format_version"] = 0  # no such format: still a warning, not a KeyError
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.warns(UserWarning, match="ingest format 0; this code writes"):
        load_prepared_mimic(out)
    summary["settings"]["format_version"] = FORMAT_VERSION + 1  # a package older than the ingest
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.warns(UserWarning, match=f"ingest format {FORMAT_VERSION + 1}, newer than this code's"):
        load_prepared_mimic(out)


def test_load_prepared_mimic_refuses_a_split_file_cut_short(prepared, tmp_path):
    """The public loader checked the split sizes only, so a file cut short whose summary.json was lost or rewritten
    read as a shorter split; pretraining's check alone looked at the files (helper: /tmp/hR/repro/
    two_owners_of_the_prepared_dataset_check.py). One check now serves both."""
    import shutil

    out = shutil.copytree(prepared[0], tmp_path / "prepared")
    (out / "summary.json").unlink()
    arrow = next((out / "dataset" / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-8])
    with pytest.raises(ValueError, match="is cut short") as err:
        load_prepared_mimic(out)
    assert "data.dataset" not in str(err.value)  # not pretraining's setting: the folder is named
