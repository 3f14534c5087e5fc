"""Data-path speed: synthetic generation, MIMIC-IV-ECG ingest (records/s, peak RSS), prepared-dataset read speed.

    python -m benchmarks.data_speed [--n 2000] [--num-proc 2] [--batch-size 32] [--workdir DIR]

1. writes N SYNTHETIC records in the MIMIC-IV-ECG layout (train/synthetic.py) to a temp dir;
2. runs `python -m train.prepare_mimic` in a child process at N/4 and at N records and reports ingest records/s and
   peak memory (ru_maxrss of the children = the largest single process; plus, sampled from /proc, the largest
   anonymous RSS of any process: file-backed pages of the memory-mapped Arrow files are page cache, not heap);
3. reads the prepared train split into collated float32 [B, 12, 5000] batches (decode + the processor's
   DBetaFeatureExtractor reordering from MIMIC lead order + torch stacking): train.mimic.mimic_dataloader
   single-process and with 2 workers, and a plain DataLoader over numpy-formatted rows for comparison;
4. times reading one WFDB record (wfdb.rdheader alone, and read_wfdb), with the pandas version: wfdb parses
   header lines through pandas, about three times slower under pandas 3 (see requirements.txt);
5. compares the stored signal as int16 ADC + gain (the choice) with float16: bytes/record, error, decode speed.
Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _anon_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


_RSS_WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def run_ingest(mimic_root: Path, output: Path, num_proc: int, limit: int, chunk_size: int) -> dict:
    ingest = [sys.executable, "-m", "train.prepare_mimic", "--mimic-root", str(mimic_root), "--output", str(output),
              "--num-proc", str(num_proc), "--limit", str(limit), "--chunk-size", str(chunk_size), "--quiet"]
    # a small parent per run, so ru_maxrss of its children covers this ingest only
    cmd = [sys.executable, "-c", _RSS_WRAPPER, json.dumps(ingest)]
    peak_anon = {"max_single": 0.0, "max_sum": 0.0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample():
        while proc.poll() is None:
            pids = [proc.pid] + _children(proc.pid)
            vals = [_anon_rss_mb(p) for p in pids]
            peak_anon["max_single"] = max(peak_anon["max_single"], max(vals))
            peak_anon["max_sum"] = max(peak_anon["max_sum"], sum(vals))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"ingest failed ({proc.returncode}):\n{err[-2000:]}")
    maxrss = int(out.strip().splitlines()[-1])
    summary = json.loads((output / "summary.json").read_text())
    return {
        "records": summary["read"],
        "wall_s": wall,
        "ingest_s": summary["elapsed_s_last_run"],
        "peak_rss_mb": maxrss / 1024,
        "peak_anon_single_mb": peak_anon["max_single"],
        "peak_anon_sum_mb": peak_anon["max_sum"],
    }


def read_speed(prepared: Path, batch_size: int, num_workers: int, per_row: bool = False, epochs: int = 2) -> float:
    """records/s of the last of `epochs` shuffled passes over the train split (the first warms caches/workers)."""
    import torch
    from torch.utils.data import DataLoader

    from train.mimic import MimicECGCollator, load_prepared_mimic, mimic_dataloader

    ds = load_prepared_mimic(prepared)["train"]
    if per_row:  # generic path: rows formatted by datasets (numpy), collated row by row
        loader = DataLoader(ds.with_format("numpy"), batch_size=batch_size, shuffle=True, num_workers=num_workers,
                            collate_fn=MimicECGCollator(), persistent_workers=num_workers > 0,
                            generator=torch.Generator().manual_seed(0))
    else:
        loader = mimic_dataloader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, seed=0)
    rates = []
    for _ in range(epochs):
        n, t0 = 0, time.perf_counter()
        for batch in loader:
            assert batch["ecg_values"].shape[1:] == (12, 5000) and batch["ecg_values"].dtype == torch.float32
            n += batch["ecg_values"].shape[0]
        rates.append(n / (time.perf_counter() - t0))
    return rates[-1]


def storage_comparison(prepared: Path, n: int = 256) -> dict:
    """int16 ADC + gain vs float16 millivolts for the same records: Arrow bytes/record, max error, decode speed."""
    from datasets import Array2D, Dataset, Features

    from train.mimic import decode_signal, load_prepared_mimic

    ds = load_prepared_mimic(prepared)["train"].with_format("numpy")
    rows = [ds[i] for i in range(min(n, len(ds)))]
    exact = np.stack([decode_signal(r) for r in rows])  # == wfdb physical signal (tested)
    f16 = exact.astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for name, arr, dtype in (("int16", np.stack([r["signal"] for r in rows]), "int16"), ("float16", f16, "float16")):
            d = Dataset.from_dict({"signal": arr}, features=Features({"signal": Array2D((12, 5000), dtype)}))
            d.save_to_disk(os.path.join(tmp, name))
            sizes[name] = sum(p.stat().st_size for p in Path(tmp, name).glob("*.arrow")) / len(rows)
        t0 = time.perf_counter()
        for _ in range(5):
            for r in rows:
                decode_signal(r)
        t_int = (time.perf_counter() - t0) / (5 * len(rows))
        t0 = time.perf_counter()
        for _ in range(5):
            for x in f16:
                x.astype(np.float32)
        t_f16 = (time.perf_counter() - t0) / (5 * len(rows))
    return {
        "int16_bytes_per_record": sizes["int16"],
        "float16_bytes_per_record": sizes["float16"],
        "int16_max_error_mv": 0.0,
        "float16_max_error_mv": float(np.nanmax(np.abs(f16.astype(np.float32) - exact))),
        "int16_decode_us": t_int * 1e6,
        "float16_decode_us": t_f16 * 1e6,
    }


def wfdb_read_speed(mimic_root: Path, n: int = 200) -> dict:
    """ms per record for wfdb.rdheader alone and for the whole read_wfdb (header + signal), the call every
    downstream evaluation and the MIMIC ingest make per record."""
    import pandas
    import wfdb

    from dbeta.processing_dbeta import read_wfdb

    heads = sorted(mimic_root.rglob("*.hea"))[:n]
    bases = [str(h.with_suffix("")) for h in heads]
    timings = {}
    for name, read in (("rdheader", wfdb.rdheader), ("read_wfdb", read_wfdb)):
        read(bases[0])
        t = time.perf_counter()
        for base in bases:
            read(base)
        timings[name] = (time.perf_counter() - t) / len(bases) * 1000
    return {"records": len(bases), "pandas": pandas.__version__, "wfdb": wfdb.__version__, **timings}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--workdir", default=None, help="default: a temp dir, deleted afterwards")
    args = parser.parse_args(argv)

    from train.synthetic import write_mimic_layout

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dbeta-data-speed-"))
    try:
        root = work / "mimic"
        t0 = time.perf_counter()
        write_mimic_layout(root, args.n, seed=0)
        gen = args.n / (time.perf_counter() - t0)
        print(f"synthetic generation (1 process, SYNTHETIC signals, MIMIC layout): {args.n} records, {gen:.0f} records/s")

        wf = wfdb_read_speed(root)
        print(f"WFDB read (wfdb {wf['wfdb']}, pandas {wf['pandas']}), {wf['records']} records: header alone "
              f"{wf['rdheader']:.1f} ms/record, read_wfdb (header + signal) {wf['read_wfdb']:.1f} ms/record")

        sizes = sorted({max(1, args.n // 4), args.n})
        results = {}
        for size in sizes:
            out = work / f"prepared-{size}"
            results[size] = run_ingest(root, out, args.num_proc, size, args.chunk_size)
        for size, r in results.items():
            print(
                f"ingest {size} records, num_proc={args.num_proc}: {size / r['ingest_s']:.0f} records/s in the ingest "
                f"({r['ingest_s']:.1f} s), {size / r['wall_s']:.0f} records/s wall incl. interpreter start "
                f"({r['wall_s']:.1f} s); peak RSS (largest process, ru_maxrss) {r['peak_rss_mb']:.0f} MB; peak "
                f"anonymous RSS largest process {r['peak_anon_single_mb']:.0f} MB, sum over processes "
                f"{r['peak_anon_sum_mb']:.0f} MB"
            )
        prepared = work / f"prepared-{args.n}"
        disk = sum(p.stat().st_size for p in (prepared / "dataset").rglob("*.arrow"))
        print(f"prepared dataset: {disk / 2**20:.0f} MB on disk ({disk / args.n / 1024:.0f} KB/record)")

        for per_row, workers in ((False, 0), (False, 2), (True, 0)):
            rate = read_speed(prepared, args.batch_size, workers, per_row=per_row)
            per_core = rate / max(1, min(workers or 1, os.cpu_count() or 1))
            how = "DataLoader over rows (numpy format)" if per_row else "mimic_dataloader (Arrow batches)"
            print(
                f"read prepared -> collated float32 [B,12,5000] (decode + DBetaFeatureExtractor + torch), {how}, "
                f"batch {args.batch_size}, num_workers={workers}: {rate:.0f} records/s ({per_core:.0f} per core)"
            )
        cmp_ = storage_comparison(prepared)
        print(
            f"storage: int16+gain {cmp_['int16_bytes_per_record'] / 1024:.1f} KB/record, max error 0 mV (lossless), "
            f"decode {cmp_['int16_decode_us']:.0f} us/record; float16 {cmp_['float16_bytes_per_record'] / 1024:.1f} "
            f"KB/record, max error {cmp_['float16_max_error_mv']:.2e} mV, cast {cmp_['float16_decode_us']:.0f} us/record"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
