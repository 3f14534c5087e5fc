"""The evaluation metrics: the one place where AUROC, AUPRC, recall@k and their bootstrap intervals are computed.

Zero-shot, linear probe, retrieval, fine-tuning (checkpoint selection and the final report) and pretraining
validation all call these functions, so a figure means the same thing wherever it is printed. Inputs are plain
numpy arrays (or anything `np.asarray` takes); outputs are floats, numpy arrays or JSON-ready dicts.

Classification (multi-label: one 0/1 label column and one score column per class)
    evaluable_classes(y_true) -> bool [classes]                 columns holding both a positive and a negative
    per_class_auc(y_true, scores) -> float [classes]            AUROC per class (sklearn roc_auc_score); NaN if
                                                                the class is not evaluable
    per_class_auprc(y_true, scores) -> float [classes]          AUPRC per class = average precision (sklearn
                                                                average_precision_score); NaN likewise
    macro_auc / macro_auprc(y_true, scores) -> float            mean over the evaluable classes (NaN if none)
    point_metrics(y_true, scores) -> dict                       both, per class and macro, from one call
    bootstrap_ci(y_true, scores, metric=macro_auc, ...) -> dict percentile CI of any metric, explicit resamples
    per_class_bootstrap_ci(y_true, scores, metric="auroc"|"auprc", ...) -> dict   every class + macro at once
    auc_report(y_true, scores, class_names, ...) -> dict        the JSON block every evaluation writes
    format_macro(report) / format_class(report, name)           Markdown-ready text of an auc_report
    make_compute_metrics(class_names)                           `compute_metrics` for transformers.Trainer

Retrieval
    first_positive_rank(similarity, positives) -> int [queries] 0-based rank under the tie rule below
    recall_at_k(similarity, positives, ks=(1, 5, 10)) -> dict   {"R@k": fraction of queries ranked < k}
    retrieval_recall(query, candidates, ...) -> dict            the same from embeddings, in query chunks
    group_ids(keys) -> int [n]                                  equal keys -> equal ids (duplicate-aware targets)

Classes with one label value. A class without a positive, or without a negative, in the evaluated records has
no AUROC, and is given no AUPRC either so that both macros average the same classes. Such a class is NaN in the
per-class arrays, `None` in the JSON, left out of both macros and listed in `auc_report`'s `excluded_classes`
(with the reason) and `note`. It never counts as 0.5 and never raises. When no class is evaluable the macros are
NaN (None in the JSON).

Tie rule (retrieval). A query's rank is the number of *incorrect* candidates scoring at least as high as its
best-scoring correct candidate. With one correct candidate that is (candidates scoring >= the target) - 1: ties
count against the query, so a constant similarity never scores a hit by luck (the conservative rule; it gives
lower recall than counting only strictly higher candidates). Recall@k is the fraction of queries with rank < k.

Bootstrap. Records (rows) are resampled with replacement from `numpy.random.default_rng(seed)`; the CI is the
percentile interval of the metric over resamples; a resample on which it is undefined is skipped and counted in
`n_invalid`. `per_class_bootstrap_ci` computes every class of a resample at once by weighting each record by
its multiplicity in the resample: that is sklearn's AUROC / average precision with `sample_weight` (tested equal
to sklearn on the resampled rows); calling sklearn per class and resample would take a minute per report.

Why no `evaluate` metric module: `evaluate.load` copies a metric script into its own cache and imports it from
there, so the script cannot import this module; a second copy of the formulas is what made the numbers
disagree. `make_compute_metrics` is the Trainer hook instead.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "evaluable_classes",
    "per_class_auc",
    "per_class_auprc",
    "macro_auc",
    "macro_auprc",
    "point_metrics",
    "bootstrap_ci",
    "per_class_bootstrap_ci",
    "auc_report",
    "format_macro",
    "format_class",
    "make_compute_metrics",
    "TIE_RULE",
    "first_positive_rank",
    "recall_at_k",
    "retrieval_recall",
    "group_ids",
]

METRICS = ("auroc", "auprc")
TIE_RULE = ("rank = number of incorrect candidates scoring >= the best correct one (with one correct candidate: "
            "candidates scoring >= it, minus one); ties count against the query")


def _labels(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 1:
        y = y[:, None]
    if y.dtype == bool:
        return y
    y = y.astype(np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"labels must be 0 or 1; {int(bad.sum())} value(s) are not (first: row {row}, "
                         f"column {col}: {y[row, col]})")
    return y > 0.5


class NonFiniteScoresError(ValueError):
    """Scores holding NaN or infinity: no AUC is defined (a model whose weights diverged gives them)."""


def _as_2d(y_true, scores):
    y = _labels(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if y.shape != s.shape:
        raise ValueError(f"y_true has shape {y.shape} but scores have shape {s.shape}")
    if not np.isfinite(s).all():
        raise NonFiniteScoresError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
    return y, s


def evaluable_classes(y_true) -> np.ndarray:
    """Boolean mask of the columns of `y_true` [n, classes] that hold both positives and negatives."""
    y = _labels(y_true)
    pos = y.sum(axis=0)
    return (pos > 0) & (pos < y.shape[0])


def _per_class(y_true, scores, metric: str) -> np.ndarray:
    from sklearn.metrics import average_precision_score, roc_auc_score

    fn = {"auroc": roc_auc_score, "auprc": average_precision_score}[metric]
    y, s = _as_2d(y_true, scores)
    out = np.full(y.shape[1], np.nan)
    cols = np.flatnonzero(evaluable_classes(y))
    if len(cols) == 1:
        out[cols[0]] = fn(y[:, cols[0]], s[:, cols[0]])
    elif len(cols) > 1:  # one multilabel call: sklearn validates once, not once per class (the probe's hot path)
        out[cols] = fn(y[:, cols], s[:, cols], average=None)
    return out


def per_class_auc(y_true, scores) -> np.ndarray:
    """AUROC of each column of `scores` [n, classes] against the 0/1 `y_true` [n, classes] (sklearn
    roc_auc_score); NaN for a column with only positives or only negatives. 1-D inputs are one class."""
    return _per_class(y_true, scores, "auroc")


def per_class_auprc(y_true, scores) -> np.ndarray:
    """AUPRC of each column as average precision (sklearn average_precision_score: the step-wise area, no
    interpolation); NaN where the AUROC is undefined. Chance level is the class's prevalence."""
    return _per_class(y_true, scores, "auprc")


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def macro_auc(y_true, scores) -> float:
    """Unweighted mean of the defined per-class AUROCs; NaN when no class has both labels."""
    return _nanmean(per_class_auc(y_true, scores))


