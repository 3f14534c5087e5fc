"""Evaluation metrics shared by the zero-shot, retrieval and linear-probe scripts.

Everything takes plain numpy arrays and returns numpy values or JSON-ready dicts, so any evaluation can use it:

Classification (multi-label, one score column per class)
    per_class_auc(y_true, scores) -> np.ndarray [classes]       ROC AUC per column; NaN where undefined
    evaluable_classes(y_true) -> np.ndarray[bool] [classes]     columns with both positives and negatives
    macro_auc(y_true, scores) -> float                          mean of the defined per-class AUCs
    bootstrap_ci(y_true, scores, metric=macro_auc, ...) -> dict percentile CI over resampled records
    per_class_bootstrap_ci(y_true, scores, ...) -> dict         the same for every class at once
    auc_report(y_true, scores, class_names, ...) -> dict        macro + per-class + CIs + excluded classes

Retrieval
    first_positive_rank(similarity, positives) -> np.ndarray    0-based rank of the best correct candidate
    recall_at_k(similarity, positives, ks=(1, 5, 10)) -> dict   fraction of queries with a hit in the top k
    retrieval_recall(query, candidates, ...) -> dict            chunked recall@k from embeddings and group ids
    group_ids(texts) -> np.ndarray                              equal texts -> equal ids (duplicate-aware targets)

AUC definition. `per_class_auc` uses the rank (Mann-Whitney U) formulation with average ranks for ties; it
equals `sklearn.metrics.roc_auc_score` on every column that has both labels (tested). A column with only
positives or only negatives has no AUC: it is NaN here, and `macro_auc` averages the other columns (the same as
sklearn's `average="macro"` restricted to the scorable classes). `auc_report` names the excluded classes.

Bootstrap. Records (rows) are resampled with replacement `n_resamples` times from a seeded
`numpy.random.default_rng(seed)`; the metric is recomputed on each resample and the CI is the percentile
interval. A resample on which the metric is undefined (NaN) is skipped and counted in `n_invalid`.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "per_class_auc",
    "evaluable_classes",
    "macro_auc",
    "bootstrap_ci",
    "per_class_bootstrap_ci",
    "auc_report",
    "first_positive_rank",
    "recall_at_k",
    "retrieval_recall",
    "group_ids",
]


def _as_2d(y_true, scores):
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape != s.shape:
        raise ValueError(f"y_true has shape {y.shape} but scores have shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
    return y > 0.5, s


def _rank_columns(s: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties averaged) of each column."""
    from scipy.stats import rankdata

    return rankdata(s, axis=0)


def evaluable_classes(y_true) -> np.ndarray:
    """Boolean mask of the columns of `y_true` [n, classes] that hold both positives and negatives."""
    y = np.asarray(y_true) > 0.5
    if y.ndim == 1:
        y = y[:, None]
    pos = y.sum(axis=0)
    return (pos > 0) & (pos < y.shape[0])


