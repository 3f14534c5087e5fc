"""Zero-shot and linear-probe AUC of one model on lead subsets (12 leads, the 6 limb leads, I+II, I, II, ...).

    from eval.lead_subsets import evaluate_lead_subsets
    result = evaluate_lead_subsets("path/to/model", "/data/ptb-xl", subsets=["12-lead", "limb", "I+II", "I", "II"])

    python -m eval.lead_subsets --model M --data-root D --subsets 12-lead limb I+II I II --output leads.json

Each subset is evaluated exactly as the full record, through the processor, with the leads outside the subset
zeroed (`DBetaFeatureExtractor(leads=...)`: how pretraining's lead masking shows the model an absent lead).
Zero-shot: the macro AUROC on the test split of `zero_shot_task` with the model's prompts (eval.zero_shot's
prompts and scoring). Probe: one linear head per subset (eval.linear_probe's head, MERL protocol: Adam 1e-3,
weight decay 1e-4, batch 16, `epochs`, epoch chosen on validation) on `fraction` of the training split of
`probe_task`, trained and tested on features of that subset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eval.features import dataset_ecg_features, load_model_and_processor, text_features  # noqa: E402
from eval.metrics import auc_report  # noqa: E402
from processing_dbeta import LEAD_SUBSETS, resolve_leads  # noqa: E402

DEFAULT_SUBSETS = ("12-lead", "limb", "I+II", "I", "II")

__all__ = ["DEFAULT_SUBSETS", "evaluate_lead_subsets", "render_markdown", "main"]


def _subset_name(subset) -> str:
    return subset if isinstance(subset, str) else "+".join(resolve_leads(subset))


def evaluate_lead_subsets(model, data_root, subsets: Sequence = DEFAULT_SUBSETS, *, processor=None,
                          zero_shot_task: str = "rhythm", probe_task: Optional[str] = "sub", fraction: float = 1.0,
                          seed: int = 42, epochs: int = 100, batch_size: int = 32, num_workers: int = 0,
                          prompt_style: Optional[str] = None, bootstrap: int = 200, progress: bool = False,
                          output=None) -> Dict:
    """Zero-shot and probe macro AUROC per lead subset on a PTB-XL-layout folder `data_root`.

    `model`: an exported folder / Hub id, or a loaded DBetaModel (then pass its `processor`). `subsets`: names of
    processing_dbeta.LEAD_SUBSETS ("12-lead", "limb", "I+II", "I", "II") or lists of lead names. `probe_task=None`
    skips the probe. Returns {"subsets": {name: {"leads", "zero_shot_auc", "zero_shot_auc_ci", "probe_auc",
    "probe_auc_ci", "seconds"}}, "zero_shot_task", "probe_task", "fraction", "n_records", "seconds"}; with
    `output` also writes it as JSON and a Markdown table beside it (.md)."""
    from eval.datasets import load_downstream
    from eval.linear_probe import probe_run
    from eval.zero_shot import class_prompts, label_set_name, zero_shot_scores
    from prompting_dbeta import load_prompt_set, prompt_style_for

    t_start = time.perf_counter()
    if isinstance(model, (str, Path)):
        name = str(model)
        net, processor = load_model_and_processor(name)
    else:
        if processor is None:
            raise ValueError("evaluate_lead_subsets: pass processor= with a loaded model")
        net, name = model, getattr(model, "name_or_path", None)
    subsets = list(subsets)
    if not subsets:
        raise ValueError("evaluate_lead_subsets: no subsets given")
    resolved = {_subset_name(s): resolve_leads(s) for s in subsets}  # errors for unknown names, before any work

    zs_test = load_downstream("ptbxl", data_root, split="test", task=zero_shot_task)
    prompt_set = load_prompt_set(name)
    style = prompt_style_for(net.config, prompt_style)
    prompts = class_prompts(zs_test.class_names, label_set_name("ptbxl", zero_shot_task), prompt_set, style)
    text = text_features(net, processor, [p["text"] for p in prompts])
    probe_data = {}
    if probe_task is not None:
        probe_data = {split: load_downstream("ptbxl", data_root, split=split, task=probe_task)
                      for split in ("train", "val", "test")}
    n_records = {f"zero_shot_{zero_shot_task}_test": len(zs_test),
                 **{f"probe_{probe_task}_{k}": len(v) for k, v in probe_data.items()}}

    def features(ds, leads, desc):
        return dataset_ecg_features(net, processor, ds, batch_size=batch_size, num_workers=num_workers,
                                    progress=progress, desc=desc, leads=leads)

    rows = {}
    for label, leads in resolved.items():
        t0 = time.perf_counter()
        ecg = features(zs_test, leads, f"{label} zero-shot")
        zs = auc_report(zs_test.labels_matrix(), zero_shot_scores(net, ecg, text), zs_test.class_names,
                        n_resamples=bootstrap, seed=seed)
        row = {"leads": list(leads), "zero_shot_auc": zs["macro_auc"], "zero_shot_auc_ci": zs["macro_auc_ci"],
               "probe_auc": None, "probe_auc_ci": None}
        if probe_data:
            feats = {k: features(ds, leads, f"{label} probe {k}") for k, ds in probe_data.items()}
            labels = {k: ds.labels_matrix() for k, ds in probe_data.items()}
            record, _ = probe_run(feats, labels, probe_data["test"].class_names, fraction, seed, epochs, 16, 1e-3,
                                  1e-4, bootstrap)
            row["probe_auc"], row["probe_auc_ci"] = record["test_auc"], record["test_auc_ci"]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows[label] = row
    result = {"subsets": rows, "zero_shot_task": zero_shot_task, "probe_task": probe_task, "fraction": fraction,
              "prompt_style": style, "n_records": n_records, "seconds": round(time.perf_counter() - t_start, 1)}
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1))
        output.with_suffix(".md").write_text(render_markdown(result))
    return result


def render_markdown(result: Dict) -> str:
    """The result as a Markdown table (macro AUROC x 100)."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    probe = (f"probe {result['probe_task']} {100 * result['fraction']:g}%" if result.get("probe_task")
             else "probe")
    lines = [f"| leads | zero-shot {result['zero_shot_task']} | {probe} |", "| --- | --- | --- |"]
    for name, row in result["subsets"].items():
        shown = name if name in LEAD_SUBSETS and len(row["leads"]) > 2 else ", ".join(row["leads"])
        lines.append(f"| {shown} | {pct(row['zero_shot_auc'])} | {pct(row['probe_auc'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-root", required=True, help="a PTB-XL-layout folder")
    parser.add_argument("--subsets", nargs="+", default=list(DEFAULT_SUBSETS),
                        help=f"names ({', '.join(LEAD_SUBSETS)}) or comma-separated leads, e.g. I,V2")
    parser.add_argument("--zero-shot-task", default="rhythm")
    parser.add_argument("--probe-task", default="sub", help="'none' skips the probe")
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    subsets = [s if s in LEAD_SUBSETS else s.split(",") for s in args.subsets]
    try:
        result = evaluate_lead_subsets(args.model, args.data_root, subsets, zero_shot_task=args.zero_shot_task,
                                       probe_task=None if args.probe_task == "none" else args.probe_task,
                                       fraction=args.fraction, epochs=args.epochs, num_workers=args.num_workers,
                                       progress=not args.quiet, output=args.output)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    print(render_markdown(result))
    return result


if __name__ == "__main__":
    main()