def macro_auprc(y_true, scores) -> float:
    """Unweighted mean of the defined per-class AUPRCs (macro average precision); NaN when none is defined."""
    return _nanmean(per_class_auprc(y_true, scores))


def point_metrics(y_true, scores) -> dict:
    """{"per_class_auc", "per_class_auprc" (float arrays, NaN = not evaluable), "macro_auc", "macro_auprc"
    (floats, NaN if no class is evaluable), "evaluable" (bool array)}: the figures every report is built from."""
    y, s = _as_2d(y_true, scores)
    auc, ap = per_class_auc(y, s), per_class_auprc(y, s)
    return {"per_class_auc": auc, "per_class_auprc": ap, "macro_auc": _nanmean(auc), "macro_auprc": _nanmean(ap),
            "evaluable": evaluable_classes(y)}


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


class _WeightedCurves:
    """Per-class AUROC and average precision of a resample given as record multiplicities, in O(n * classes).

    Each column is sorted and its tie groups found once; a resample only re-weights the records. Per tie group g
    (ascending score) with positive weight p_g and negative weight q_g, out of P and N in total:
      AUROC = sum_g p_g * (negatives below g + q_g / 2) / (P * N)
      AP    = sum_g p_g * precision_g / P, precision_g = positives at or above g / all records at or above g
    which is what sklearn's roc_auc_score / average_precision_score give with `sample_weight`."""

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

    def __call__(self, counts: np.ndarray, metric: str) -> np.ndarray:
        n, c = self.n, self.c
        w = counts.astype(np.float64)[self.order]  # [n, c], in each column's sorted order
        pos = (w * self.y_sorted).ravel(order="F")
        neg = (w * (1.0 - self.y_sorted)).ravel(order="F")
        pos_g = np.bincount(self.flat_group, weights=pos, minlength=n * c).reshape(c, n)
        neg_g = np.bincount(self.flat_group, weights=neg, minlength=n * c).reshape(c, n)
        p_tot, n_tot = pos_g.sum(axis=1), neg_g.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            if metric == "auroc":
                neg_below = np.cumsum(neg_g, axis=1) - neg_g
                value = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1) / (p_tot * n_tot)
            else:
                pos_above = p_tot[:, None] - (np.cumsum(pos_g, axis=1) - pos_g)  # at or above group g
                all_above = pos_above + n_tot[:, None] - (np.cumsum(neg_g, axis=1) - neg_g)
                precision = np.where(pos_g > 0, pos_above / np.where(all_above > 0, all_above, 1.0), 0.0)
                value = (pos_g * precision).sum(axis=1) / p_tot
        value[(p_tot == 0) | (n_tot == 0)] = np.nan
        return value


