"""Pretraining speed of D-BETA on this machine: samples/s and model FLOP utilisation, fp32 and bf16.

    python -m benchmarks.train_speed [--size full|small] [--batch 8] [--text-len 32] [--steps 3]
                                     [--precision fp32 bf16] [--threads N] [--profile] [--json OUT]

One training step = DBetaForPreTraining forward with all four losses (MEM masking 75%, MLM labels on half the rows,
half the pairs mismatched for ETM/ETS) + backward + gradient clipping + AdamW step, exactly what train/pretrain.py
runs per micro-batch (bf16 = torch.autocast("cpu", torch.bfloat16), as accelerate's mixed_precision="bf16" does).
Full size = DBetaConfig(): the authors' ECG encoder, fusion and heads with a randomly initialised
flan-t5-base-shaped T5 encoder (the real weights are not needed to time it).

FLOPs per step come from torch.utils.flop_counter.FlopCounterMode on one forward+backward (matmuls, convolutions,
attention; element-wise work and the optimizer are not counted, as usual for MFU). torch 2.13's formula for
convolution_backward ignores `groups` in the weight-gradient term (16x too many FLOPs for the grouped positional
conv, +411 GFLOP per full-size step at batch 8), so a groups-aware formula replaces it: grad input and grad weight
each cost one forward convolution. Utilisation = FLOPs per step / step time / the matmul peak measured here (best of
several 4096^3 torch.matmul in the same dtype, measured just before and just after each precision's timed steps,
the higher one kept). With --profile, one step runs under torch.profiler and the time per operator family is
printed. The optimizer is AdamW(fused=True), as in train/pretrain.py.

Other processes on the machine slow everything down: the 1-minute load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dbeta.configuration_dbeta import DBetaConfig
from dbeta.modeling_dbeta import DBetaForPreTraining


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n torch.matmul in `dtype`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Groups-aware: grad input and grad weight each cost the forward convolution (w_shape already carries the
    per-group input channels)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def make_batch(config: DBetaConfig, batch: int, text_len: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(5000) / 500.0
    ecg = torch.sin(2 * torch.pi * 1.2 * t)[None, None] * torch.randn(batch, 12, 1, generator=g)
    ecg = ecg + 0.05 * torch.randn(batch, 12, 5000, generator=g)
    vocab = config.text_config.vocab_size
    ids = torch.randint(3, min(vocab, 32000), (batch, text_len), generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    lengths = torch.randint(text_len // 2, text_len + 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):  # padded like a real batch
        ids[i, n:] = 0
        mask[i, n:] = 0
    is_aligned = (torch.arange(batch) % 2 == 0).long()
    labels = torch.full_like(ids, -100)
    pick = (torch.rand(batch, text_len, generator=g) < 0.25) & (mask == 1) & (is_aligned[:, None] == 1)
    labels[pick] = ids[pick]
    return {"ecg_values": ecg.float(), "input_ids": ids, "attention_mask": mask, "mlm_labels": labels,
            "is_aligned": is_aligned}


def train_step(model, optimizer, batch: dict, bf16: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def step_flops(model, batch: dict, bf16: bool) -> tuple[float, dict]:
    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})
    with counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def profile_step(model, optimizer, batch: dict, bf16: bool, top: int = 12) -> dict:
    """Self CPU time per operator family for one training step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, batch, bf16)
    families = defaultdict(float)
    rows = []
    for e in prof.key_averages():
        us = e.self_cpu_time_total
        name = e.key
        low = name.lower()
        if any(k in low for k in ("adam", "foreach", "lerp", "addcdiv", "addcmul")):
            fam = "optimizer"
        elif any(k in low for k in ("addmm", "mm", "matmul", "linear", "bmm", "baddbmm")):
            fam = "matmul/linear"
        elif "attention" in low or "sdpa" in low or "softmax" in low:
            fam = "attention (sdpa)"
        elif "conv" in low:
            fam = "convolution"
        elif any(k in low for k in ("norm", "gelu", "tanh", "sigmoid", "dropout", "mul", "add", "sub", "div",
                                     "pow", "sqrt", "exp", "where", "copy", "to", "cat", "fill", "zero")):
            fam = "element-wise / norms / copies"
        else:
            fam = "other"
        families[fam] += us
        rows.append((us, name))
    total = sum(families.values()) or 1.0
    rows.sort(reverse=True)
    return {
        "self_cpu_s_by_family": {k: round(v / 1e6, 3) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "share_by_family": {k: round(v / total, 3) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_ops_self_cpu_s": [(name, round(us / 1e6, 3)) for us, name in rows[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="profile one step per precision")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = DBetaConfig() if args.size == "full" else DBetaConfig.small(
        text_config=dict(model_type="t5", vocab_size=32128, d_model=256, d_kv=32, d_ff=512, num_layers=4,
                         num_heads=8, feed_forward_proj="gated-gelu"))
    model = DBetaForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    batch = make_batch(config, args.batch, args.text_len)
    n_params = sum(p.numel() for p in model.parameters())
    results = {
        "size": args.size, "parameters_M": round(n_params / 1e6, 1), "batch": args.batch, "text_len": args.text_len,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(results), flush=True)
    peaks, dtypes = {}, {"fp32": torch.float32, "bf16": torch.bfloat16}
    for precision in ("fp32", "bf16"):  # both peaks are always reported
        peaks[precision] = matmul_peak(dtypes[precision])

    for precision in args.precision:
        bf16 = precision == "bf16"
        flops, by_op = step_flops(model, batch, bf16)
        train_step(model, optimizer, batch, bf16)  # warm-up
        peaks[precision] = max(peaks[precision], matmul_peak(dtypes[precision]))
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            loss = train_step(model, optimizer, batch, bf16)
            times.append(time.perf_counter() - t)
        peaks[precision] = max(peaks[precision], matmul_peak(dtypes[precision]))
        step_s = statistics.median(times)
        achieved = flops / step_s
        entry = {
            "step_s_median": round(step_s, 3),
            "step_s_all": [round(x, 3) for x in times],
            "samples_per_s": round(args.batch / step_s, 3),
            "gflops_per_step": round(flops / 1e9, 1),
            "gflops_per_sample": round(flops / args.batch / 1e9, 2),
            "achieved_gflops": round(achieved / 1e9, 1),
            "mfu_vs_same_dtype_matmul_peak": round(achieved / peaks[precision], 3),
            "loss": round(loss, 3),
            "flops_by_op_G": {k: round(v / 1e9, 1) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]},
        }
        entry["matmul_peak_gflops_used"] = round(peaks[precision] / 1e9, 1)
        if bf16:
            entry["bf16_vs_fp32_matmul_peak"] = round(achieved / peaks["fp32"], 3)
        if args.profile:
            entry["profile"] = profile_step(model, optimizer, batch, bf16)
        results[precision] = entry
        print(f"{precision}: " + json.dumps(entry), flush=True)
    results["matmul_peak_gflops"] = {p: round(v / 1e9, 1) for p, v in peaks.items()}
    results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
