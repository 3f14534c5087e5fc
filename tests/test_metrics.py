"""eval.metrics: AUROC and AUPRC against sklearn, their bootstrap intervals, classes with one label value, the
retrieval tie rule, and the Markdown helpers the evaluation reports share."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eval import metrics
from eval.metrics import (
    auc_report,
    bootstrap_ci,
    first_positive_rank,
    format_class,
    format_macro,
    macro_auc,
    macro_auprc,
    per_class_auc,
    per_class_auprc,
    per_class_bootstrap_ci,
    recall_at_k,
)


def labels_scores(n=200, c=5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    s = np.round(rng.random((n, c)) + 0.5 * y, 1)  # rounding makes ties
    return y, s


def test_auprc_is_sklearns_average_precision_and_shares_the_exclusion_rule():
    y, s = labels_scores()
    y[:, 3] = 1  # no negative
    y[:, 4] = 0  # no positive
    ap, auc = per_class_auprc(y, s), per_class_auc(y, s)
    for j in range(3):
        assert ap[j] == pytest.approx(average_precision_score(y[:, j], s[:, j]), abs=1e-12)
        assert auc[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    assert np.isnan(ap[3:]).all() and np.isnan(auc[3:]).all()  # never 0.5 or 1.0 for an undefined class
    assert macro_auprc(y, s) == pytest.approx(np.mean(ap[:3]), abs=1e-12)
    assert macro_auc(y, s) == pytest.approx(np.mean(auc[:3]), abs=1e-12)
    assert np.isnan(macro_auprc(np.zeros((5, 2)), np.zeros((5, 2))))


@pytest.mark.parametrize("metric,sk", [("auroc", roc_auc_score), ("auprc", average_precision_score)])
def test_weighted_bootstrap_equals_sklearn_on_the_resampled_records(metric, sk):
    y, s = labels_scores(n=60, c=3, seed=2)
    rng = np.random.default_rng(5)
    curves = metrics._WeightedCurves(y > 0.5, s)
    for _ in range(20):
        idx = rng.integers(0, len(y), size=len(y))
        fast = curves(np.bincount(idx, minlength=len(y)), metric)
        for j in range(3):
            if 0 < y[idx, j].sum() < len(idx):
                assert fast[j] == pytest.approx(sk(y[idx, j], s[idx, j]), abs=1e-12)
            else:
                assert np.isnan(fast[j])
    # the public CI: same resamples as the explicit per-resample loop with sklearn
    explicit = bootstrap_ci(y, s, metric=macro_auprc if metric == "auprc" else macro_auc, n_resamples=100, seed=3)
    ci = per_class_bootstrap_ci(y, s, n_resamples=100, seed=3, metric=metric)
    assert ci["metric"] == metric
    assert ci["macro"]["low"] == pytest.approx(explicit["low"], abs=1e-12)
    assert ci["macro"]["high"] == pytest.approx(explicit["high"], abs=1e-12)


def test_report_has_auprc_beside_auroc_and_lists_one_valued_classes():
    y, s = labels_scores()
    y[:, 1] = 0
    report = auc_report(y, s, list("ABCDE"), n_resamples=100, seed=1)
    assert report["per_class_auc"]["B"] is None and report["per_class_auprc"]["B"] is None
    assert report["per_class_ci"]["B"] is None and report["per_class_auprc_ci"]["B"] is None
    assert report["excluded_classes"] == [{"class": "B", "reason": "no positive record", "positives": 0,
                                           "records": 200}]
    assert "B (no positive record)" in report["note"] and report["n_classes_scored"] == 4
    scored = [v for v in report["per_class_auprc"].values() if v is not None]
    assert report["macro_auprc"] == pytest.approx(np.mean(scored))
    ci = report["macro_auprc_ci"]
    assert ci["low"] <= report["macro_auprc"] <= ci["high"] and ci["n_resamples"] == 100
    low, high = report["per_class_auprc_ci"]["A"]
    assert low <= report["per_class_auprc"]["A"] <= high
    json.dumps(report, allow_nan=False)

    line = format_macro(report)
    assert f"macro AUROC **{100 * report['macro_auc']:.1f}**" in line and "macro AUPRC **" in line
    assert "95% CI" in line and "4 of 5 classes scored" in line
    assert format_class(report, "B") == {"auroc": "n/a", "auroc_ci": "-", "auprc": "n/a", "auprc_ci": "-"}
    assert format_class(report, "A")["auprc"] == f"{100 * report['per_class_auprc']['A']:.1f}"


def test_no_evaluable_class_is_reported_not_raised():
    report = auc_report(np.ones((6, 2)), np.zeros((6, 2)), ["A", "B"], n_resamples=20)
    assert report["macro_auc"] is None and report["macro_auprc"] is None
    assert report["macro_auc_ci"]["low"] is None and len(report["excluded_classes"]) == 2
    json.dumps(report, allow_nan=False)


def test_labels_must_be_zero_or_one():
    y, s = labels_scores(n=10, c=2)
    y[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"0 or 1.*row 3, column 1"):
        auc_report(y, s, ["A", "B"])
    y[3, 1] = 2
    with pytest.raises(ValueError, match="0 or 1"):
        per_class_auprc(y, s)


def test_tie_rule_counts_ties_against_the_query():
    """rank = (candidates scoring >= the target) - 1: a tie with a wrong candidate is not a hit."""
    sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.9, 0.1, 0.0]])
    assert first_positive_rank(sim, [0, 1, 0]).tolist() == [1, 1, 0]
    assert recall_at_k(sim, [0, 1, 0], ks=(1, 2)) == {"R@1": pytest.approx(1 / 3), "R@2": 1.0}
    assert recall_at_k(np.zeros((4, 4)), np.arange(4), ks=(1,)) == {"R@1": 0.0}
    torch = pytest.importorskip("torch")  # pretraining validation passes torch tensors
    assert recall_at_k(torch.tensor(sim), torch.tensor([0, 1, 0]), ks=(1,)) == {"R@1": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="NaN"):
        first_positive_rank(np.array([[np.nan, 1.0]]), [0])


def test_a_class_name_given_twice_is_refused():
    """The per-class figures are keyed by name: a name given twice kept only the last column's AUC while the macro
    counted both (helper: /tmp/hI/repro/auc_report_duplicate_names.py)."""
    from eval.metrics import auc_report, make_compute_metrics

    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.3]])
    with pytest.raises(ValueError, match="class name.s. AFIB given more than once"):
        auc_report(y, s, ["AFIB", "AFIB"], n_resamples=0)
    with pytest.raises(ValueError, match="AFIB given more than once"):
        make_compute_metrics(["AFIB", "AFIB"])
    assert set(auc_report(y, s, ["AFIB", "NORM"], n_resamples=0)["per_class_auc"]) == {"AFIB", "NORM"}
