"""The classes the synthetic generators draw: PTB-XL SCP code, and what a real report must say to be borrowed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple


@dataclass(frozen=True)
class ClassSpec:
    code: str  # PTB-XL SCP code (scp_statements.csv index)
    description: str
    allowed_codes: frozenset  # a real PTB-XL report may be borrowed only if its scp_codes keys are a subset of this
    require: str  # regex the borrowed report must match (so the text carries the class)
    mention: str  # regex that marks a report as talking about this class (forbidden in other classes' reports)
    template_codes: Dict[str, float] = field(default_factory=dict)


CLASS_SPECS: Dict[str, ClassSpec] = {
    spec.code: spec
    for spec in (
        ClassSpec(
            "NORM", "normal sinus rhythm, normal ECG", frozenset({"NORM", "SR"}),
            r"\bsinus rhythm\b.*\b(normal|no definite pathology)\b", r"$^", {"NORM": 100.0, "SR": 0.0},
        ),
        ClassSpec(
            "SBRAD", "sinus bradycardia", frozenset({"SBRAD", "NORM"}),
            r"sinus bradycardia", r"bradycardi", {"NORM": 80.0, "SBRAD": 0.0},
        ),
        ClassSpec(
            "STACH", "sinus tachycardia", frozenset({"STACH", "NORM"}),
            r"sinus tachycardia", r"tachycardi", {"NORM": 80.0, "STACH": 0.0},
        ),
        ClassSpec(
            "AFIB", "atrial fibrillation", frozenset({"AFIB", "NORM"}),
            r"atrial fibrillation", r"fibrillation", {"AFIB": 0.0},
        ),
        ClassSpec(
            "AFLT", "atrial flutter", frozenset({"AFLT", "NORM"}),
            r"atrial flutter", r"flutter", {"AFLT": 0.0},
        ),
        ClassSpec(
            "1AVB", "first degree AV block", frozenset({"1AVB", "SR", "NORM", "LPR"}),
            r"first degree|prolonged pr|pr interval", r"first degree|a-?v block|prolonged pr|pr interval",
            {"1AVB": 100.0, "SR": 0.0},
        ),
        ClassSpec(
            "CLBBB", "complete left bundle branch block", frozenset({"CLBBB", "SR"}),
            r"left bundle branch block|\blbbb\b", r"left bundle|\blbbb\b", {"CLBBB": 100.0, "SR": 0.0},
        ),
        ClassSpec(
            "CRBBB", "complete right bundle branch block", frozenset({"CRBBB", "SR"}),
            r"right bundle branch block|\brbbb\b", r"right bundle|\brbbb\b", {"CRBBB": 100.0, "SR": 0.0},
        ),
        ClassSpec(
            "STD_", "non-specific ST depression", frozenset({"STD_", "SR", "NST_", "NDT"}),
            r"st[- ]segments? (?:are )?(?:\w+ )?depress|st[- ](?:segment )?depression",
            r"depress", {"STD_": 100.0, "NST_": 100.0, "SR": 0.0},
        ),
        ClassSpec(
            "STE_", "non-specific ST elevation", frozenset({"STE_", "SR"}),
            r"st[- ]segments? (?:are )?(?:\w+ )?elevat|st[- ](?:segment )?elevation",
            r"elevat", {"STE_": 100.0, "SR": 0.0},
        ),
        ClassSpec(
            "LVH", "left ventricular hypertrophy", frozenset({"LVH", "VCLVH", "SR"}),
            r"left ventricular hypertrophy|\blvh\b", r"hypertroph|\blvh\b|voltages? (?:are )?high",
            {"LVH": 100.0, "VCLVH": 0.0, "SR": 0.0},
        ),
    )
}
# AFLT and LVH are drawn on request only (the demo's pretraining corpus leaves them out).
DEFAULT_CLASSES = ("NORM", "SBRAD", "STACH", "AFIB", "1AVB", "CLBBB", "CRBBB", "STD_", "STE_")


def check_classes(classes: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The requested classes (default DEFAULT_CLASSES), refusing unknown or repeated ones."""
    classes = tuple(classes) if classes else DEFAULT_CLASSES
    unknown = [c for c in classes if c not in CLASS_SPECS]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; supported: {', '.join(CLASS_SPECS)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate classes in {classes}")
    return classes

