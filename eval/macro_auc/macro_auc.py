"""Multi-label macro ROC AUC as a local `evaluate` metric module (loads offline: no Hub lookup).

    import evaluate
    metric = evaluate.load("eval/macro_auc")            # a folder path: evaluate imports this file
    metric.add_batch(predictions=scores, references=labels)   # [N, C] scores, [N, C] 0/1 labels
    metric.compute(class_names=["NORM", "AFIB"])        # {"macro_auc", "classes_scored", "per_class_auc"}

Per class it is scikit-learn's `roc_auc_score` (the same numbers as `eval.metrics.per_class_auc`, which the
bootstrap intervals use); a class without positives or without negatives has no AUC and is left out of the mean,
as in the downstream protocol. evaluate runs this file from its own cache, so it imports nothing from the package.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score

_DESCRIPTION = "Macro-averaged ROC AUC over the classes of a multi-label problem that have both labels."
_KWARGS_DESCRIPTION = """
Args:
    predictions: [N, C] scores (logits, probabilities or similarities; only their order within a class matters).
    references: [N, C] 0/1 labels.
    class_names: optional C names; per_class_auc is keyed by them (by column index otherwise).
Returns:
    macro_auc: the mean of the defined per-class AUCs (None if no class has both labels).
    classes_scored: how many classes have both labels.
    per_class_auc: {class: AUC or None}.
"""
_CITATION = """\
@article{hanley1982auc,
  title={The meaning and use of the area under a receiver operating characteristic (ROC) curve},
  author={Hanley, James A and McNeil, Barbara J},
  journal={Radiology}, volume={143}, number={1}, pages={29--36}, year={1982}
}
"""


def _per_class_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    auc = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        if 0 < labels[:, j].sum() < len(labels):
            auc[j] = roc_auc_score(labels[:, j], scores[:, j])
    return auc


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
        )

    def _compute(self, predictions, references, class_names=None):
        scores = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or scores.shape != labels.shape:
            raise ValueError(f"predictions {scores.shape} and references {labels.shape} must both be [N, classes]")
        names = list(class_names) if class_names is not None else [str(i) for i in range(scores.shape[1])]
        if len(names) != scores.shape[1]:
            raise ValueError(f"{len(names)} class_names for {scores.shape[1]} columns")
        auc = _per_class_auc(labels, scores)
        ok = np.isfinite(auc)
        return {
            "macro_auc": float(auc[ok].mean()) if ok.any() else None,
            "classes_scored": int(ok.sum()),
            "per_class_auc": {n: (float(a) if good else None) for n, a, good in zip(names, auc, ok)},
        }
