"""N3S (nearest-neighbour negative sampling) as a precomputed table: all the model and index work happens once,
offline; the training collator only does an O(1) table lookup per negative.

Build (offline, once per prepared dataset):
    1. Clean every report with `normalize_report` (the model's own cleaning) and collapse runs of whitespace, then
       deduplicate: one row per distinct cleaned report (`canonical_report`).
    2. Embed each distinct report once with a frozen sentence encoder (`TextEmbedder`): a T5 encoder
       (T5EncoderModel, e.g. google/flan-t5-small, what the authors used) or any AutoModel encoder (e.g. MiniLM).
       Mean pooling over REAL tokens only (attention mask; the authors also averaged the pad positions at build
       time but not at query time, so their index and their queries disagreed), then L2 normalisation. Batched,
       no_grad, length-sorted batches, tqdm progress.
    3. Search a faiss index over the candidate vectors: exact `IndexFlatIP` (cosine on unit vectors) for small
       corpora, `IndexHNSWFlat` (inner product) above `hnsw_threshold` unique reports. The recall of the index is
       measured on a seeded sample of rows against exact brute force and stored in meta.json (1.0 for flat, as a
       self-check).
    4. Keep, for every row, k negatives (default 64), most similar first:
         mode "near" (default): the most similar reports that are NOT the same finding: the row itself, exact
             duplicates (the same words once punctuation is ignored, `finding_key`; or an identical embedding,
             cosine >= 1 - 1e-5) and near-duplicates with cosine > max_similarity (default 0.95, see
             DEFAULT_MAX_SIMILARITY for the measurement behind it) are dropped. Hard negatives: the fix.
         mode "far": the authors' behaviour (they searched with the negated query): the k LEAST similar reports.
             Kept for ablation; the same filter applies (it never triggers in practice).
       Rows whose first search yields fewer than k survivors are searched again deeper, and finally by exact brute
       force over every candidate, so a short row (-1 padded) really has fewer than k admissible negatives.

Storage (next to the prepared dataset, e.g. DATASET/n3s/):
    reports.json      ["report", ...]: U distinct cleaned reports, the row ids of the table. The first
                      meta["counts"]["candidates"] are the candidates (the train split); any further ones are
                      query-only rows (e.g. validation reports): they have negatives, but are never drawn as one.
    negatives.npy     int32 [U, k], row ids, most similar first, -1 padded at the end of short rows.
    similarities.npy  float16 [U, k], cosine of each negative to its row (nan where -1).
    meta.json         encoder, mode, k, max_similarity, index type and parameters, measured recall, build times,
                      counts (reports read, unique, candidates, short/empty rows, near-duplicates dropped).
    embeddings.npy    optional (save_embeddings=True): float16 [U, D] unit vectors, to rebuild without re-embedding.

Train time (the collator): `table = N3STable.load(folder)`, then `table.sample_negative(report, rng)` returns a
negative's text: a dict lookup and one rng draw, no model forward and no index search. A row with no negative falls
back to a uniformly drawn different candidate (counted in `table.fallback_count`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np


from dbeta.processing_dbeta import normalize_report


logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODES = ("near", "far")
INDEX_TYPES = ("auto", "flat", "hnsw")
DEFAULT_K = 64
# Near-duplicate cut-off (cosine): above it a candidate is the same finding reworded, not a hard negative. 0.95
# drops nearly every rewording of a machine report and keeps most one-finding differences (`python -m
# benchmarks.n3s_speed --threshold-study` measures both shares). No cut separates them fully; a rewording labelled
# unmatched costs more than a lost hard negative.
DEFAULT_MAX_SIMILARITY = 0.95
# Cosine at or above which two embeddings count as identical (the same text to the encoder), whatever max_similarity.
IDENTICAL_COSINE = 1.0 - 1e-5
# Above this many candidates, index="auto" uses HNSW: exact all-pairs search grows as U^2 (about an hour at
# MIMIC-IV-ECG's ~800k reports on 2 cores), HNSW as U log U with recall@64 near 1 (benchmarks/n3s_speed.py).
DEFAULT_HNSW_THRESHOLD = 100_000
REPORTS_FILE, NEGATIVES_FILE, SIMILARITIES_FILE, META_FILE, EMBEDDINGS_FILE = (
    "reports.json", "negatives.npy", "similarities.npy", "meta.json", "embeddings.npy")

_WORD = re.compile(r"[^\W_]+")
T5_FAMILY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


class NoReportsError(ValueError):
    """Fewer than two distinct non-empty reports to build a table from."""


def canonical_report(text) -> str:
    """The table key of a report: `normalize_report` (lower case, ekg -> ecg, edge markup trimmed) with runs of
    whitespace collapsed to one space. Two reports with the same key are the same row."""
    if text is None:
        return ""
    return " ".join(normalize_report(text).split())


def finding_key(text) -> str:
    """The words of a report, punctuation dropped ("sinus rhythm. lbbb." and "sinus rhythm, lbbb" share it). Rows with
    the same finding key are exact duplicates for N3S: never each other's negative, whatever their cosine."""
    return " ".join(_WORD.findall(canonical_report(text)))


