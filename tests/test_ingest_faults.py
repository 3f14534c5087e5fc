"""MIMIC-IV-ECG ingest under hostile or broken input and under SIGKILL (issues 12 and 13)."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dbeta.processing_dbeta import MIMIC_LEADS
from train import synthetic as syn
from train.mimic import RecordDropped, iter_record_list, load_prepared_mimic, mimic_iterable_dataset, read_record
from train.prepare_mimic import main as prepare_main

ROOT = Path(__file__).resolve().parents[1]
SEED = 5

# Files opened (symlinks resolved) while _OPENS["on"]: sys.addaudithook cannot be removed, so it is installed once.
_OPENS = {"on": False, "paths": []}


def _audit(event, args):
    if _OPENS["on"] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENS["paths"].append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _dropped(out):
    with open(out / "dropped.csv", newline="") as f:
        return list(csv.DictReader(f))


def _mimic(tmp_path, n=12, name="mimic"):
    return syn.write_mimic_layout(tmp_path / name, n, seed=SEED)


def _signal(n_leads=12):
    x = syn.generate_ecg("NORM", np.random.default_rng(1))[:n_leads]
    return syn.to_adc(x, 200.0)


# ----------------------------------------------------------------------------------------------------------------
# 1. paths leading outside the MIMIC folder
# ----------------------------------------------------------------------------------------------------------------


def test_paths_outside_the_mimic_folder_are_dropped_and_never_opened(tmp_path):
    root = _mimic(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    syn.write_wfdb("70000001", outside, _signal(), 500, MIMIC_LEADS, 200.0)  # a valid record, just not in MIMIC
    header, rows = _read_csv(root / "record_list.csv")
    # ../ escape, absolute path, a record folder symlinked outside, and a header naming a .dat outside
    rows[1][4] = "../outside/70000001"
    rows[3][4] = str(outside / "70000001")
    link = root / "files" / "p1999" / "p19999999" / "s79999999"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    rows[5][4] = "files/p1999/p19999999/s79999999/70000001"
    hea = (root / rows[7][4]).with_suffix(".hea")
    escape = os.path.relpath(outside / "70000001.dat", hea.parent)
    hea.write_text(hea.read_text().replace(f"{hea.stem}.dat ", f"{escape} "))
    _write_csv(root / "record_list.csv", header, rows)
    unsafe = {rows[i][1] for i in (1, 3, 5, 7)}

    out = tmp_path / "out"
    _OPENS.update(on=True, paths=[])
    try:
        code = prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet", "--chunk-size", "5"])
        streamed = {int(r["study_id"]) for r in mimic_iterable_dataset(root, num_shards=2)}
    finally:
        _OPENS["on"] = False
    assert code == 0
    assert not [p for p in _OPENS["paths"] if p.startswith(str(outside.resolve()))]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped"] == {"unsafe_path": 4} and summary["kept"] == len(rows) - 4
    assert {d["study_id"] for d in _dropped(out) if d["reason"] == "unsafe_path"} == unsafe
    assert not {int(s) for s in unsafe} & streamed and len(streamed) == len(rows) - 4


def test_a_symlinked_files_folder_is_allowed(tmp_path):
    """Keeping files/ on another disk (a symlink) is a normal set-up, not an escape."""
    root = _mimic(tmp_path, n=3)
    shutil.move(str(root / "files"), str(tmp_path / "disk2"))
    (root / "files").symlink_to(tmp_path / "disk2", target_is_directory=True)
    out = tmp_path / "out"
    assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["kept"] == 3


# ----------------------------------------------------------------------------------------------------------------
# 2. one broken CSV line costs one row
# ----------------------------------------------------------------------------------------------------------------


def test_unterminated_quote_costs_only_its_own_row(tmp_path):
    lines = ["subject_id,study_id,file_name,ecg_time,path"]
    for i in range(301):
        ecg_time = '"2180-07-23, 08:44:00"' if i == 7 else "2180-07-23 08:44:00"  # a legitimate quoted comma
        lines.append(f"{10000000 + i},{40000000 + i},{40000000 + i},{ecg_time},files/p1000/p1/s{i}/{40000000 + i}")
    lines[5] = lines[5].replace(",files/", ',"files/')  # data row 4 (line 6): a quote that never closes
    (tmp_path / "record_list.csv").write_text("\n".join(lines) + "\n")
    entries = list(iter_record_list(tmp_path))
    assert len(entries) == 301
    bad = [e for e in entries if e["status"]]
    assert [(e["index"], e["line"], e["status"]) for e in bad] == [(4, 6, "malformed_record_list_row")]
    assert "line 6" in bad[0]["detail"]
    assert entries[7]["ecg_time"] == "2180-07-23, 08:44:00" and entries[-1]["study_id"] == 40000300


def test_ingest_counts_every_csv_row_and_names_malformed_lines(tmp_path):
    root = _mimic(tmp_path)
    rl_header, rl = _read_csv(root / "record_list.csv")
    mm_header, mm = _read_csv(root / "machine_measurements.csv")
    mm[7][mm_header.index("report_0")] = "Sinus rhythm, rate 72"  # written quoted, must stay one field
    _write_csv(root / "machine_measurements.csv", mm_header, mm)
    _write_csv(root / "record_list.csv", rl_header, rl)
    for name, line in (("record_list.csv", 4), ("machine_measurements.csv", 6)):
        text = (root / name).read_text().splitlines()
        text[line - 1] = text[line - 1].replace(",", ',"', 1)
        (root / name).write_text("\n".join(text) + "\n")
    out = tmp_path / "out"
    assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read"] == len(rl)
    assert summary["machine_measurements_rows"] == len(mm) - 1
    assert summary["malformed_csv_lines"] == {"record_list.csv": [4], "machine_measurements.csv": [6]}
    assert summary["dropped"] == {"malformed_record_list_row": 1, "missing_report": 1}
    rows = {(d["reason"], d["line"]) for d in _dropped(out)}
    assert ("malformed_record_list_row", "4") in rows and ("missing_report", "6") in rows
    reports = {r["study_id"]: r["report"] for r in load_prepared_mimic(out)["train"]}
    reports.update({r["study_id"]: r["report"] for r in load_prepared_mimic(out)["validation"]})
    assert reports[int(mm[7][1])].startswith("sinus rhythm, rate 72. ")


def test_a_second_ingest_into_a_folder_in_use_is_refused(tmp_path, capsys):
    """Two ingests into one output published each other's chunk files (one died on a vanished .tmp file)."""
    from train.run_lock import RunLock

    root = _mimic(tmp_path, n=4)
    out = tmp_path / "out"
    with RunLock(out):
        assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet"]) == 2
        assert "is in use by another run" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet"]) == 0


