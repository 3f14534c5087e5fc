"""End-to-end zero-shot throughput: WFDB files on disk -> pipeline("zero-shot-ecg-classification") -> scores.

    python -m benchmarks.zeroshot_speed [--n 64] [--configs small full] [--batch-sizes 1 16] [--labels 5]
                                        [--num-workers 0] [--threads N] [--json FILE]

For each model size (random weights: "small" = DBetaConfig.small() with a tiny T5 text encoder, "full" = the
default full-size config with its T5-base-shaped text encoder) the script exports a model folder with
train.export.export_model, loads it with `pipeline(..., trust_remote_code=True)` in this process (HF_HOME in a
temporary folder, offline), and times `pipe(paths, candidate_labels=[...], batch_size=B)` over N synthetic WFDB
records (500 Hz, 10 s, 12 leads) written to a temporary folder. It prints records/s per batch size, and the split
of the time between reading + conditioning (the processor) and the model's ECG path, plus the one-off costs
(export, pipeline load, candidate-label text features).

Weights are random, so only the speed means anything. The synthetic records come from train/synthetic.py when it
is importable, else from wfdb.wrsamp with a simple periodic waveform.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

LABELS = ["NORM", "AFIB", "CLBBB", "CRBBB", "1AVB", "STACH", "SBRAD", "STD_", "STE_", "LVH"]


def write_records(folder: Path, n: int, seed: int = 0) -> list:
    """N 12-lead WFDB records in `folder`; returns their record paths (without suffix)."""
    try:
        from train.synthetic import write_ptbxl_layout

        write_ptbxl_layout(folder, n, seed=seed, write_lr=False)
        return sorted(str(p.with_suffix("")) for p in folder.glob("records500/*/*.hea"))
    except ImportError:
        import wfdb

        rng = np.random.default_rng(seed)
        t = np.arange(5000) / 500.0
        names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
        paths = []
        for i in range(n):
            phase = (t * rng.uniform(0.8, 2.0)) % 1.0
            beat = np.exp(-((phase - 0.4) ** 2) / 0.0005)
            sig = (rng.uniform(-1.5, 1.5, (12, 1)) * beat + 0.02 * rng.standard_normal((12, 5000))).T
            wfdb.wrsamp(f"r{i:05d}", fs=500, units=["mV"] * 12, sig_name=names, p_signal=sig,
                        fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
            paths.append(str(folder / f"r{i:05d}"))
        return paths


def build_model(size: str, vocab_size: int):
    from dbeta.configuration_dbeta import DBetaConfig
    from dbeta.modeling_dbeta import DBetaModel
    from tests.tiny import tiny_t5_text_config

    torch.manual_seed(0)
    if size == "small":
        config = DBetaConfig.small(text_config=tiny_t5_text_config(vocab_size))
    elif size == "full":
        config = DBetaConfig()
    else:
        raise ValueError(f"unknown config {size!r}; choose small or full")
    return DBetaModel(config).eval()


def bench_size(size: str, paths: list, batch_sizes: list, labels: list, num_workers: int, work: Path) -> dict:
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from tests.tiny import train_t5_tokenizer
    from train.export import build_processor, export_model

    hf_logging.set_verbosity_error()
    tok = train_t5_tokenizer()
    t = time.perf_counter()
    model = build_model(size, len(tok))
    params = sum(p.numel() for p in model.parameters())
    ecg_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("ecg_", "ecg_model")))
    folder = export_model(model, work / f"dbeta-{size}", processor=build_processor(tok))
    t_export = time.perf_counter() - t
    del model

    t = time.perf_counter()
    pipe = pipeline("zero-shot-ecg-classification", model=str(folder), trust_remote_code=True, dtype=torch.float32)
    t_load = time.perf_counter() - t

    pipe(paths[0], candidate_labels=labels)  # warm-up (allocations, first-call overheads)
    module = sys.modules[type(pipe).__module__]  # the remote-code pipeline_dbeta module
    t = time.perf_counter()
    module.label_features(lambda texts: module.text_features(pipe.model, pipe.processor, texts),
                          pipe.label_texts(labels))
    t_text = time.perf_counter() - t

    # the parts: reading + conditioning, and the model's ECG path on conditioned batches
    t = time.perf_counter()
    values = [pipe.preprocess(p)["ecg_values"] for p in paths]
    t_pre = (time.perf_counter() - t) / len(paths)
    x = torch.cat(values)
    rows = []
    for b in batch_sizes:
        with torch.no_grad():
            t = time.perf_counter()
            for s in range(0, len(x), b):
                pipe.model.get_ecg_features(x[s:s + b]).pooler_output
            t_model = (time.perf_counter() - t) / len(x)
        t = time.perf_counter()
        out = pipe(paths, candidate_labels=labels, batch_size=b, num_workers=num_workers)
        dt = time.perf_counter() - t
        assert len(out) == len(paths) and abs(sum(d["score"] for d in out[0]) - 1) < 1e-4
        rows.append({"batch_size": b, "records_per_s": len(paths) / dt, "seconds": dt,
                     "model_ecg_path_records_per_s": 1.0 / t_model})
    return {"config": size, "parameters": params, "ecg_path_parameters": ecg_params, "export_s": t_export,
            "pipeline_load_s": t_load, "label_text_features_s": t_text, "read_and_condition_ms_per_record":
            1000 * t_pre, "n_records": len(paths), "n_labels": len(labels), "runs": rows}


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="number of WFDB records")
    ap.add_argument("--configs", nargs="+", default=["small", "full"], choices=["small", "full"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--labels", type=int, default=5, help=f"number of candidate labels (max {len(LABELS)})")
    ap.add_argument("--num-workers", type=int, default=0, help="pipeline DataLoader workers")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = LABELS[: max(1, min(args.labels, len(LABELS)))]
    results = []
    with tempfile.TemporaryDirectory(prefix="dbeta-zs-speed-") as tmp:
        tmp = Path(tmp)
        os.environ["HF_HOME"] = str(tmp / "hf")
        t = time.perf_counter()
        paths = write_records(tmp / "records", args.n)
        print(f"wrote {len(paths)} synthetic WFDB records in {time.perf_counter() - t:.1f} s; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
              f"{len(labels)} candidate labels, num_workers={args.num_workers}")
        for size in args.configs:
            r = bench_size(size, paths, args.batch_sizes, labels, args.num_workers, tmp)
            results.append(r)
            print(f"\n[{size}] {r['parameters'] / 1e6:.1f}M parameters ({r['ecg_path_parameters'] / 1e6:.1f}M "
                  f"in the ECG path); export {r['export_s']:.1f} s, pipeline load {r['pipeline_load_s']:.1f} s, "
                  f"label text features {1000 * r['label_text_features_s']:.0f} ms per call, read + condition "
                  f"{r['read_and_condition_ms_per_record']:.1f} ms/record")
            print("  batch | pipeline records/s | ECG path alone records/s")
            for row in r["runs"]:
                print(f"  {row['batch_size']:5d} | {row['records_per_s']:18.1f} | "
                      f"{row['model_ecg_path_records_per_s']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
