"""Windowed scoring of a long record: windows/s and peak memory on a Holter-length 12-lead WFDB record.

    python benchmarks/window_speed.py [--hours 24] [--configs small full] [--full-windows 64]
                                      [--window-seconds 10] [--stride-seconds 10] [--threads N] [--json FILE]

Writes a 12-lead 500 Hz WFDB record of `--hours` (format 16: 24 h is 43.2M samples per lead, ~1 GB of .dat) to a
temporary folder, a chunk at a time, then scores it with `pipe(path, candidate_labels=[...], window_seconds=...,
stride_seconds=...)` using the small model (random weights: only the speed means anything). Peak RSS is read
with resource.getrusage before the run (model loaded, one short record scored) and after it: the difference is
what scoring the long record added. The full-size model is timed on its first `--full-windows` windows only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

LABELS = ["NORM", "AFIB", "SBRAD", "STACH", "PVC"]
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
FS = 500


def write_long_record(folder: Path, name: str, seconds: float, chunk_seconds: float = 600.0, seed: int = 0) -> Path:
    """A 12-lead 500 Hz WFDB record of `seconds` (format 16, gain 1000/mV), written a chunk at a time so the
    writer's memory stays flat; the beats change rate every chunk. Returns the record path (no suffix)."""
    import wfdb

    n = int(round(seconds * FS))
    rng = np.random.default_rng(seed)
    gains = rng.uniform(-1.5, 1.5, size=(1, 12))
    checksum, init = np.zeros(12, dtype=np.int64), None
    with open(folder / f"{name}.dat", "wb") as handle:
        for start in range(0, n, int(chunk_seconds * FS)):
            stop = min(n, start + int(chunk_seconds * FS))
            t = np.arange(start, stop) / FS
            phase = (t * rng.uniform(0.8, 2.0)) % 1.0
            beat = np.exp(-((phase - 0.4) ** 2) / 0.0005) - 0.2 * np.exp(-((phase - 0.7) ** 2) / 0.005)
            mv = beat[:, None] * gains + 0.02 * rng.standard_normal((stop - start, 12))
            digital = np.round(mv * 1000).astype("<i2")
            digital.tofile(handle)  # interleaved samples: WFDB format 16
            init = digital[0] if init is None else init
            checksum += digital.sum(axis=0, dtype=np.int64)
    # the header through wfdb itself, with the fields it would compute from a whole signal
    record = wfdb.Record(record_name=name, n_sig=12, fs=FS, sig_len=n, file_name=[f"{name}.dat"] * 12,
                         fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, units=["mV"] * 12,
                         sig_name=LEADS, adc_res=[16] * 12, adc_zero=[0] * 12, block_size=[0] * 12,
                         init_value=[int(v) for v in init],
                         checksum=[int((c + 32768) % 65536 - 32768) for c in checksum])
    record.wrheader(write_dir=str(folder))
    return folder / name


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def build_pipeline(size: str, work: Path):
    from dbeta.configuration_dbeta import DBetaConfig
    from dbeta.modeling_dbeta import DBetaModel
    from dbeta.pipeline_dbeta import ZeroShotECGClassificationPipeline
    from tests.tiny import tiny_t5_text_config, train_t5_tokenizer
    from train.export import build_processor

    torch.manual_seed(0)
    tok = train_t5_tokenizer()
    config = DBetaConfig.small(text_config=tiny_t5_text_config(len(tok))) if size == "small" else DBetaConfig(
        text_config=tiny_t5_text_config(len(tok)))  # full-size ECG path; the text tower does not change windows/s
    model = DBetaModel(config).eval()
    return ZeroShotECGClassificationPipeline(model=model, processor=build_processor(tok))


def run(hours: float, configs, full_windows: int, window_seconds: float, stride_seconds: float,
        batch_size: int = 32) -> dict:
    out = {"hours": hours, "window_seconds": window_seconds, "stride_seconds": stride_seconds,
           "threads": torch.get_num_threads(), "results": {}}
    with tempfile.TemporaryDirectory(prefix="dbeta-windows-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        path = write_long_record(work, "holter", hours * 3600)
        out["write_seconds"] = round(time.perf_counter() - t0, 1)
        out["dat_bytes"] = (work / "holter.dat").stat().st_size
        short = write_long_record(work, "short", 60)
        for size in configs:
            pipe = build_pipeline(size, work)
            pipe(str(short), candidate_labels=LABELS, window_seconds=window_seconds, stride_seconds=stride_seconds,
                 batch_size=batch_size, progress=False)  # warm-up; label features cached
            before = peak_rss_mb()
            if size == "small":
                t1 = time.perf_counter()
                result = pipe(str(path), candidate_labels=LABELS, window_seconds=window_seconds,
                              stride_seconds=stride_seconds, batch_size=batch_size, progress=True)
                seconds = time.perf_counter() - t1
                n = len(result["windows"])
            else:  # the full-size model on the first windows only
                seconds_needed = full_windows * stride_seconds + window_seconds
                from dbeta.processing_dbeta import read_wfdb

                piece = read_wfdb(path, 0, int(seconds_needed * FS)).signal
                t1 = time.perf_counter()
                result = pipe(piece, sampling_rate=FS, lead_names=LEADS, candidate_labels=LABELS,
                              window_seconds=window_seconds, stride_seconds=stride_seconds, batch_size=batch_size,
                              progress=False)
                seconds = time.perf_counter() - t1
                n = len(result["windows"])
            out["results"][size] = {"windows": n, "seconds": round(seconds, 2), "windows_per_s": round(n / seconds, 1),
                                    "peak_rss_mb_before": round(before, 1), "peak_rss_mb_after": round(peak_rss_mb(), 1)}
            print(json.dumps({size: out["results"][size]}), flush=True)
            del pipe
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="record length (the test uses a few minutes)")
    parser.add_argument("--configs", nargs="+", default=["small", "full"], choices=["small", "full"])
    parser.add_argument("--full-windows", type=int, default=64)
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--stride-seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.hours <= 0:
        parser.error("--hours must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(args.hours, args.configs, args.full_windows, args.window_seconds, args.stride_seconds,
              args.batch_size)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return out


if __name__ == "__main__":
    main()
