"""Figures for the evaluation scripts: ROC curves and a 12-lead ECG with its zero-shot scores.

Every function writes one PNG with matplotlib's Agg backend (no display needed) and returns its Path:

    plot_roc_curves(y_true, scores, class_names, path, title=None, max_classes=None) -> Path
    plot_ecg(signal, sampling_rate, path, lead_names=None, layout="3x4", scores=None, title=None) -> Path
    plot_window_scores(result, path, labels=None, title=None) -> Path      (the pipeline's windowed output)
    plot_attribution(explanation, path, title=None) -> Path                (the pipeline's explanation)

`plot_ecg` draws on ECG paper: minor grid 0.04 s x 0.1 mV, major grid 0.2 s x 0.5 mV, the same physical
aspect as 25 mm/s and 10 mm/mV paper. Layouts: "3x4" (the standard printout: four 2.5 s columns I-II-III,
aVR-aVL-aVF, V1-V3, V4-V6, plus a full-length lead II rhythm strip) or "12x1" (every lead over the whole
record, one row each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from train.folders import write_file

__all__ = ["plot_roc_curves", "plot_ecg", "plot_window_scores", "plot_attribution", "STANDARD_LEADS"]

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_GRID_MINOR = "#f6c9c9"
_GRID_MAJOR = "#e88c8c"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Union[str, Path], dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_roc_curves(
    y_true,
    scores,
    class_names: Sequence[str],
    path: Union[str, Path],
    title: Optional[str] = None,
    max_classes: Optional[int] = None,
    dpi: int = 120,
) -> Path:
    """One ROC curve per class (multi-label `y_true` [n, classes], `scores` [n, classes]) on one set of axes.

    Classes with only one label value in `y_true` have no curve and are listed under the legend. With
    `max_classes`, only that many classes with the most positives are drawn. The legend gives each AUROC
    (eval.metrics.per_class_auc, the figure the reports print)."""
    from sklearn.metrics import roc_curve

    from eval.metrics import per_class_auc

    plt = _pyplot()
    y = np.asarray(y_true) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    names = [str(c) for c in class_names]
    if y.shape != s.shape or len(names) != y.shape[1]:
        raise ValueError(f"shapes differ: y_true {y.shape}, scores {s.shape}, {len(names)} class names")
    positives = y.sum(axis=0)
    aucs = per_class_auc(y, s)
    scorable = [j for j in range(len(names)) if np.isfinite(aucs[j])]
    skipped = [names[j] for j in range(len(names)) if j not in scorable]
    if max_classes is not None and len(scorable) > max_classes:
        scorable = sorted(scorable, key=lambda j: -positives[j])[:max_classes]
    fig, ax = plt.subplots(figsize=(7.5 if len(scorable) > 12 else 6, 6))
    cmap = plt.get_cmap("tab20" if len(scorable) > 10 else "tab10")
    for i, j in enumerate(scorable):
        fpr, tpr, _ = roc_curve(y[:, j], s[:, j])
        auc = aucs[j]
        ax.plot(fpr, tpr, lw=1.3, color=cmap(i % cmap.N), label=f"{names[j]} ({auc:.3f}, n+={int(positives[j])})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=title or "ROC curves")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    if scorable:
        ax.legend(fontsize=7 if len(scorable) > 10 else 8, loc="center left", bbox_to_anchor=(1.02, 0.5),
                  title="class (AUC, positives)", title_fontsize=8, ncol=2 if len(scorable) > 24 else 1)
    if skipped:
        ax.text(0.0, -0.14, "no curve (one label value only): " + ", ".join(skipped), transform=ax.transAxes,
                fontsize=7, va="top", wrap=True)
    return _save(fig, path, dpi)


def _ecg_grid(ax, x0: float, x1: float, y0: float, y1: float) -> None:
    """ECG paper on `ax` between the limits: minor 0.04 s x 0.1 mV, major 0.2 s x 0.5 mV."""
    for step, color, lw in ((0.04, _GRID_MINOR, 0.3), (0.2, _GRID_MAJOR, 0.6)):
        for x in np.arange(np.floor(x0 / step) * step, x1 + 1e-9, step):
            ax.axvline(x, color=color, lw=lw, zorder=0)
        ystep = step * 2.5  # 0.1 mV / 0.5 mV
        for yv in np.arange(np.floor(y0 / ystep) * ystep, y1 + 1e-9, ystep):
            ax.axhline(yv, color=color, lw=lw, zorder=0)


def _scores_text(scores, top_k: int) -> str:
    if scores is None:
        return ""
    if isinstance(scores, Mapping):
        items = sorted(scores.items(), key=lambda kv: -float(kv[1]))
    else:  # pipeline output: [{"label", "score"}, ...]
        items = sorted(((d["label"], d["score"]) for d in scores), key=lambda kv: -float(kv[1]))
    lines = [f"{float(v):.3f}  {str(k)[:60]}" for k, v in items[:top_k]]
    return "zero-shot scores\n" + "\n".join(lines)


def plot_ecg(
    signal,
    sampling_rate: float,
    path: Union[str, Path],
    lead_names: Optional[Sequence[str]] = None,
    layout: str = "3x4",
    scores: Union[None, Mapping[str, float], Sequence[Mapping]] = None,
    title: Optional[str] = None,
    top_k: int = 8,
    dpi: int = 100,
) -> Path:
    """Draw a 12-lead ECG `signal` [leads, samples] in millivolts on ECG paper, with its zero-shot scores.

    `lead_names` defaults to the standard order (I, II, III, aVR, aVL, aVF, V1-V6); leads are looked up by
    name for the 3x4 layout. `scores` is a {label: score} dict or the pipeline's [{"label", "score"}] list;
    the `top_k` highest are printed beside the tracing. Returns the PNG path."""
    plt = _pyplot()
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected [leads, samples], got shape {x.shape}")
    names = [str(n) for n in (lead_names if lead_names is not None else STANDARD_LEADS[: x.shape[0]])]
    if len(names) != x.shape[0]:
        raise ValueError(f"{len(names)} lead names for {x.shape[0]} leads")
    if layout not in ("3x4", "12x1"):
        raise ValueError(f"layout must be '3x4' or '12x1', got {layout!r}")
    fs = float(sampling_rate)
    x = np.nan_to_num(x)
    n = x.shape[1]
    duration = n / fs
    lookup = {name.upper(): i for i, name in enumerate(names)}
    text = _scores_text(scores, top_k)
    text_width = 3.2 if text else 0.0

    if layout == "12x1":
        rows = list(range(x.shape[0]))
        spacing = 3.0  # mV between baselines
        height = spacing * len(rows)
        fig_w = duration * 1.0 + text_width + 0.5
        fig, ax = plt.subplots(figsize=(fig_w, height * 0.4 + 0.8))
        t = np.arange(n) / fs
        _ecg_grid(ax, 0, duration, -height + spacing / 2, spacing / 2)
        for r, i in enumerate(rows):
            base = -r * spacing
            ax.plot(t, np.clip(x[i], -spacing / 2, spacing / 2) + base, color="black", lw=0.6)
            ax.text(0.02, base + 0.8, names[i], fontsize=8, fontweight="bold")
        ax.set(xlim=(0, duration), ylim=(-height + spacing / 2, spacing / 2))
    else:
        columns = [("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6")]
        seg = min(2.5, duration / 4)
        seg_n = int(round(seg * fs))
        spacing = 3.0
        rows_total = 4  # three lead rows + rhythm strip
        fig, ax = plt.subplots(figsize=(4 * seg * 1.0 + text_width + 0.5, rows_total * spacing * 0.4 + 0.8))
        _ecg_grid(ax, 0, 4 * seg, -rows_total * spacing + spacing / 2, spacing / 2)
        for c, leads in enumerate(columns):
            t = c * seg + np.arange(seg_n) / fs
            for r, lead in enumerate(leads):
                i = lookup.get(lead.upper())
                base = -r * spacing
                label = lead
                if i is None:
                    label += " (absent)"
                else:
                    piece = x[i, c * seg_n:(c + 1) * seg_n]
                    ax.plot(t[: len(piece)], np.clip(piece, -spacing / 2, spacing / 2) + base, color="black",
                            lw=0.6)
                ax.text(c * seg + 0.04, base + 0.8, label, fontsize=8, fontweight="bold")
            if c:
                ax.plot([c * seg, c * seg], [-2 * spacing - 1.2, 1.2], color="black", lw=1.0)
        rhythm = lookup.get("II", 0)
        base = -3 * spacing
        strip_n = min(n, int(round(4 * seg * fs)))
        t = np.arange(strip_n) / fs
        ax.plot(t, np.clip(x[rhythm, :strip_n], -spacing / 2, spacing / 2) + base, color="black", lw=0.6)
        ax.text(0.04, base + 0.8, f"{names[rhythm]} (rhythm)", fontsize=8, fontweight="bold")
        ax.set(xlim=(0, 4 * seg), ylim=(-rows_total * spacing + spacing / 2, spacing / 2))
    ax.set_aspect(0.2 / 0.5)  # 0.2 s and 0.5 mV are both 5 mm on ECG paper
    ax.set_xlabel("time (s)   grid: 0.2 s x 0.5 mV (minor 0.04 s x 0.1 mV)", fontsize=8)
    ax.set_yticks([])
    ax.tick_params(labelsize=7)
    ax.set_title(title or f"12-lead ECG, {fs:g} Hz, {duration:.1f} s", fontsize=10)
    if text:
        ax.text(1.01, 1.0, text, transform=ax.transAxes, fontsize=8, va="top", family="monospace",
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="grey"))
    return _save(fig, path, dpi)


def plot_window_scores(result: Mapping, path: Union[str, Path], labels: Optional[Sequence[str]] = None,
                       title: Optional[str] = None, dpi: int = 100) -> Path:
    """Scores over time of a windowed pipeline result ({"windows": [{"start", "end", "scores"}], "aggregate"}):
    one line per label (default: every label, in the aggregate's order) at each window's middle; windows that
    could not be scored are shaded grey."""
    plt = _pyplot()
    windows = list(result["windows"])
    if not windows:
        raise ValueError("the result has no windows")
    labels = list(labels) if labels is not None else [d["label"] for d in result["aggregate"]]
    scored = [w for w in windows if w.get("scores")]
    mids = np.array([(w["start"] + w["end"]) / 2 for w in scored])
    scale = 3600.0 if windows[-1]["end"] > 3 * 3600 else 60.0 if windows[-1]["end"] > 180 else 1.0
    unit = {3600.0: "h", 60.0: "min", 1.0: "s"}[scale]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for label in labels:
        values = [next(d["score"] for d in w["scores"] if d["label"] == label) for w in scored]
        ax.plot(mids / scale, values, lw=0.9, marker="." if len(scored) < 200 else None, label=str(label)[:40])
    for w in windows:
        if not w.get("scores"):
            ax.axvspan(w["start"] / scale, w["end"] / scale, color="grey", alpha=0.3, lw=0)
    ax.set(xlabel=f"time ({unit})", ylabel="score", ylim=(0, 1))
    rule = result.get("aggregate_rule", "")
    ax.set_title(title or f"zero-shot scores per {result.get('window_seconds', '')} s window "
                 f"(aggregate: {rule}; leads: {', '.join(result.get('leads', []))})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi)


def plot_attribution(explanation: Mapping, path: Union[str, Path], title: Optional[str] = None,
                     dpi: int = 100) -> Path:
    """The conditioned 12-lead ECG of an explanation (pipeline `explain=True`) on ECG paper, one row per lead,
    each segment tinted by its attribution: red raised the explained score, blue lowered it (one colour scale for
    all leads). Leads the record lacks are marked absent."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    x = np.asarray(explanation["ecg_values"], dtype=np.float64)
    segments = np.asarray(explanation["segments"], dtype=np.float64)
    names = list(explanation["lead_names"])
    mask = list(explanation.get("lead_mask", [True] * len(names)))
    fs = float(explanation["sampling_rate"])
    seg_s = float(explanation["segment_seconds"])
    n = x.shape[1]
    duration = n / fs
    t0 = float(explanation.get("start_seconds") or 0.0)  # the read window's place in the record
    spacing = 3.0
    height = spacing * len(names)
    limit = float(np.abs(segments).max()) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    fig, ax = plt.subplots(figsize=(duration * 1.0 + 1.5, height * 0.4 + 1.0))
    _ecg_grid(ax, t0, t0 + duration, -height + spacing / 2, spacing / 2)
    t = t0 + np.arange(n) / fs
    for r, name in enumerate(names):
        base = -r * spacing
        ax.imshow(segments[r:r + 1], aspect="auto", cmap="RdBu_r", norm=norm, alpha=0.55, zorder=1,
                  extent=(t0, t0 + segments.shape[1] * seg_s, base - spacing / 2, base + spacing / 2))
        ax.plot(t, np.clip(x[r], -spacing / 2, spacing / 2) + base, color="black", lw=0.6, zorder=2)
        ax.text(t0 + 0.02, base + 0.8, name + ("" if mask[r] else " (absent)"), fontsize=8, fontweight="bold",
                zorder=3)
    ax.set(xlim=(t0, t0 + duration), ylim=(-height + spacing / 2, spacing / 2))
    ax.set_aspect(0.2 / 0.5)
    ax.set_yticks([])
    ax.set_xlabel(f"time (s); tint: integrated-gradients attribution per {seg_s:g} s (red raises the score)",
                  fontsize=8)
    label = explanation.get("label", explanation.get("target"))
    ax.set_title(title or f"where the model looked for {label!s} (score {float(explanation['score']):.3f})",
                 fontsize=10)
    sm = plt.cm.ScalarMappable(norm=norm, cmap="RdBu_r")
    fig.colorbar(sm, ax=ax, fraction=0.02, pad=0.01).set_label("attribution", fontsize=8)
    return _save(fig, path, dpi)