def test_an_id_beyond_int64_costs_its_row_not_the_ingest(tmp_path):
    """The manifest is SQLite: a subject_id of 25 digits raised OverflowError there and ended the whole run."""
    root = _mimic(tmp_path, n=6)
    rl_header, rl = _read_csv(root / "record_list.csv")
    rl[1][rl_header.index("subject_id")] = "9" * 25
    _write_csv(root / "record_list.csv", rl_header, rl)
    mm_header, mm = _read_csv(root / "machine_measurements.csv")
    mm[2][mm_header.index("study_id")] = "-" + "9" * 25
    _write_csv(root / "machine_measurements.csv", mm_header, mm)
    out = tmp_path / "out"
    assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read"] == len(rl) and summary["dropped"] == {"malformed_record_list_row": 1, "missing_report": 1}
    assert any(d["reason"] == "malformed_record_list_row" and "does not fit a 64-bit integer" in d["detail"]
               for d in _dropped(out))


# ----------------------------------------------------------------------------------------------------------------
# 4. "nan" report fields, unusable CSVs, nothing kept
# ----------------------------------------------------------------------------------------------------------------


def test_nan_report_fields_count_as_empty(tmp_path):
    root = _mimic(tmp_path, n=4)
    header, mm = _read_csv(root / "machine_measurements.csv")
    first = header.index("report_0")
    mm[0][first + 1] = "nan"
    mm[1][first : first + 18] = ["NaN"] * 18
    _write_csv(root / "machine_measurements.csv", header, mm)
    out = tmp_path / "out"
    assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["dropped"] == {"empty_report": 1}
    ds = load_prepared_mimic(out)
    reports = [r for s in ds for r in ds[s]["report"]]
    assert len(reports) == 3 and not [r for r in reports if "nan" in r.split(". ") or r.endswith("nan")]


