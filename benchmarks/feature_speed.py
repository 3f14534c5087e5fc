"""ECG feature throughput of the full-size D-BETA on CPU, fp32 and bf16, against the machine's matmul peak.

    python -m benchmarks.feature_speed [--batch 16] [--repeats 3] [--threads N]

Prints, for batch 16: features/s in fp32 and bf16, the bf16 features' cosine similarity to fp32, model FLOPs
per record (torch.utils.flop_counter) and the fraction of the measured fp32/bf16 matmul peak reached; the same
figures for an authors-style implementation of the same ECG path on the same weights (attention as explicit
matmul + softmax, weight norm recomputed, projection applied to every token before pooling); and the time to
load the full-size model from a local folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dbeta.configuration_dbeta import DBetaConfig
from dbeta.modeling_dbeta import DBetaModel


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def authors_style_features(model: DBetaModel, ecg: torch.Tensor) -> torch.Tensor:
    """The same computation organised as the authors' fairseq-derived code does it."""
    enc = model.ecg_model
    x = ecg
    for layer in enc.conv_layers:
        x = layer(x)
    x = enc.feature_layer_norm(x.transpose(1, 2))
    x = enc.feature_projection(x)
    pc = enc.pos_conv
    g, v = pc.parametrizations.weight.original0, pc.parametrizations.weight.original1
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)
    y = F.conv1d(x.transpose(1, 2), weight, pc.bias, padding=pc.kernel // 2, groups=pc.groups)[..., :-1]
    x = x + F.gelu(y).transpose(1, 2)
    x = torch.cat([enc.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
    x = enc.layer_norm(x).transpose(0, 1)  # fairseq works time-first
    for layer in enc.layers:
        att = layer.self_attn
        t, b, d = x.shape
        h = att.num_heads
        q = att.q_proj(x) * att.head_dim**-0.5
        k, v_ = att.k_proj(x), att.v_proj(x)
        q = q.contiguous().view(t, b * h, -1).transpose(0, 1)
        k = k.contiguous().view(t, b * h, -1).transpose(0, 1)
        v_ = v_.contiguous().view(t, b * h, -1).transpose(0, 1)
        w = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        a = torch.bmm(w, v_).transpose(0, 1).contiguous().view(t, b, d)
        x = layer.self_attn_layer_norm(x + att.out_proj(a))
        x = layer.final_layer_norm(x + layer.fc2(F.gelu(layer.fc1(x).float()).type_as(x)))
    return model.pool_ecg(x.transpose(0, 1))


def throughput(fn, ecg: torch.Tensor, repeats: int, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = fn(ecg)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn(ecg)
            best = min(best, time.perf_counter() - t)
    return ecg.shape[0] / best, out.float()


def flops_per_record(fn, ecg: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    # no_grad, not inference_mode: under inference_mode the counter breaks the positional conv's weight-norm
    # parametrization (AttributeError: no attribute 'weight') on torch 2.13
    with torch.no_grad(), counter:
        fn(ecg[:1])
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = DBetaModel(DBetaConfig()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        t = time.perf_counter()
        DBetaModel.from_pretrained(tmp)
        load_s = time.perf_counter() - t

    ecg = torch.randn(args.batch, 12, 5000)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    results = {"threads": torch.get_num_threads(), "batch": args.batch, "load_full_model_s": round(load_s, 2),
               "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()}}
    impls = {"dbeta": lambda x: model.get_ecg_features(x).pooler_output, "authors_style": lambda x: authors_style_features(model, x)}
    reference = None
    for name, fn in impls.items():
        flops = flops_per_record(fn, ecg)
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rate, feats = throughput(fn, ecg, args.repeats, dtype)
            if reference is None:
                reference = feats
            entry = {
                "features_per_s": round(rate, 2),
                "gflops_per_record": round(flops / 1e9, 2),
                "fraction_of_matmul_peak": round(rate * flops / peaks[precision], 3),
                "cosine_to_fp32": round(F.cosine_similarity(feats, reference).min().item(), 5),
            }
            results[f"{name}_{precision}"] = entry
            print(f"{name:14s} {precision}: {entry}", flush=True)
    results["bf16_speedup_vs_authors_fp32"] = round(
        results["dbeta_bf16"]["features_per_s"] / results["authors_style_fp32"]["features_per_s"], 2)
    results["fp32_speed_vs_authors_fp32"] = round(
        results["dbeta_fp32"]["features_per_s"] / results["authors_style_fp32"]["features_per_s"], 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