def per_class_bootstrap_ci(
    y_true, scores, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0, metric: str = "auroc"
) -> dict:
    """Percentile bootstrap CI of every class's AUROC (metric="auroc") or AUPRC ("auprc") and of their macro
    mean, from the same resamples (the same seed gives the same resamples for both metrics).

    Returns {"metric", "macro": {"low", "high", "n_invalid"}, "per_class": [{"low", "high", "n_invalid"}, ...],
    "confidence", "n_resamples", "seed", "method"}. A resample's macro is the mean over the classes evaluable
    in that resample."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    y, s = _as_2d(y_true, scores)
    n, c = y.shape
    rng = np.random.default_rng(seed)
    weighted = _WeightedCurves(y, s)
    per_class = np.full((int(n_resamples), c), np.nan)
    for r in range(int(n_resamples)):
        per_class[r] = weighted(np.bincount(rng.integers(0, n, size=n), minlength=n), metric)
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
        "metric": metric,
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "seed": seed,
        "method": "percentile bootstrap over records",
        "macro": summary(macro),
        "per_class": [summary(per_class[:, j]) for j in range(c)],
    }


def _json_float(value) -> Optional[float]:
    return float(value) if value is not None and np.isfinite(value) else None


def _class_names(class_names: Sequence[str]) -> List[str]:
    """The names as strings; one given twice would key two columns' figures under one name (the per-class dicts
    kept the last while the macro counted both)."""
    names = [str(c) for c in class_names]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise ValueError(f"class name(s) {', '.join(twice)} given more than once: each score column needs its own")
    return names


def auc_report(
    y_true,
    scores,
    class_names: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Macro and per-class AUROC and AUPRC with bootstrap CIs, as a JSON-ready dict (every evaluation's block).

    Keys: macro_auc, macro_auprc (float, over the evaluable classes; None if none), per_class_auc,
    per_class_auprc ({class: value or None}), macro_auc_ci, macro_auprc_ci ({"low", "high", ...} or None
    without resamples), per_class_ci, per_class_auprc_ci ({class: [low, high] or None}), positives
    ({class: n}), n_records, n_classes, n_classes_scored, excluded_classes ([{class, reason, positives,
    records}]) and a `note` naming the excluded classes when there are any."""
    y, s = _as_2d(y_true, scores)
    names = _class_names(class_names)
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} class names for {y.shape[1]} score columns")
    point = point_metrics(y, s)
    ok = point["evaluable"]
    n = y.shape[0]
    positives = y.sum(axis=0).astype(int)
    excluded = []
    for j, name in enumerate(names):
        if not ok[j]:
            reason = "no positive record" if positives[j] == 0 else "no negative record"
            excluded.append({"class": name, "reason": reason, "positives": int(positives[j]), "records": n})
    report = {
        "macro_auc": _json_float(point["macro_auc"]),
        "macro_auprc": _json_float(point["macro_auprc"]),
        "macro_auc_ci": None,
        "macro_auprc_ci": None,
        "per_class_auc": {name: _json_float(point["per_class_auc"][j]) for j, name in enumerate(names)},
        "per_class_auprc": {name: _json_float(point["per_class_auprc"][j]) for j, name in enumerate(names)},
        "per_class_ci": None,
        "per_class_auprc_ci": None,
        "positives": {name: int(positives[j]) for j, name in enumerate(names)},
        "n_records": int(n),
        "n_classes": len(names),
        "n_classes_scored": int(ok.sum()),
        "excluded_classes": excluded,
        "metrics": "AUROC: sklearn roc_auc_score; AUPRC: sklearn average_precision_score (chance = prevalence); "
                   "macro = mean over the classes with both a positive and a negative record",
    }
    if n_resamples and n:
        for metric, macro_key, class_key in (("auroc", "macro_auc_ci", "per_class_ci"),
                                             ("auprc", "macro_auprc_ci", "per_class_auprc_ci")):
            ci = per_class_bootstrap_ci(y, s, n_resamples, confidence, seed, metric=metric)
            report[macro_key] = dict(ci["macro"], confidence=confidence, n_resamples=int(n_resamples), seed=seed,
                                     method=ci["method"])
            report[class_key] = {name: ([ci["per_class"][j]["low"], ci["per_class"][j]["high"]]
                                        if ok[j] and ci["per_class"][j]["low"] is not None else None)
                                 for j, name in enumerate(names)}
    if excluded:
        report["note"] = (
            f"{len(excluded)} class(es) have only one label value in these records and no AUROC or AUPRC: "
            + ", ".join(f"{e['class']} ({e['reason']})" for e in excluded)
            + "; the macro figures average the other classes."
        )
    return report


def _pct(value, scale: float = 100.0, digits: int = 1) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value * scale:.{digits}f}"


def _ci_text(interval, digits: int = 1) -> str:
    if not interval or interval[0] is None:
        return "-"
    return f"{_pct(interval[0], digits=digits)}-{_pct(interval[1], digits=digits)}"