def per_class_auc(y_true, scores) -> np.ndarray:
    """ROC AUC of each column of `scores` [n, classes] against the multi-hot `y_true` [n, classes].

    Returns float64 [classes]; NaN for a column with only positives or only negatives. 1-D inputs are treated
    as one class. Equal to sklearn's roc_auc_score column by column (ties get average ranks)."""
    y, s = _as_2d(y_true, scores)
    if y.shape[0] == 0:
        return np.full(y.shape[1], np.nan)
    n_pos = y.sum(axis=0).astype(np.float64)
    n_neg = y.shape[0] - n_pos
    ranks = _rank_columns(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * y).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def macro_auc(y_true, scores) -> float:
    """Unweighted mean of the defined per-class AUCs; NaN when no class has both labels."""
    auc = per_class_auc(y_true, scores)
    return float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple:
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def bootstrap_ci(
    y_true,
    scores,
    metric: Callable[[np.ndarray, np.ndarray], float] = macro_auc,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap CI of `metric(y_true[idx], scores[idx])` over records resampled with replacement.

    Returns {"low", "high", "confidence", "n_resamples", "n_invalid", "seed", "method", "std"}; low/high are
    None when every resample was invalid (or n_resamples == 0)."""
    y = np.asarray(y_true)
    s = np.asarray(scores)
    if len(y) != len(s):
        raise ValueError(f"{len(y)} label rows but {len(s)} score rows")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n = len(y)
    values = []
    invalid = 0
    for _ in range(int(n_resamples)):
        idx = rng.integers(0, n, size=n)
        v = metric(y[idx], s[idx])
        if v is None or not np.isfinite(v):
            invalid += 1
            continue
        values.append(float(v))
    out = {"confidence": confidence, "n_resamples": int(n_resamples), "n_invalid": invalid, "seed": seed,
           "method": "percentile bootstrap over records"}
    if values:
        arr = np.asarray(values)
        out["low"], out["high"] = _percentile_interval(arr, confidence)
        out["std"] = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    else:
        out["low"] = out["high"] = out["std"] = None
    return out


class _ResampledAUC:
    """Per-class AUC of a resample given as record multiplicities (bootstrap counts), in O(n * classes).

    The columns are sorted and their tie groups found once; a resample then only re-weights each record, and
    AUC = sum over tie groups of pos_weight * (neg_weight below + neg_weight in the group / 2) / (P * N), which
    is exactly the average-rank AUC of the resampled data (same as per_class_auc(y[idx], s[idx]))."""

    def __init__(self, y: np.ndarray, s: np.ndarray):
        n, c = s.shape
        self.n, self.c = n, c
        self.order = np.argsort(s, axis=0, kind="mergesort")
        sorted_s = np.take_along_axis(s, self.order, axis=0)
        new_group = np.ones((n, c), dtype=bool)
        new_group[1:] = sorted_s[1:] != sorted_s[:-1]
        group = np.cumsum(new_group, axis=0) - 1
        self.flat_group = (group + (np.arange(c) * n)[None, :]).ravel(order="F")  # column-major offsets
        self.y_sorted = np.take_along_axis(y.astype(np.float64), self.order, axis=0)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        n, c = self.n, self.c
        w = counts.astype(np.float64)[self.order]  # [n, c], in each column's sorted order
        pos = (w * self.y_sorted).ravel(order="F")
        neg = (w * (1.0 - self.y_sorted)).ravel(order="F")
        pos_g = np.bincount(self.flat_group, weights=pos, minlength=n * c).reshape(c, n)
        neg_g = np.bincount(self.flat_group, weights=neg, minlength=n * c).reshape(c, n)
        neg_below = np.cumsum(neg_g, axis=1) - neg_g
        p_tot, n_tot = pos_g.sum(axis=1), neg_g.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1) / (p_tot * n_tot)
        auc[(p_tot == 0) | (n_tot == 0)] = np.nan
        return auc


def per_class_bootstrap_ci(
    y_true, scores, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Percentile bootstrap CI of every class's AUC and of the macro AUC, from the same resamples.

    Returns {"macro": {"low", "high", "n_invalid"}, "per_class": [{"low", "high", "n_invalid"}, ...], ...}.
    The macro value of a resample is the mean over the classes scorable *in that resample*."""
    y, s = _as_2d(y_true, scores)
    n, c = y.shape
    rng = np.random.default_rng(seed)
    weighted = _ResampledAUC(y, s)
    per_class = np.full((int(n_resamples), c), np.nan)
    for r in range(int(n_resamples)):
        per_class[r] = weighted(np.bincount(rng.integers(0, n, size=n), minlength=n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" for all-NaN resamples
        macro = np.nanmean(per_class, axis=1) if c else np.full(int(n_resamples), np.nan)

    def summary(values: np.ndarray) -> dict:
        ok = values[np.isfinite(values)]
        d = {"n_invalid": int(len(values) - len(ok))}
        if len(ok):
            d["low"], d["high"] = _percentile_interval(ok, confidence)
        else:
            d["low"] = d["high"] = None
        return d

    return {
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "seed": seed,
        "method": "percentile bootstrap over records",
        "macro": summary(macro),
        "per_class": [summary(per_class[:, j]) for j in range(c)],
    }


def auc_report(
    y_true,
    scores,
    class_names: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Macro and per-class ROC AUC with bootstrap CIs, as a JSON-ready dict.

    Keys: macro_auc (float, over the scorable classes), per_class_auc ({class: AUC or None}),
    per_class_ci ({class: [low, high] or None}), macro_auc_ci ({"low", "high", ...}), positives ({class: n}),
    n_records, n_classes_scored, excluded_classes ([{class, reason}]) and a `note` when some were excluded."""
    y, s = _as_2d(y_true, scores)
    names = [str(c) for c in class_names]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} class names for {y.shape[1]} score columns")
    auc = per_class_auc(y, s)
    ok = np.isfinite(auc)
    n = y.shape[0]
    positives = y.sum(axis=0).astype(int)
    excluded = []
    for j, name in enumerate(names):
        if not ok[j]:
            reason = "no positive record" if positives[j] == 0 else "no negative record"
            excluded.append({"class": name, "reason": reason, "positives": int(positives[j]), "records": n})
    ci = per_class_bootstrap_ci(y, s, n_resamples, confidence, seed) if n_resamples else None
    report = {
        "macro_auc": float(auc[ok].mean()) if ok.any() else None,
        "macro_auc_ci": (dict(ci["macro"], confidence=confidence, n_resamples=int(n_resamples), seed=seed,
                              method=ci["method"]) if ci else None),
        "per_class_auc": {name: (float(auc[j]) if ok[j] else None) for j, name in enumerate(names)},
        "per_class_ci": ({name: ([ci["per_class"][j]["low"], ci["per_class"][j]["high"]]
                                 if ok[j] and ci["per_class"][j]["low"] is not None else None)
                          for j, name in enumerate(names)} if ci else None),
        "positives": {name: int(positives[j]) for j, name in enumerate(names)},
        "n_records": int(n),
        "n_classes": len(names),
        "n_classes_scored": int(ok.sum()),
        "excluded_classes": excluded,
    }
    if excluded:
        report["note"] = (
            f"{len(excluded)} class(es) have only one label value in this split and no AUC: "
            + ", ".join(f"{e['class']} ({e['reason']})" for e in excluded)
            + "; the macro AUC averages the other classes."
        )
    return report


# --------------------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------------------


def _positives_mask(positives, n_queries: int, n_candidates: int) -> np.ndarray:
    p = np.asarray(positives)
    if p.ndim == 1:  # one target index per query
        if len(p) != n_queries:
            raise ValueError(f"{len(p)} target indices for {n_queries} queries")
        if p.min(initial=0) < 0 or p.max(initial=0) >= n_candidates:
            raise ValueError("target index out of range")
        mask = np.zeros((n_queries, n_candidates), dtype=bool)
        mask[np.arange(n_queries), p.astype(int)] = True
        return mask
    if p.shape != (n_queries, n_candidates):
        raise ValueError(f"positives mask has shape {p.shape}, expected {(n_queries, n_candidates)}")
    return p.astype(bool)


def first_positive_rank(similarity, positives) -> np.ndarray:
    """0-based rank of each query's best-scoring correct candidate.

    `similarity` [queries, candidates] (higher = better); `positives` is either an int array [queries] of the
    one correct candidate per query, or a bool mask [queries, candidates] of every correct candidate.
    The rank is the number of *incorrect* candidates scoring at least as high as the best correct one (ties
    count against the query: a constant similarity gives no hit unless all candidates are correct). A query
    without any correct candidate gets rank = n_candidates (never a hit)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [queries, candidates], got shape {sim.shape}")
    mask = _positives_mask(positives, *sim.shape)
    best_pos = np.where(mask, sim, -np.inf).max(axis=1)
    ranks = ((sim >= best_pos[:, None]) & ~mask).sum(axis=1)
    ranks[~mask.any(axis=1)] = sim.shape[1]
    return ranks


def recall_at_k(similarity, positives, ks: Iterable[int] = (1, 5, 10)) -> Dict[str, float]:
    """{"R@k": fraction of queries whose correct candidate (any one, for a mask) is in the top k}."""
    ranks = first_positive_rank(similarity, positives)
    return {f"R@{int(k)}": float(np.mean(ranks < int(k))) if len(ranks) else float("nan") for k in ks}


def group_ids(texts: Sequence[str], normalize: Optional[Callable[[str], str]] = None) -> np.ndarray:
    """Integer id per text, equal for equal texts (after `normalize`, e.g. str.strip/lower): use it as
    `query_groups`/`candidate_groups` so that a retrieved duplicate of the true text counts as correct."""
    table: Dict[str, int] = {}
    out = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        key = normalize(t) if normalize else str(t)
        out[i] = table.setdefault(key, len(table))
    return out


def retrieval_recall(
    query_embeds,
    candidate_embeds,
    query_groups: Optional[Sequence[int]] = None,
    candidate_groups: Optional[Sequence[int]] = None,
    ks: Iterable[int] = (1, 5, 10),
    normalize: bool = True,
    chunk_size: int = 1024,
    return_ranks: bool = False,
) -> Dict[str, Union[float, List[int]]]:
    """Recall@k of retrieving candidates for queries from embeddings, in query chunks (no n x n matrix).

    Score = cosine similarity (`normalize=True`) or the raw dot product. Without groups, query i's correct
    candidate is candidate i (paired data). With `query_groups` / `candidate_groups` (ints, e.g. from
    `group_ids`), every candidate with the query's group is correct. Returns {"R@k": ..., "n_queries",
    "n_candidates", "median_rank" (1-based)} (+ "ranks", 0-based, with return_ranks)."""
    q = np.asarray(query_embeds, dtype=np.float32)
    c = np.asarray(candidate_embeds, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"embeddings must be [n, d] with equal d, got {q.shape} and {c.shape}")
    if normalize:
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    if (query_groups is None) != (candidate_groups is None):
        raise ValueError("give both query_groups and candidate_groups, or neither")
    if query_groups is None:
        if len(q) != len(c):
            raise ValueError("paired retrieval needs as many queries as candidates (or pass groups)")
        qg, cg = np.arange(len(q)), np.arange(len(c))
    else:
        qg, cg = np.asarray(query_groups), np.asarray(candidate_groups)
        if len(qg) != len(q) or len(cg) != len(c):
            raise ValueError("one group id per query and per candidate is required")
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        sim = q[start:stop] @ c.T
        ranks[start:stop] = first_positive_rank(sim, qg[start:stop, None] == cg[None, :])
    ks = [int(k) for k in ks]
    out: Dict[str, Union[float, List[int]]] = {f"R@{k}": float(np.mean(ranks < k)) if len(ranks) else float("nan")
                                               for k in ks}
    out["n_queries"] = int(len(q))
    out["n_candidates"] = int(len(c))
    out["median_rank"] = float(np.median(ranks) + 1) if len(ranks) else float("nan")
    if return_ranks:
        out["ranks"] = ranks.tolist()
    return out
