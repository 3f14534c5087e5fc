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
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from eval.features import RecordError, condition_item, load_model_and_processor, record_id
from eval.metrics import auc_report
from dbeta.processing_dbeta import LEAD_SUBSETS, resolve_leads
from train.folders import write_result

DEFAULT_SUBSETS = ("12-lead", "limb", "I+II", "I", "II")

__all__ = ["DEFAULT_SUBSETS", "evaluate_lead_subsets", "subset_features", "render_markdown", "main"]


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
    "probe_auc_ci", "seconds_metrics"}}, "zero_shot_task", "probe_task", "fraction", "n_records",
    "seconds_features", "seconds"}; with
    `output` also writes it as JSON and a Markdown table beside it (.md)."""
    from eval.datasets import load_downstream
    from eval.linear_probe import probe_run, train_subset_indices
    from eval.zero_shot import class_prompts, class_text_features, label_set_name, zero_shot_scores
    from dbeta.prompting_dbeta import load_prompt_set, prompt_style_for
    from eval.outputs import check_json_output

    output = check_json_output(output, reads=(model, data_root))
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
    text = class_text_features(net, processor, prompts)
    probe_data = {}
    if probe_task is not None:
        probe_data = {split: load_downstream("ptbxl", data_root, split=split, task=probe_task)
                      for split in ("train", "val", "test")}
    n_records = {f"zero_shot_{zero_shot_task}_test": len(zs_test),
                 **{f"probe_{probe_task}_{k}": len(v) for k, v in probe_data.items()}}

    def features(ds, desc):  # every subset in one pass: each record is read once
        return subset_features(net, processor, ds, list(resolved.values()), batch_size=batch_size,
                               num_workers=num_workers, progress=progress, desc=desc)

    t0 = time.perf_counter()
    probe_labels = {k: ds.labels_matrix() for k, ds in probe_data.items()}
    if probe_data and fraction < 1.0:  # features only for the training records the probe will see
        chosen = train_subset_indices(len(probe_data["train"]), fraction, seed)
        probe_data["train"] = torch.utils.data.Subset(probe_data["train"], chosen.tolist())
        probe_labels["train"] = probe_labels["train"][chosen]
    probe_feats = {k: features(ds, f"probe {probe_task} {k}") for k, ds in probe_data.items()}
    if probe_data and list(zs_test.record_ids) == list(probe_data["test"].record_ids):
        zs_feats = probe_feats["test"]  # the same records, conditioned the same way
    else:
        zs_feats = features(zs_test, f"zero-shot {zero_shot_task} test")
    t_features = time.perf_counter() - t0
    if probe_data:
        n_records[f"probe_{probe_task}_train"] = len(probe_data["train"])
    rows = {}
    for j, (label, leads) in enumerate(resolved.items()):
        t1 = time.perf_counter()
        zs = auc_report(zs_test.labels_matrix(), zero_shot_scores(net, zs_feats[j], text), zs_test.class_names,
                        n_resamples=bootstrap, seed=seed)
        row = {"leads": list(leads), "zero_shot_auc": zs["macro_auc"], "zero_shot_auc_ci": zs["macro_auc_ci"],
               "probe_auc": None, "probe_auc_ci": None}
        if probe_data:
            feats = {k: v[j] for k, v in probe_feats.items()}
            # the training subset is already drawn, in train_subset_indices' order: all of it, as drawn
            record, _ = probe_run(feats, probe_labels, probe_data["test"].class_names, 1.0, seed, epochs, 16, 1e-3,
                                  1e-4, bootstrap)
            row["probe_auc"], row["probe_auc_ci"] = record["test_auc"], record["test_auc_ci"]
        row["seconds_metrics"] = round(time.perf_counter() - t1, 1)
        rows[label] = row
    result = {"subsets": rows, "zero_shot_task": zero_shot_task, "probe_task": probe_task, "fraction": fraction,
              "prompt_style": style, "n_records": n_records, "seconds_features": round(t_features, 1),
              "seconds": round(time.perf_counter() - t_start, 1)}
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_result(output, json.dumps(result, indent=1), [(output.with_suffix(".md"), render_markdown(result))])
    return result


class _SubsetRecords(torch.utils.data.Dataset):
    """Each record read once and conditioned once per lead subset: {"ecg_values" [subsets, 12, samples],
    "error"} (a failing record: zeros and its error, raised by the caller)."""

    def __init__(self, dataset, feature_extractor, subsets):
        self.dataset, self.fe, self.subsets = dataset, feature_extractor, subsets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            item = self.dataset[int(index)]
            x = np.stack([condition_item(self.fe, item, None, leads) for leads in self.subsets])
            error = ""
        except Exception as err:  # raised in the main process, naming the record
            x = np.zeros((len(self.subsets), self.fe.num_leads, self.fe.num_samples), dtype=np.float32)
            error = f"record {record_id(self.dataset, index)}: {type(err).__name__}: {err}"
        return {"ecg_values": torch.from_numpy(x), "error": error}


@torch.no_grad()
def subset_features(model, processor, dataset, subsets: Sequence, batch_size: int = 32, num_workers: int = 0,
                    progress: bool = False, desc: str = "ECG features") -> List[np.ndarray]:
    """`get_ecg_features` of every record of `dataset` under each lead subset (leads outside it zeroed by the
    processor): one float32 [n, hidden] array per subset, each record read once. An unreadable record raises
    eval.features.RecordError naming it."""
    from tqdm.auto import tqdm

    fe = processor.feature_extractor
    loader = torch.utils.data.DataLoader(_SubsetRecords(dataset, fe, [resolve_leads(s) for s in subsets]),
                                         batch_size=batch_size, shuffle=False, num_workers=num_workers)
    device = next(model.parameters()).device
    out: List[list] = [[] for _ in subsets]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            for error in batch["error"]:
                if error:
                    raise RecordError(error)
            for j in range(len(subsets)):
                features = model.get_ecg_features(batch["ecg_values"][:, j].to(device)).pooler_output
                out[j].append(features.float().cpu().numpy())
    finally:
        model.train(was_training)
    return [np.concatenate(chunks) for chunks in out]


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