def format_macro(report: dict, digits: int = 1) -> str:
    """One Markdown line of an auc_report's macro figures (x100), e.g.
    "macro AUROC **81.2** (95% CI 78.0-84.1) · macro AUPRC **45.3** (95% CI 40.2-50.0) · 5 of 6 classes scored"."""
    parts = []
    for label, key in (("AUROC", "macro_auc"), ("AUPRC", "macro_auprc")):
        ci = report.get(f"{key}_ci") or {}
        text = f"macro {label} **{_pct(report.get(key), digits=digits)}**"
        if ci.get("low") is not None:
            text += f" ({round(100 * ci.get('confidence', 0.95))}% CI {_ci_text((ci['low'], ci['high']), digits)})"
        parts.append(text)
    parts.append(f"{report['n_classes_scored']} of {report['n_classes']} classes scored")
    return " · ".join(parts)


def format_class(report: dict, name: str, digits: int = 1) -> Dict[str, str]:
    """Markdown cells (x100) of one class of an auc_report: {"auroc", "auroc_ci", "auprc", "auprc_ci"};
    "n/a" for a class excluded from the macros, "-" for a missing CI."""
    return {
        "auroc": _pct(report["per_class_auc"][name], digits=digits),
        "auroc_ci": _ci_text((report.get("per_class_ci") or {}).get(name), digits),
        "auprc": _pct(report["per_class_auprc"][name], digits=digits),
        "auprc_ci": _ci_text((report.get("per_class_auprc_ci") or {}).get(name), digits),
    }


def make_compute_metrics(class_names: Sequence[str]) -> Callable:
    """`compute_metrics` for transformers.Trainer on multi-label logits: {"macro_auc", "macro_auprc",
    "classes_scored", "auc_<class>", "auprc_<class>"} from point_metrics (the figures auc_report gives).
    With no evaluable class the macros are NaN (never 0 or 0.5)."""
    names = _class_names(class_names)

    def compute_metrics(prediction) -> Dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        point = point_metrics(prediction.label_ids, logits)
        if len(names) != len(point["evaluable"]):
            raise ValueError(f"{len(names)} class names for {len(point['evaluable'])} logit columns")
        out = {"macro_auc": point["macro_auc"], "macro_auprc": point["macro_auprc"],
               "classes_scored": int(point["evaluable"].sum())}
        for j, name in enumerate(names):
            if point["evaluable"][j]:
                out[f"auc_{name}"] = float(point["per_class_auc"][j])
                out[f"auprc_{name}"] = float(point["per_class_auprc"][j])
        return out

    return compute_metrics


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
    """0-based rank of each query's best-scoring correct candidate, under the module's tie rule.

    `similarity` [queries, candidates] (higher = better; torch tensors are accepted); `positives` is either an
    int array [queries] of the one correct candidate per query, or a bool mask [queries, candidates] of every
    correct candidate. The rank is the number of incorrect candidates scoring >= the best correct one (ties
    count against the query). A query without any correct candidate gets rank = n_candidates (never a hit)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [queries, candidates], got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError(f"similarity contains {int((~np.isfinite(sim)).sum())} NaN/inf values")
    mask = _positives_mask(positives, *sim.shape)
    best_pos = np.where(mask, sim, -np.inf).max(axis=1)
    ranks = ((sim >= best_pos[:, None]) & ~mask).sum(axis=1)
    ranks[~mask.any(axis=1)] = sim.shape[1]
    return ranks


def _recall_from_ranks(ranks: np.ndarray, ks: Iterable[int]) -> Dict[str, float]:
    return {f"R@{int(k)}": float(np.mean(ranks < int(k))) if len(ranks) else float("nan") for k in ks}


def recall_at_k(similarity, positives, ks: Iterable[int] = (1, 5, 10)) -> Dict[str, float]:
    """{"R@k": fraction of queries whose correct candidate (any one, for a mask) is in the top k}."""
    return _recall_from_ranks(first_positive_rank(similarity, positives), ks)


def group_ids(texts: Sequence, normalize: Optional[Callable] = None) -> np.ndarray:
    """Integer id per item, equal for equal items (after `normalize`, e.g. str.strip): use it as
    `query_groups`/`candidate_groups` so that a retrieved duplicate of the true text counts as correct. Items are
    texts or any hashable key (retrieval passes each report's token ids, `DBetaProcessor.text_keys`)."""
    table: Dict = {}
    out = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        key = normalize(t) if normalize else t
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
    out: Dict[str, Union[float, List[int]]] = dict(_recall_from_ranks(ranks, ks))
    out["n_queries"] = int(len(q))
    out["n_candidates"] = int(len(c))
    out["median_rank"] = float(np.median(ranks) + 1) if len(ranks) else float("nan")
    if return_ranks:
        out["ranks"] = ranks.tolist()
    return out