def unique_reports(reports: Iterable, exclude: Optional[set] = None) -> tuple:
    """(sorted distinct canonical reports, number read, number empty after cleaning); `exclude` keys are left out."""
    seen = set()
    n_read = n_empty = 0
    for r in reports:
        n_read += 1
        key = canonical_report(r)
        if not key:
            n_empty += 1
            continue
        seen.add(key)
    if exclude:
        seen -= exclude
    return sorted(seen), n_read, n_empty


# --------------------------------------------------------------------------------------------------------------
# Sentence encoder
# --------------------------------------------------------------------------------------------------------------


class TextEmbedder:
    """A frozen text encoder -> L2-normalised mean-pooled sentence vectors (float32 numpy [N, D]).

    Mean pooling averages the last hidden state over the positions where attention_mask == 1 only, so a report's
    vector does not depend on how much padding its batch needed.
    """

    def __init__(self, model, tokenizer, *, max_length: int = 256, batch_size: int = 128, device=None,
                 name: Optional[str] = None):
        import torch

        if getattr(tokenizer, "pad_token", None) is None:
            raise ValueError("the tokenizer has no pad token; batched embedding needs one")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            max_length = min(int(max_length), tok_max)
        pos_max = getattr(model.config, "max_position_embeddings", None)
        if isinstance(pos_max, int) and pos_max > 0:
            max_length = min(int(max_length), pos_max)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__

    @classmethod
    def from_pretrained(cls, path_or_id: Union[str, os.PathLike], *, max_length: int = 256, batch_size: int = 128,
                        device=None, dtype=None, revision: Optional[str] = None,
                        local_files_only: Optional[bool] = None) -> "TextEmbedder":
        """Load a frozen encoder and its tokenizer from a local folder or a Hub id.

        T5-family checkpoints (model_type t5/mt5/umt5, e.g. google/flan-t5-small) load as T5EncoderModel (the decoder
        weights are not even read); other encoder-decoders load with AutoModel and keep their encoder; anything
        else loads with AutoModel (BERT, MiniLM, RoBERTa, ...). `device` defaults to CUDA when available.
        """
        import torch
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        source = str(path_or_id)
        looks_local = (os.path.exists(source) or os.path.isabs(source) or source.startswith((".", "~"))
                       or source.count("/") > 1 or (os.sep != "/" and os.sep in source))
        if looks_local:
            path = Path(source).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(f"encoder folder {source!r} does not exist (expected a folder with config.json "
                                        "and tokenizer files, or a Hub id such as google/flan-t5-small)")
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"encoder folder {source!r} has no config.json: not a transformers "
                                        "model folder")
            source = str(path)
        kwargs = {"revision": revision}
        if local_files_only is not None:
            kwargs["local_files_only"] = local_files_only
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            note = " (HF_HUB_OFFLINE is set, so only the local cache is searched)" if offline else ""
            raise OSError(f"cannot load encoder {str(path_or_id)!r}: not a local model folder and not loadable from "
                          f"the Hub{note}. Pass a local folder or a cached Hub id. Cause: {e}") from e
        model_type = getattr(config, "model_type", "")
        load_kwargs = dict(kwargs)
        if dtype is not None:
            load_kwargs["dtype"] = dtype
        if model_type in T5_FAMILY:
            model_cls = getattr(transformers, T5_FAMILY[model_type])
            model = model_cls.from_pretrained(source, config=config, **load_kwargs)
        else:
            model = AutoModel.from_pretrained(source, config=config, **load_kwargs)
            if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
                model = model.get_encoder()
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model, tokenizer, max_length=max_length, batch_size=batch_size, device=device,
                   name=str(path_or_id))

    @property
    def dim(self) -> int:
        cfg = self.model.config
        for attr in ("d_model", "hidden_size", "dim"):
            if isinstance(getattr(cfg, attr, None), int):
                return int(getattr(cfg, attr))
        raise AttributeError("cannot tell the encoder's hidden size from its config")

    def describe(self) -> dict:
        cfg = self.model.config
        return {"name": self.name, "model_type": getattr(cfg, "model_type", None), "class": type(self.model).__name__,
                "dim": self.dim, "max_length": self.max_length, "pooling": "mean over attention_mask == 1",
                "normalized": True, "commit": getattr(cfg, "_commit_hash", None)}

    def _forward(self, texts: List[str]):
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        mask = enc["attention_mask"].to(self.device)
        inputs = {"input_ids": enc["input_ids"].to(self.device), "attention_mask": mask}
        hidden = self.model(**inputs).last_hidden_state.float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1, eps=1e-12)

    def embed(self, texts: Sequence[str], *, batch_size: Optional[int] = None, progress: bool = True,
              desc: str = "embedding reports") -> np.ndarray:
        """Unit vectors float32 [len(texts), D], in the order of `texts`. Batches are formed from length-sorted texts
        (less padding; with masked pooling the result does not depend on the batching)."""
        import torch
        from tqdm.auto import tqdm

        texts = [str(t) for t in texts]
        bs = int(batch_size or self.batch_size)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode(), tqdm(total=len(texts), desc=desc, unit="report", disable=not progress,
                                          mininterval=2.0) as bar:
            for start in range(0, len(texts), bs):
                idx = order[start:start + bs]
                out[idx] = self._forward([texts[i] for i in idx]).cpu().numpy()
                bar.update(len(idx))
        return out

    def __call__(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        return self.embed(texts, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Index and negative search
# --------------------------------------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise ImportError("N3S needs faiss: pip install faiss-cpu") from e
    return faiss


def build_index(vectors: np.ndarray, index: str = "auto", *, hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
                hnsw_m: int = 32, ef_construction: int = 100):
    """An inner-product faiss index over unit vectors [N, D]: IndexFlatIP (exact) or IndexHNSWFlat. Returns
    (index, kind, params)."""
    faiss = _faiss()
    if index not in INDEX_TYPES:
        raise ValueError(f"index must be one of {INDEX_TYPES}, got {index!r}")
    kind = index if index != "auto" else ("hnsw" if len(vectors) > hnsw_threshold else "flat")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    if kind == "flat":
        idx, params = faiss.IndexFlatIP(d), {}
    else:
        idx = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = int(ef_construction)
        params = {"M": int(hnsw_m), "efConstruction": int(ef_construction)}
    idx.add(vectors)
    return idx, kind, params


def _search(index, queries: np.ndarray, k: int, *, kind: str, ef_search: int, chunk: int = 4096,
            progress: bool = False, desc: str = "searching") -> tuple:
    """(similarity-ordered scores, ids) [n, k] for queries, in chunks (bounded memory, progress bar)."""
    from tqdm.auto import tqdm

    faiss = _faiss()
    k = int(min(k, index.ntotal))
    params = None
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=int(max(ef_search, k)))
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for s in tqdm(range(0, len(queries), chunk), desc=desc, unit="chunk", disable=not progress, mininterval=2.0):
        q = np.ascontiguousarray(queries[s:s + chunk], dtype=np.float32)
        scores[s:s + chunk], ids[s:s + chunk] = index.search(q, k, params=params) if params is not None \
            else index.search(q, k)
    return scores, ids


def _exact_candidates(queries: np.ndarray, cand: np.ndarray, k: int, sign: float) -> tuple:
    """Brute-force (scores, ids) [n, k] of sign * cosine, best first (numpy, for sample checks and deep rows)."""
    k = int(min(k, len(cand)))
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    step = max(1, int(2**26 // max(1, len(cand))))  # ~256 MB of float32 scores per block
    for s in range(0, len(queries), step):
        sims = sign * (queries[s:s + step] @ cand.T)
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(cand) else \
            np.tile(np.arange(len(cand)), (len(sims), 1))
        psc = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-psc, axis=1, kind="stable")
        ids[s:s + step] = np.take_along_axis(part, order, axis=1)
        scores[s:s + step] = np.take_along_axis(psc, order, axis=1)
    return scores, ids


def _exact_negatives(embeddings: np.ndarray, rows: np.ndarray, num_candidates: int, k: int, sign: float,
                     max_similarity: float, depth: int, groups: Optional[np.ndarray] = None) -> np.ndarray:
    """The negatives of `rows` [n, k] by brute force over the candidates, searched deeper (x4) for short rows."""
    cand = embeddings[:num_candidates]
    neg = np.full((len(rows), k), -1, dtype=np.int32)
    pending = np.arange(len(rows))
    depth = min(max(int(depth), k + 1), num_candidates)
    while len(pending):
        short = []
        for b in range(0, len(pending), max(1, int(2**24 // depth))):  # bounded memory: block x depth candidates
            part = pending[b:b + max(1, int(2**24 // depth))]
            scores, ids = _exact_candidates(embeddings[rows[part]], cand, depth, sign)
            n, _, cnt, _ = _select(rows[part], ids, sign * scores, k, max_similarity, groups)
            neg[part] = n
            short.append(part[cnt < k])
        if depth >= num_candidates:
            break
        pending = np.concatenate(short)
        depth = min(depth * 4, num_candidates)
    return neg


def _select(row_ids: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int, max_similarity: float,
            groups: Optional[np.ndarray] = None) -> tuple:
    """Filter candidate lists (similarity order kept): drop -1, the row itself, reports of the row's group (the same
    words, see `finding_key`), identical embeddings and near-duplicates (cosine > max_similarity). Returns
    (negatives [n, k] -1 padded, their cosines, valid counts, duplicates dropped per row)."""
    real = (ids >= 0) & (ids != row_ids[:, None])
    dup = real & ((sims > max_similarity) | (sims >= IDENTICAL_COSINE))
    if groups is not None:
        dup |= real & (groups[np.maximum(ids, 0)] == groups[row_ids][:, None])
    valid = real & ~dup
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    neg = np.take_along_axis(ids, order, axis=1)
    neg_sims = np.take_along_axis(sims, order, axis=1)
    counts = valid.sum(1)
    pad = np.arange(neg.shape[1])[None, :] >= counts[:, None]
    neg = np.where(pad, -1, neg)
    neg_sims = np.where(pad, np.nan, neg_sims)
    if neg.shape[1] < k:
        neg = np.pad(neg, ((0, 0), (0, k - neg.shape[1])), constant_values=-1)
        neg_sims = np.pad(neg_sims, ((0, 0), (0, k - neg_sims.shape[1])), constant_values=np.nan)
    return neg.astype(np.int32), neg_sims.astype(np.float32), np.minimum(counts, k), dup.sum(1)


def find_negatives(embeddings: np.ndarray, k: int = DEFAULT_K, mode: str = "near",
                   max_similarity: float = DEFAULT_MAX_SIMILARITY, index: str = "auto", *,
                   num_candidates: Optional[int] = None, hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
                   hnsw_m: int = 32, ef_construction: int = 100, ef_search: int = 256, search_margin: int = 32,
                   max_index_k: int = 2048, recall_sample: int = 1000, seed: int = 0,
                   groups: Optional[np.ndarray] = None, progress: bool = True) -> tuple:
    """The negatives table from unit vectors [U, D]: (negatives int32 [U, k], cosines float32 [U, k], info dict).

    Rows 0..num_candidates-1 are the candidates (the only ids ever returned as negatives); further rows are
    query-only. `groups` (int [U], optional): rows with the same group id are never each other's negatives (used
    for reports with the same words, `finding_key`). See the module docstring for the modes and the filter.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (-1.0 <= float(max_similarity) <= 1.0):
        raise ValueError(f"max_similarity is a cosine in [-1, 1], got {max_similarity}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise ValueError(f"embeddings must be a non-empty [U, D] array, got shape {emb.shape}")
    u = len(emb)
    c = u if num_candidates is None else int(num_candidates)
    if not 1 <= c <= u:
        raise ValueError(f"num_candidates must be in [1, {u}], got {c}")
    norms = np.linalg.norm(emb, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError("embeddings must be L2-normalised (cosine = inner product)")
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != (u,):
            raise ValueError(f"groups must be [{u}], got shape {groups.shape}")
    sign = 1.0 if mode == "near" else -1.0
    cand = emb[:c]
    row_ids = np.arange(u)

    t0 = time.perf_counter()
    idx, kind, params = build_index(cand, index, hnsw_threshold=hnsw_threshold, hnsw_m=hnsw_m,
                                    ef_construction=ef_construction)
    t_index = time.perf_counter() - t0
    if kind == "hnsw":
        params["efSearch"] = int(ef_search)
    logger.info("N3S: %s index over %d candidates built in %.1fs", kind, c, t_index)

    # Pass 1 over every row, then deeper index passes for short rows, then exact brute force for what is left.
    t0 = time.perf_counter()
    neg = np.full((u, k), -1, dtype=np.int32)
    neg_sims = np.full((u, k), np.nan, dtype=np.float32)
    dropped = np.zeros(u, dtype=np.int64)
    pending = row_ids
    depth = min(k + 1 + int(search_margin), c)
    passes = []
    while len(pending):
        exhaustive = depth >= c or depth > max_index_k
        if exhaustive:  # brute force over every candidate, a block of rows at a time (bounded memory)
            block = max(1, int(2**24 // c))
            for b in range(0, len(pending), block):
                rows = pending[b:b + block]
                scores, ids = _exact_candidates(emb[rows], cand, c, sign)
                n, s, cnt, dup = _select(rows, ids, sign * scores, k, max_similarity, groups)
                neg[rows], neg_sims[rows], dropped[rows] = n, s, dup
        else:
            scores, ids = _search(idx, sign * emb[pending], depth, kind=kind, ef_search=ef_search,
                                  progress=progress and len(passes) == 0,
                                  desc=f"N3S {mode} search ({kind}, depth {depth})")
            n, s, cnt, dup = _select(pending, ids, sign * scores, k, max_similarity, groups)
            neg[pending], neg_sims[pending], dropped[pending] = n, s, dup
        passes.append({"depth": int(c if exhaustive else depth), "rows": int(len(pending)), "exact": bool(exhaustive)})
        if exhaustive:
            break
        pending = pending[cnt < k]
        depth = min(depth * 4, c)
    t_search = time.perf_counter() - t0

    counts = (neg >= 0).sum(1)
    info = {
        "index": {"type": kind, "requested": index, "hnsw_threshold": int(hnsw_threshold), **params},
        "passes": passes,
        "time_s": {"index": round(t_index, 3), "search": round(t_search, 3)},
        "counts": {
            "rows": int(u), "candidates": int(c), "query_only": int(u - c),
            "rows_full": int((counts == k).sum()), "rows_short": int(((counts > 0) & (counts < k)).sum()),
            "rows_empty": int((counts == 0).sum()), "mean_negatives_per_row": float(counts.mean()),
            "near_duplicates_dropped": int(dropped.sum()), "rows_with_near_duplicates": int((dropped > 0).sum()),
            "rows_sharing_words": 0 if groups is None else int(len(groups) - len(np.unique(groups))),
        },
        "similarity": _similarity_summary(neg_sims),
    }
    t0 = time.perf_counter()
    info["recall"] = measure_recall(emb, neg, idx, kind, k=k, sign=sign, max_similarity=max_similarity,
                                    num_candidates=c, depth=min(k + 1 + int(search_margin), c),
                                    ef_search=ef_search, sample=recall_sample, seed=seed, groups=groups)
    info["time_s"]["recall"] = round(time.perf_counter() - t0, 3)
    logger.info("N3S: %s index recall@%d %.4f (table recall %.4f) on %d sampled rows", kind,
                info["recall"]["k"], info["recall"]["recall_at_k"], info["recall"]["table_recall"],
                info["recall"]["sample"])
    return neg, neg_sims, info


def _similarity_summary(sims: np.ndarray) -> dict:
    v = sims[np.isfinite(sims)]
    if not len(v):
        return {}
    q = np.quantile(v, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"mean": float(v.mean()), "min": float(q[0]), "p05": float(q[1]), "median": float(q[2]),
            "p95": float(q[3]), "max": float(q[4])}


def measure_recall(embeddings: np.ndarray, negatives: np.ndarray, index, kind: str, *, k: int, sign: float,
                   max_similarity: float, num_candidates: int, depth: int, ef_search: int, sample: int = 1000,
                   seed: int = 0, groups: Optional[np.ndarray] = None) -> dict:
    """Recall of the index against exact brute force on a seeded sample of rows:
    recall_at_k   |approx top-k ∩ exact top-k| / k of the raw search (the mode's query sign), averaged;
    table_recall  the fraction of the exact pipeline's negatives (same filter, exact search) found in the table row.
    """
    u = len(embeddings)
    n = int(min(sample, u))
    if n <= 0:
        return {"sample": 0, "k": int(k), "recall_at_k": None, "table_recall": None}
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(u, size=n, replace=False))
    cand = embeddings[:num_candidates]
    kk = int(min(k, num_candidates))
    _, approx_ids = _search(index, sign * embeddings[rows], kk, kind=kind, ef_search=ef_search)
    _, exact_ids = _exact_candidates(embeddings[rows], cand, kk, sign)
    hits = [len(np.intersect1d(a[a >= 0], e)) / kk for a, e in zip(approx_ids, exact_ids)]
    # The exact pipeline for the sampled rows: brute force, same filter, deepened until k survive (or all seen).
    ex_neg = _exact_negatives(embeddings, rows, num_candidates, negatives.shape[1], sign, max_similarity, depth,
                              groups)
    found = total = 0
    for r, e in zip(rows, ex_neg):
        e = e[e >= 0]
        total += len(e)
        found += len(np.intersect1d(negatives[r][negatives[r] >= 0], e))
    return {"sample": n, "k": kk, "recall_at_k": float(np.mean(hits)),
            "table_recall": float(found / total) if total else 1.0, "seed": int(seed)}


# --------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------


def _read_json(path: Path, damaged: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(damaged.format(f"{path.name} is not valid JSON: {err}")) from None


class N3STable:
    """Precomputed N3S negatives: `reports` (row ids -> text), `negatives` int32 [U, k] (-1 padded) and `meta`.

    `sample_negative(report_or_id, rng)` is O(1): one dict lookup, one rng draw, one list index.
    """

    def __init__(self, reports: Sequence[str], negatives: np.ndarray, meta: Optional[dict] = None,
                 similarities: Optional[np.ndarray] = None, num_candidates: Optional[int] = None):
        self.reports: List[str] = list(reports)
        negatives = np.asarray(negatives)
        if negatives.ndim != 2 or len(negatives) != len(self.reports):
            raise ValueError(f"negatives must be [{len(self.reports)}, k], got shape {negatives.shape}")
        if not np.issubdtype(negatives.dtype, np.integer):
            raise ValueError(f"negatives must be integer row ids, got {negatives.dtype}")
        self.negatives = negatives.astype(np.int32, copy=False)
        self.similarities = similarities
        self.meta = dict(meta or {})
        c = num_candidates if num_candidates is not None else self.meta.get("counts", {}).get("candidates")
        self.num_candidates = int(c) if c is not None else len(self.reports)
        if not 0 < self.num_candidates <= len(self.reports):
            raise ValueError(f"num_candidates {self.num_candidates} out of range for {len(self.reports)} reports")
        if len(self.negatives) and (self.negatives.max(initial=-1) >= self.num_candidates
                                    or self.negatives.min(initial=0) < -1):
            raise ValueError("negatives hold ids outside [-1, num_candidates)")
        self._index: Dict[str, int] = {}
        for i, r in enumerate(self.reports):
            if r in self._index:
                raise ValueError(f"report {r!r} appears twice in the table (rows {self._index[r]} and {i})")
            self._index[r] = i
        # Rows are left-packed: the valid negatives of row i are negatives[i, :n_valid[i]].
        self.n_valid = (self.negatives >= 0).sum(1).astype(np.int64)
        self._n_valid = self.n_valid.tolist()
        self.fallback_count = 0

    # ---- lookups -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.reports)

    def __contains__(self, report) -> bool:
        return canonical_report(report) in self._index

    @property
    def k(self) -> int:
        return int(self.negatives.shape[1])

    def id_of(self, report: str) -> int:
        """Row id of a report (cleaned with `canonical_report` first). KeyError if it is not in the table."""
        key = canonical_report(report)
        try:
            return self._index[key]
        except KeyError:
            src = self.meta.get("source", {})
            where = f" (built from {src.get('dataset')} split {src.get('split')!r})" if src else ""
            raise KeyError(
                f"report not in the N3S table of {len(self)} reports{where}: {str(report)[:120]!r} (cleaned: "
                f"{key[:120]!r}). Build the table from the dataset the collator reads (python -m train.build_n3s), "
                "and include the split with --query-splits if it is not the train split.") from None

    def _row(self, report_or_id) -> int:
        if isinstance(report_or_id, (int, np.integer)) and not isinstance(report_or_id, bool):
            i = int(report_or_id)
            if not 0 <= i < len(self.reports):
                raise IndexError(f"row id {i} out of range for an N3S table of {len(self)} reports")
            return i
        return self.id_of(report_or_id)

    def negatives_of(self, report_or_id) -> List[str]:
        """All precomputed negatives of a report, most similar first (for "far": least similar first)."""
        i = self._row(report_or_id)
        return [self.reports[j] for j in self.negatives[i, :self._n_valid[i]]]

    def sample_negative(self, report_or_id, rng: np.random.Generator) -> str:
        """A negative for the report, uniform over its k precomputed negatives: O(1), no model, no index.
        A row with no negative gets a uniformly drawn different candidate report (counted in fallback_count)."""
        i = self._row(report_or_id)
        n = self._n_valid[i]
        if n:
            return self.reports[self.negatives[i, int(rng.integers(n))]]
        self.fallback_count += 1
        c = self.num_candidates
        if i < c:
            if c < 2:
                raise ValueError("the N3S table has a single candidate report: no negative exists")
            j = int(rng.integers(c - 1))
            return self.reports[j + 1 if j >= i else j]
        return self.reports[int(rng.integers(c))]

    def sample_negatives(self, reports_or_ids: Sequence, rng: np.random.Generator) -> List[str]:
        return [self.sample_negative(r, rng) for r in reports_or_ids]

    # ---- persistence ---------------------------------------------------------------------------------------
    def save(self, folder: Union[str, os.PathLike], *, embeddings: Optional[np.ndarray] = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (REPORTS_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.reports, f, ensure_ascii=False)
        os.replace(tmp, folder / REPORTS_FILE)
        np.save(folder / NEGATIVES_FILE, self.negatives.astype(np.int32))
        if self.similarities is not None:
            np.save(folder / SIMILARITIES_FILE, np.asarray(self.similarities, dtype=np.float16))
        if embeddings is not None:
            np.save(folder / EMBEDDINGS_FILE, np.asarray(embeddings, dtype=np.float16))
        meta = dict(self.meta)
        meta.setdefault("format_version", FORMAT_VERSION)
        meta.setdefault("counts", {})["candidates"] = self.num_candidates
        meta["counts"]["rows"] = len(self)
        meta["k"] = self.k
        tmp = folder / (META_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
        os.replace(tmp, folder / META_FILE)  # written last: its presence marks a complete table
        return folder

    @classmethod
    def load(cls, folder: Union[str, os.PathLike], *, mmap: bool = False) -> "N3STable":
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"N3S table folder {str(folder)!r} does not exist (build it with "
                                    "python -m train.build_n3s --dataset DIR --encoder PATH_OR_ID)")
        missing = [f for f in (META_FILE, REPORTS_FILE, NEGATIVES_FILE) if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(folder)!r} is not a complete N3S table: missing {', '.join(missing)}")
        damaged = f"the N3S table {str(folder)!r} is damaged ({{}}): rebuild it with python -m train.build_n3s"
        meta, reports = (_read_json(folder / name, damaged) for name in (META_FILE, REPORTS_FILE))
        if not isinstance(meta, dict) or not isinstance(reports, list):
            raise ValueError(damaged.format(f"{META_FILE} must hold an object and {REPORTS_FILE} a list"))
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(damaged.format(f"{META_FILE} format_version {version!r} is not a whole number"))
        if version > FORMAT_VERSION:
            raise ValueError(f"N3S table format {version} is newer than this code ({FORMAT_VERSION})")
        try:
            negatives = np.load(folder / NEGATIVES_FILE, mmap_mode="r" if mmap else None)
            sims = folder / SIMILARITIES_FILE
            similarities = np.load(sims, mmap_mode="r" if mmap else None) if sims.is_file() else None
        except (ValueError, OSError, EOFError) as err:  # a truncated or overwritten .npy
            raise ValueError(damaged.format(f"{err}")) from None
        if negatives.ndim != 2 or len(negatives) != len(reports):
            raise ValueError(damaged.format(f"{NEGATIVES_FILE} has shape {tuple(negatives.shape)} but "
                                            f"{REPORTS_FILE} lists {len(reports)} reports"))
        try:
            return cls(reports, negatives, meta=meta, similarities=similarities)
        except (ValueError, TypeError, AttributeError) as err:  # ids out of range, a bad count in meta.json...
            raise ValueError(damaged.format(err)) from None

    def __repr__(self) -> str:
        return (f"N3STable({len(self)} reports, k={self.k}, mode={self.meta.get('mode')!r}, "
                f"max_similarity={self.meta.get('max_similarity')})")


def build_n3s_table(reports: Iterable[str], embedder: Union[TextEmbedder, Callable], k: int = DEFAULT_K,
                    mode: str = "near", max_similarity: float = DEFAULT_MAX_SIMILARITY, index: str = "auto", *,
                    query_only_reports: Optional[Iterable[str]] = None, batch_size: Optional[int] = None,
                    hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, hnsw_m: int = 32, ef_construction: int = 100,
                    ef_search: int = 256, recall_sample: int = 1000, seed: int = 0, progress: bool = True,
                    return_embeddings: bool = False, extra_meta: Optional[dict] = None):
    """Deduplicate, embed once, index, and precompute k negatives per distinct report -> `N3STable`.

    `reports`: raw report texts (duplicates and uncleaned text welcome): the candidates, i.e. the train split.
    `query_only_reports`: further texts (e.g. validation reports) that get rows but are never drawn as a negative.
    `embedder`: a `TextEmbedder` or any callable list[str] -> unit vectors [N, D].
    With return_embeddings=True returns (table, embeddings float32 [U, D]).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if index not in INDEX_TYPES:
        raise ValueError(f"index must be one of {INDEX_TYPES}, got {index!r}")
    t_start = time.perf_counter()
    if isinstance(reports, str):
        raise TypeError("reports must be a list of report strings, not a single string")
    cands, n_read, n_empty = unique_reports(reports)
    if not cands:
        raise NoReportsError(f"no non-empty report to build an N3S table from ({n_read} read, {n_empty} empty "
                             "after cleaning)")
    if len(cands) < 2:
        raise NoReportsError(f"an N3S table needs at least two distinct reports, got {len(cands)}: {cands[0]!r}")
    extra, q_read, q_empty = unique_reports(query_only_reports or [], exclude=set(cands))
    texts = cands + extra
    logger.info("N3S: %d reports read -> %d distinct candidates (+%d query-only)", n_read, len(cands), len(extra))

    t0 = time.perf_counter()
    if isinstance(embedder, TextEmbedder):
        emb = embedder.embed(texts, batch_size=batch_size, progress=progress)
        encoder_meta = embedder.describe()
    else:
        emb = np.asarray(embedder(texts), dtype=np.float32)
        encoder_meta = {"name": getattr(embedder, "name", type(embedder).__name__), "pooling": "custom callable"}
    t_embed = time.perf_counter() - t0
    if emb.shape[0] != len(texts):
        raise ValueError(f"the embedder returned {emb.shape[0]} vectors for {len(texts)} texts")
    if not np.isfinite(emb).all():
        raise ValueError("the embedder returned non-finite values")
    logger.info("N3S: embedded %d reports in %.1fs", len(texts), t_embed)

    keys = [finding_key(t) for t in texts]
    first: Dict[str, int] = {}
    groups = np.array([first.setdefault(key, i) for i, key in enumerate(keys)], dtype=np.int64)
    neg, sims, info = find_negatives(
        emb, k=k, mode=mode, max_similarity=max_similarity, index=index, num_candidates=len(cands), groups=groups,
        hnsw_threshold=hnsw_threshold, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
        recall_sample=recall_sample, seed=seed, progress=progress)
    info["counts"].update({"reports_read": int(n_read), "empty_skipped": int(n_empty),
                           "query_only_read": int(q_read), "query_only_empty_skipped": int(q_empty)})
    info["time_s"]["embed"] = round(t_embed, 3)
    info["time_s"]["total"] = round(time.perf_counter() - t_start, 3)
    meta = {
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "k": int(k),
        "max_similarity": float(max_similarity),
        "identical_cosine": IDENTICAL_COSINE,
        "key": "canonical_report: normalize_report + whitespace collapsed",
        "duplicates": "same row, same finding_key (words without punctuation), or cosine >= identical_cosine",
        "encoder": encoder_meta,
        **info,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    if extra_meta:
        meta.update(extra_meta)
    table = N3STable(texts, neg, meta=meta, similarities=sims, num_candidates=len(cands))
    return (table, emb) if return_embeddings else table


def _versions() -> dict:
    out = {}
    for mod in ("faiss", "torch", "transformers", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            pass
    return out