@pytest.mark.parametrize("case", ["header_only_record_list", "no_report_columns", "no_study_id_column",
                                  "nothing_kept"])
def test_unusable_input_is_an_error(tmp_path, case, capsys):
    root = _mimic(tmp_path, n=3)
    if case == "header_only_record_list":
        header, _ = _read_csv(root / "record_list.csv")
        _write_csv(root / "record_list.csv", header, [])
        expect = ["record_list.csv", "no data rows"]
    elif case in ("no_report_columns", "no_study_id_column"):
        header, mm = _read_csv(root / "machine_measurements.csv")
        keep = [i for i, h in enumerate(header) if not h.startswith("report_")]
        if case == "no_study_id_column":
            keep = [i for i, h in enumerate(header) if h != "study_id"]
        _write_csv(root / "machine_measurements.csv", [header[i] for i in keep], [[r[i] for i in keep] for r in mm])
        expect = ["machine_measurements.csv", "report_0" if case == "no_report_columns" else "study_id"]
    else:
        for hea in (root / "files").rglob("*.hea"):
            hea.unlink()
        expect = ["no usable record", "missing_record"]
    code = prepare_main(["--mimic-root", str(root), "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    for text in expect:
        assert text in err
    assert not (tmp_path / "out" / "dataset").exists()


def test_csv_encodings_a_spreadsheet_writes(tmp_path, capsys):
    """A machine_measurements.csv saved as cp1252 (Excel on Windows) was read with replacement characters: 10 of 74
    reports came out with U+FFFD and nothing counted it (helper). Now an error naming the file; and a UTF-8 file
    with a byte-order mark and every field quoted (pandas' utf-8-sig + QUOTE_ALL) reads like the plain one."""
    import csv as csv_module

    root = _mimic(tmp_path, n=3)
    header, mm = _read_csv(root / "machine_measurements.csv")
    first = header.index("report_0")
    with open(root / "machine_measurements.csv", "w", newline="", encoding="utf-8-sig") as f:
        writer = csv_module.writer(f, quoting=csv_module.QUOTE_ALL)
        writer.writerow(header)
        writer.writerows(mm)
    out = tmp_path / "bom"
    assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == 3 and summary["dropped"] == {}
    mm[1][first] = "fréquence élevée"
    with open(root / "machine_measurements.csv", "w", newline="", encoding="cp1252") as f:
        csv_module.writer(f).writerows([header] + mm)
    code = prepare_main(["--mimic-root", str(root), "--output", str(tmp_path / "cp1252"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "machine_measurements.csv: line 3 (byte 0xe9) is not UTF-8 text" in err and "iconv" in err
    assert not (tmp_path / "cp1252" / "dataset").exists()


# ----------------------------------------------------------------------------------------------------------------
# 5. WFDB records that are not what their header says
# ----------------------------------------------------------------------------------------------------------------


def _record(tmp_path, name="r1", n_leads=12, header=None):
    folder = tmp_path / "files" / name
    folder.mkdir(parents=True)
    syn.write_wfdb(name, folder, _signal(n_leads), 500, MIMIC_LEADS[:n_leads], 200.0)
    if header is not None:
        (folder / f"{name}.hea").write_text(header)
    return f"files/{name}/{name}"


def _dropped_reason(tmp_path, path):
    with pytest.raises(RecordDropped) as info:
        read_record(tmp_path, path)
    return info.value


def test_empty_header_is_a_clear_drop(tmp_path):
    drop = _dropped_reason(tmp_path, _record(tmp_path, header=""))
    assert drop.reason == "bad_header" and "empty header" in drop.detail


def test_header_with_missing_signal_lines_is_a_clear_drop(tmp_path):
    text = "r1 12 500 5000\n" + "".join(f"r1.dat 16 200(0)/mV 16 0 0 0 0 {n}\n" for n in MIMIC_LEADS[:2])
    drop = _dropped_reason(tmp_path, _record(tmp_path, header=text))
    assert drop.reason == "bad_header" and "12 signals but has 2 signal lines" in drop.detail


def test_two_lead_record_is_a_counted_drop(tmp_path):
    drop = _dropped_reason(tmp_path, _record(tmp_path, n_leads=2))
    assert drop.reason == "wrong_lead_count" and "2 signals, expected 12" in drop.detail


def test_a_record_with_every_lead_constant_is_a_counted_drop(tmp_path):
    """An all-zero record was kept and trained on as an ECG-report pair, the collator warning only "ecg[2]: flat
    signal" (helper); a record with one lead alive, or with NaN gaps in a constant lead, is kept."""
    folder = tmp_path / "files" / "r1"
    folder.mkdir(parents=True)
    syn.write_wfdb("r1", folder, np.zeros((5000, 12), np.int16), 500, MIMIC_LEADS, 200.0)  # [samples, leads] ADC
    drop = _dropped_reason(tmp_path, "files/r1/r1")
    assert drop.reason == "flat_record" and "every lead is constant" in drop.detail
    alive = _signal(12)
    alive[:, 1:] = 0
    alive[100:200, 3] = -32768  # a NaN gap in a constant lead
    folder = tmp_path / "files" / "r2"
    folder.mkdir(parents=True)
    syn.write_wfdb("r2", folder, alive, 500, MIMIC_LEADS, 200.0)
    assert read_record(tmp_path, "files/r2/r2")["signal"].shape == (12, 5000)


def test_format_212_header_on_16_bit_data_is_not_read(tmp_path):
    text = "r1 12 500 5000\n" + "".join(f"r1.dat 212 200(0)/mV 12 0 0 0 0 {n}\n" for n in MIMIC_LEADS)
    drop = _dropped_reason(tmp_path, _record(tmp_path, header=text))
    assert drop.reason == "header_data_mismatch" and "120000 bytes" in drop.detail and "format 212" in drop.detail


def test_non_finite_gain_is_a_drop(tmp_path):
    text = "r1 12 500 5000\n" + "".join(f"r1.dat 16 1e999(0)/mV 16 0 0 0 0 {n}\n" for n in MIMIC_LEADS)
    drop = _dropped_reason(tmp_path, _record(tmp_path, header=text))
    assert drop.reason == "bad_header" and "ADC gains" in drop.detail


def test_unreadable_files_are_drops_not_a_crash(tmp_path, monkeypatch):
    """An I/O error on one record (permissions, a failing disk) used to end the whole ingest."""
    path = _record(tmp_path)

    def failing_read(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(np, "fromfile", failing_read)
    drop = _dropped_reason(tmp_path, path)
    assert drop.reason == "unreadable_record" and "Permission denied" in drop.detail
    monkeypatch.setattr(Path, "read_bytes", failing_read)  # the header
    drop = _dropped_reason(tmp_path, path)
    assert drop.reason == "unreadable_record" and drop.detail.startswith(str(tmp_path / path) + ".hea")


def test_oversized_header_is_not_read_into_memory(tmp_path):
    path = _record(tmp_path)
    with open(tmp_path / f"{path}.hea", "ab") as f:
        f.write(b"#" * (2 << 20))
    drop = _dropped_reason(tmp_path, path)
    assert drop.reason == "bad_header" and "too large" in drop.detail


@pytest.mark.parametrize("fmt", ["212", "80"])
def test_packed_formats_of_the_right_size_are_read(tmp_path, fmt):
    """The size check matches what wfdb writes, so valid packed records are kept."""
    import wfdb

    folder = tmp_path / "files" / "r1"
    folder.mkdir(parents=True)
    x = syn.generate_ecg("NORM", np.random.default_rng(3))
    wfdb.wrsamp("r1", fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEADS), p_signal=x.T, fmt=[fmt] * 12,
                adc_gain=[50.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    rec = read_record(tmp_path, "files/r1/r1")
    ref = wfdb.rdrecord(str(folder / "r1"), physical=False).d_signal.T
    np.testing.assert_array_equal(rec["signal"], ref)


@pytest.mark.parametrize("fmt", ["212", "80"])
def test_a_packed_record_with_a_missing_sample_is_kept(tmp_path, fmt):
    """WFDB sums a missing sample as its format's own marker (212: -2048) when it writes the checksums: summed
    after the remap to int16's marker, a valid record was dropped as checksum_mismatch."""
    import wfdb

    from train.mimic import ADC_NAN

    folder = tmp_path / "files" / "r1"
    folder.mkdir(parents=True)
    x = syn.generate_ecg("NORM", np.random.default_rng(3))
    x[3, 100] = np.nan
    wfdb.wrsamp("r1", fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEADS), p_signal=x.T, fmt=[fmt] * 12,
                adc_gain=[50.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    rec = read_record(tmp_path, "files/r1/r1")
    assert rec["signal"][3, 100] == ADC_NAN and (rec["signal"] == ADC_NAN).sum() == 1


# ----------------------------------------------------------------------------------------------------------------
# 3 + 6. SIGKILL at any point, then the same command again
# ----------------------------------------------------------------------------------------------------------------

# Run by the test in one subprocess (imports paid once); each scenario runs the CLI in a forked child that patches
# one function to SIGKILL itself at its Nth matching call, before or after the real call.
_KILLER = r'''
import importlib, json, os, re, signal, sys, traceback
from train.prepare_mimic import main

def arm(target, match, nth, when):
    module, attr = target.split(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    real = getattr(owner, name)
    calls = [0]

    def patched(*args, **kwargs):
        hit = match is None or re.search(match, " ".join(str(a) for a in args))
        if hit:
            calls[0] += 1
        if hit and calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if hit and calls[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, patched)

codes = []
for sc in json.loads(sys.argv[2]):
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:  # a child must never fall through into the scenario loop
            arm(sc["target"], sc["match"], sc["nth"], sc["when"])
            code = main(sc["args"])
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
'''

# name -> (function, regex on its arguments, Nth matching call, kill before/after it)
KILL_POINTS = {
    "manifest_published": ("os:replace", r"manifest\.sqlite$", 1, "after"),
    "inside_a_chunk": ("train.prepare_mimic:build_row", None, 9, "before"),
    "after_a_chunk": ("train.prepare_mimic:process_chunk", None, 2, "after"),
    "inside_save_to_disk": ("datasets:Dataset.save_to_disk", None, 1, "after"),  # train split written, not validation
    "dataset_written_not_published": ("os:replace", r"dataset\.tmp \S*dataset$", 1, "before"),
    "dataset_published_shards_left": ("os:replace", r"dataset\.tmp \S*dataset$", 1, "after"),
    "inside_shard_clean_up": ("pathlib:Path.unlink", r"\.arrow$", 2, "after"),
    "before_summary": ("os:replace", r"\.summary\.partial-\d+\.json", 1, "before"),
}


def _same_dataset(a, b):
    for split in ("train", "validation"):
        assert a[split].to_pandas().drop(columns=["signal"]).equals(b[split].to_pandas().drop(columns=["signal"]))
        np.testing.assert_array_equal(
            np.stack(a[split].with_format("numpy")["signal"]), np.stack(b[split].with_format("numpy")["signal"])
        )


def test_sigkill_anywhere_then_rerun_equals_uninterrupted_run(tmp_path):
    root = _mimic(tmp_path, n=20)
    (root / (_read_csv(root / "record_list.csv")[1][2][4] + ".dat")).unlink()  # a drop too

    def args(out):
        return ["--mimic-root", str(root), "--output", str(out), "--chunk-size", "6", "--val-fraction", "0.3",
                "--seed", str(SEED), "--quiet"]

    ref = tmp_path / "ref"
    assert prepare_main(args(ref)) == 0
    ref_summary = json.loads((ref / "summary.json").read_text())
    ref_ds = load_prepared_mimic(ref)
    scenarios = [
        {"args": args(tmp_path / name), "target": t, "match": m, "nth": n, "when": w}
        for name, (t, m, n, w) in KILL_POINTS.items()
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(ROOT), json.dumps(scenarios)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert dict(zip(KILL_POINTS, codes)) == {name: -9 for name in KILL_POINTS}  # every kill point was reached

    strip = lambda s: {k: v for k, v in s.items() if k != "elapsed_s_last_run"}  # noqa: E731
    for name in KILL_POINTS:
        out = tmp_path / name
        assert prepare_main(args(out)) == 0, name
        assert strip(json.loads((out / "summary.json").read_text())) == strip(ref_summary), name
        _same_dataset(load_prepared_mimic(out), ref_ds)
        leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".trash-")]
        leftovers += [str(p) for p in (out / "work" / "chunks").glob("*.tmp")]
        leftovers += [str(p) for p in (out / "work" / "chunks").rglob("*.arrow")]
        assert not leftovers, (name, leftovers)


def _cut_after_first_batch(path):
    """What a copy cut short at a record-batch boundary leaves: the first batch, read back as a whole stream."""
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.py_buffer(path.read_bytes()))  # in memory: the file is rewritten below
    schema, first = reader.schema, reader.read_next_batch()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(first)


def test_a_damaged_work_file_is_named_with_the_way_out(tmp_path, monkeypatch, capsys):
    """A file of an unfinished ingest's work/ folder damaged (a disk fault, a power cut before the page cache reached
    the disk): the re-run said "error: Unterminated string ... (char 98)", a sqlite3 or a RuntimeError traceback,
    naming no file and not --restart; a finished output's damaged summary.json the same (helper: /tmp/hK/repro/
    ingest_damaged_work_files.sh)."""
    from train import prepare_mimic as pm

    root = _mimic(tmp_path, n=20)

    def stopped_before_assembly(out):
        def stop(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(pm, "assemble_dataset", stop)
        with pytest.raises(KeyboardInterrupt):
            pm.main(["--mimic-root", str(root), "--output", str(out), "--chunk-size", "6", "--quiet",
                     "--writer-batch-size", "2"])
        monkeypatch.undo()
        (out / "run.lock").unlink(missing_ok=True)
        return out

    base = stopped_before_assembly(tmp_path / "base")
    shard = next(p for p in sorted((base / "work" / "chunks").glob("chunk-*/train.arrow")))
    cases = {"work/chunks/chunk-00001/result.json": lambda p: p.write_text(p.read_text()[:40]),
             "work/settings.json": lambda p: p.write_text("{"), "work/inputs.json": lambda p: p.write_text(""),
             # read again only for a chunk still to do
             "work/manifest.sqlite": lambda p: (p.write_bytes(b"\0" * 4096),
                                                shutil.rmtree(p.parent / "chunks" / "chunk-00002")),
             shard.relative_to(base).as_posix(): _cut_after_first_batch}
    for name, damage in cases.items():
        out = shutil.copytree(base, tmp_path / name.replace("/", "_"))
        damage(out / name)
        capsys.readouterr()
        assert prepare_main(["--mimic-root", str(root), "--output", str(out), "--chunk-size", "6", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert str(out / name) in err and "--restart" in err and "Traceback" not in err, (name, err)
    done = tmp_path / "done"
    assert prepare_main(["--mimic-root", str(root), "--output", str(done), "--chunk-size", "6", "--quiet"]) == 0
    (done / "summary.json").write_text('{"settings": {')
    capsys.readouterr()
    assert prepare_main(["--mimic-root", str(root), "--output", str(done), "--chunk-size", "6", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{done / 'summary.json'} is damaged" in err and "--restart" in err, err
    # and read for training, the rows it records went unchecked without a word
    with pytest.warns(UserWarning, match="summary.json does not read .*not checked"):
        load_prepared_mimic(done)
