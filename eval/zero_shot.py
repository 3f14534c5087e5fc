"""Zero-shot classification of a downstream ECG dataset with D-BETA (the MERL benchmark protocol).

    python -m eval.zero_shot --model DIR_OR_REPO --dataset {ptbxl,cpsc2018,csn,physionet2021,code-test} \
        --data-root DIR [--task super|sub|form|rhythm] [--split test] [--scoring model|cosine|dot] \
        [--prompt-style description|name] [--prompt-members] [--batch-size 32] \
        [--num-workers 2] [--bootstrap 1000] [--seed 0] --output FILE.json

    from eval.zero_shot import run_zero_shot          # the same as a function; the CLI is a thin wrapper
    result = run_zero_shot("DIR_OR_REPO", "ptbxl", "DATA_ROOT", task="super", output="zs.json")

What it does:
1. ECG features: every record of the split goes through the model's processor (in DataLoader workers) and
   `get_ecg_features`. CPSC2018's protocol length (first 2500 samples, zero-padded) is applied when the dataset
   declares it (`--protocol-num-samples auto`).
2. One prompt per class, from `prompting_dbeta` (the module the pipeline uses too): the class name is resolved
   in the prompt set (`prompts_dbeta.json` in the model folder or its Hub repo, else the repository's;
   `--prompts FILE` overrides) with the dataset's spellings first, and that entry is encoded with
   `get_text_features`: the full name and clinical description, or the full name alone (`--prompt-style name`;
   the default is the model config's `zero_shot_prompt_style`). `--prompt-members` (PTB-XL sub and super) also
   encodes each member of a class in the PTB-XL hierarchy (the subclass "_AVB": 1AVB, 2AVB, 3AVB; the superclass
   "CD": its eight subclasses). A class with several texts is scored with the mean of their text features (a
   prompt ensemble). A class with no prompt is encoded by its name, and listed under `classes_without_prompt`.
3. Scores: the model's own logits (`--scoring model`, default): `DBetaModel.similarity`, what `forward` returns and
   what the pipeline scores with, so both rank records and labels alike. Explicit alternatives: `cosine` (the
   MERL protocol's cosine similarity) and `dot` (the raw dot product, D-BETA's notebook; equal to `model` for the
   released "fixed" similarity mode; in "learnable" mode `model` is a scaled cosine plus a bias, so its AUCs equal
   cosine's).
4. Metrics (eval.metrics): per-class ROC AUC, macro AUC over the classes with both positives and negatives in
   the split, percentile-bootstrap 95% CIs over records (seeded; `--bootstrap` resamples). Classes with one label
   value only are reported in `excluded_classes` and left out of the macro, with a note.

Outputs: FILE.json (schema dbeta-zero-shot/2: each class's "prompts" entry lists its "texts" and "members"),
FILE.md (tables), FILE.roc.png (ROC curves) and, with `--plot-examples N` (default 1), FILE.ecg-<record>.png: the
first N records drawn on ECG paper with their per-class scores. `--save-scores` writes FILE.scores.npz
(record_ids, labels, scores, class_names).
`evaluate`'s metrics are not used: its Hub-hosted metric scripts do not load offline; scikit-learn-equivalent
AUCs come from eval.metrics (tested against sklearn.metrics.roc_auc_score).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


from dbeta.configuration_dbeta import PROMPT_STYLES
from dbeta.prompting_dbeta import (
    SCORINGS,
    PromptSet,
    label_features,
    load_prompt_set,
    prompt_style_for,
    zero_shot_logits,
)
from eval.features import (
    RecordError,
    dataset_ecg_features,
    load_model_and_processor,
    processor_settings,
    protocol_num_samples_arg,
    resolve_protocol_num_samples,
    text_features,
)
from eval.metrics import auc_report
from train.folders import retract_result, write_file, write_result


logger = logging.getLogger("dbeta.zero_shot")

SCHEMA = "dbeta-zero-shot/2"
DATASETS = ("ptbxl", "cpsc2018", "csn", "physionet2021", "code-test")
PTBXL_TASKS = ("super", "sub", "form", "rhythm")


# ------------------------------------------------------------------------------------------------------------
# Prompts and scores (both from prompting_dbeta, the module the pipeline uses)
# ------------------------------------------------------------------------------------------------------------


def label_set_name(dataset: str, task: Optional[str]) -> str:
    """The eval.label_sets name of a dataset/task: ptbxl_super, cpsc2018, code_test, ..."""
    key = dataset.replace("-", "_")
    return f"ptbxl_{task}" if key == "ptbxl" else key


def class_prompts(class_names: Sequence[str], label_set: str, prompt_set: PromptSet,
                  style: str = "description", members: bool = False) -> List[dict]:
    """One entry per class: {"class", "key", "texts", "members"}; key None (texts = [the class name]) when nothing
    matches. `style` "description" encodes the whole prompt-set entry, "name" its first sentence (the full class
    name); `members=True` adds the texts of the class's members in `label_set`."""
    out = []
    for name in class_names:
        texts, key, found = prompt_set.label_texts(name, label_set, style, members, warn=False)
        out.append({"class": str(name), "key": key, "texts": list(texts), "members": found})
    return out


def class_text_features(model, processor, prompts: Sequence[dict]) -> np.ndarray:
    """[classes, hidden] float32: each class's text feature, the mean of its texts' `get_text_features`
    (prompting_dbeta.label_features, the pipeline's rule)."""
    return label_features(lambda texts: torch.as_tensor(text_features(model, processor, texts)),
                          [p["texts"] for p in prompts]).numpy()


def zero_shot_scores(model, ecg_features: np.ndarray, text_feats: np.ndarray, scoring: str = "model") -> np.ndarray:
    """[n, classes] scores: the model's own logits (`model.similarity`, the pipeline's; default), or the explicit
    alternatives "cosine" (L2-normalised features) and "dot" (raw dot product)."""
    with torch.no_grad():
        logits = zero_shot_logits(model, torch.as_tensor(ecg_features), torch.as_tensor(text_feats), scoring)
    return logits.float().cpu().numpy()


# ------------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------------


def _fmt(v: Optional[float], scale: float = 100.0) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v * scale:.1f}"


def render_markdown(result: dict) -> str:
    task = f" / {result['task']}" if result.get("task") else ""
    ci = result.get("macro_auc_ci") or {}
    lines = [
        f"# Zero-shot: {result['dataset']}{task} ({result['split']})",
        "",
        f"- model: `{result['model']}`",
        f"- records: {result['n_records']}, classes scored: {result['n_classes_scored']} of {result['n_classes']}",
        f"- scoring: {result['scoring']}; prompts: `{result['prompt_file']}`, {result['prompt_style']} style"
        + (", with each class's members" if result.get("prompt_members") else ""),
        f"- macro AUC: **{_fmt(result['macro_auc'])}** (95% CI {_fmt(ci.get('low'))}-{_fmt(ci.get('high'))}, "
        f"{ci.get('n_resamples', 0)} bootstrap resamples, seed {ci.get('seed')})",
        "",
        "| class | prompt key | positives | AUC x100 | 95% CI |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, auc in result["per_class_auc"].items():
        interval = (result.get("per_class_ci") or {}).get(name)
        ci_text = f"{_fmt(interval[0])}-{_fmt(interval[1])}" if interval else "-"
        key = result["prompts"][name]["key"] or "(class name)"
        lines.append(f"| {name} | {key} | {result['positives'][name]} | {_fmt(auc)} | {ci_text} |")
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    if result.get("classes_without_prompt"):
        lines += ["", "Classes without a prompt (encoded by their name): "
                  + ", ".join(result["classes_without_prompt"])]
    if result.get("failures"):
        lines += ["", f"{len(result['failures'])} record(s) skipped as unreadable (see the JSON)."]
    lines += ["", "Prompts (a class with several texts is scored with the mean of their features):", ""]
    lines += [f"- **{k}**: " + " | ".join(v["texts"]) for k, v in result["prompts"].items()]
    return "\n".join(lines) + "\n"


def plot_record_scores(dataset, index: int, scores: np.ndarray, class_names: Sequence[str], path: Path,
                       scoring: str = "model", layout: str = "3x4") -> Path:
    """Draw record `index` of `dataset` (as stored, in mV) with its per-class zero-shot scores and true labels."""
    from eval.plots import plot_ecg

    item = dataset[int(index)]
    truth = [c for c, y in zip(class_names, item["labels"]) if y > 0.5]
    return plot_ecg(
        item["signal"], item["sampling_rate"], path, lead_names=item["lead_names"], layout=layout,
        scores={c: float(s) for c, s in zip(class_names, scores)},
        title=f"record {item['record_id']}  true: {', '.join(truth) or '-'}  ({scoring} scores)",
    )


# ------------------------------------------------------------------------------------------------------------
# Run
# ------------------------------------------------------------------------------------------------------------


def run_zero_shot(model, dataset: str, data_root, *, task: Optional[str] = None, split: str = "test",
                  scoring: str = "model", prompts=None, prompt_style: Optional[str] = None,
                  prompt_members: bool = False, batch_size: int = 32,
                  num_workers: int = 2, bootstrap: int = 1000, seed: int = 0, protocol_num_samples="auto",
                  on_error: str = "raise", remote_code: bool = False, progress: bool = False,
                  output=None, plot: bool = True, plot_examples: int = 1, save_scores: bool = False,
                  return_scores: bool = False) -> dict:
    """Zero-shot evaluation of `model` (an exported folder or Hub repo id) on a downstream dataset.

    Returns the result (what FILE.json holds); with `output` it also writes FILE.json, FILE.md and the plots
    (paths under "outputs"). `return_scores=True` adds "scores" (float32 [records, classes], the model's logits
    with the default scoring), "labels" and "record_ids". Bad arguments and unreadable data raise ValueError,
    FileNotFoundError or eval.features.RecordError naming what is wrong."""
    from eval.datasets import load_downstream

    from eval.outputs import check_json_output

    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be an exported folder or a Hub repo id, got a {type(model).__name__} (its "
                        "folder is what the evaluation loads, with its processor and prompts)")
    output = check_json_output(output, reads=(model, data_root))
    dataset = str(dataset).lower()
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset == "ptbxl" and task is None:
        raise ValueError(f"--dataset ptbxl needs --task: one of {', '.join(PTBXL_TASKS)}")
    if dataset != "ptbxl" and task is not None:
        raise ValueError(f"--task applies to ptbxl only (tasks: {', '.join(PTBXL_TASKS)}); {dataset} has none")
    if task is not None and task not in PTBXL_TASKS:
        raise ValueError(f"unknown PTB-XL task {task!r}; expected one of {', '.join(PTBXL_TASKS)}")
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                             ("bootstrap", bootstrap, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not isinstance(prompt_members, bool):
        raise ValueError(f"prompt_members must be True or False, got {prompt_members!r}")
    t0 = time.perf_counter()
    data = load_downstream(dataset, data_root, split=split, task=task)
    if len(data) == 0:
        raise ValueError(f"{dataset}: the {split} split has no records")
    net, processor = load_model_and_processor(str(model), remote_code=remote_code)
    prompt_set = load_prompt_set(str(model), prompts=prompts)
    label_set = label_set_name(dataset, task)
    style = prompt_style_for(net.config, prompt_style)
    class_texts = class_prompts(data.class_names, label_set, prompt_set, style, prompt_members)
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    pns = resolve_protocol_num_samples(data, protocol_num_samples, processor.feature_extractor)
    ecg, kept, failures = dataset_ecg_features(
        net, processor, data, batch_size=batch_size, num_workers=num_workers,
        protocol_num_samples=pns, on_error=on_error, progress=progress,
        desc=f"{dataset}{'/' + task if task else ''} {split}", return_failures=True,
    )
    t_ecg = time.perf_counter() - t1
    text = class_text_features(net, processor, class_texts)
    scores = zero_shot_scores(net, ecg, text, scoring)
    labels = data.labels_matrix()[kept]
    class_names = list(data.class_names)
    t2 = time.perf_counter()
    report = auc_report(labels, scores, class_names, n_resamples=bootstrap, seed=seed)
    t_metrics = time.perf_counter() - t2

    import sklearn
    import transformers

    result = {
        "schema": SCHEMA,
        "model": str(model),
        "dataset": dataset,
        "task": task,
        "split": split,
        "data_root": str(data_root),
        "scoring": scoring,
        **report,
        "class_names": class_names,
        "prompts": {p["class"]: {k: p[k] for k in ("key", "texts", "members")} for p in class_texts},
        "prompt_file": prompt_set.source,
        "prompt_style": style,
        "prompt_members": bool(prompt_members),
        "classes_without_prompt": [p["class"] for p in class_texts if p["key"] is None],
        "protocol_num_samples": pns,
        "processor": processor_settings(processor.feature_extractor),
        "failures": [{"record_id": data.record_ids[f["index"]], **f} for f in failures],
        "bootstrap": {"n_resamples": bootstrap, "seed": seed, "confidence": 0.95,
                      "method": "percentile bootstrap over records"},
        "timing_s": {"load": round(t_load, 3), "ecg_features": round(t_ecg, 3), "metrics": round(t_metrics, 3),
                     "records_per_s": round(len(kept) / t_ecg, 2) if t_ecg > 0 else None},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "sklearn": sklearn.__version__,
                        "threads": torch.get_num_threads()},
    }
    arrays = {"scores": scores, "labels": labels, "kept": kept, "dataset": data}
    if output is not None:
        write_outputs(result, arrays, output, plot=plot, plot_examples=plot_examples, save_scores=save_scores)
    if return_scores:
        result.update(scores=scores, labels=labels, record_ids=[data.record_ids[i] for i in kept])
    return result


def write_outputs(result: dict, arrays: Optional[dict], output: Path, plot: bool = True, plot_examples: int = 1,
                  save_scores: bool = False) -> Dict[str, str]:
    """FILE.json, FILE.md and (with plot) FILE.roc.png and FILE.ecg-<record>.png; returns the paths (also set as
    result["outputs"]). `arrays`: {"scores", "labels", "kept", "dataset"} for the plots and the scores file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    retract_result(output)  # the old set goes first, the index comes back last (train.folders.write_result)
    stem = output.with_suffix("")
    paths = {"json": str(output), "markdown": str(output.with_suffix(".md"))}
    if arrays is not None and plot:
        from eval.plots import plot_roc_curves

        task = f"/{result['task']}" if result.get("task") else ""
        paths["roc"] = str(plot_roc_curves(
            arrays["labels"], arrays["scores"], result["class_names"], f"{stem}.roc.png",
            title=f"zero-shot {result['dataset']}{task} ({result['split']}), macro AUC "
                  f"{_fmt(result['macro_auc'])}",
        ))
        examples = []
        for row in range(min(int(plot_examples), len(arrays["kept"]))):
            index = int(arrays["kept"][row])
            rid = arrays["dataset"].record_ids[index]
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(rid))
            examples.append(str(plot_record_scores(arrays["dataset"], index, arrays["scores"][row],
                                                   result["class_names"], Path(f"{stem}.ecg-{safe}.png"),
                                                   result["scoring"])))
        if examples:
            paths["ecg_examples"] = examples
    if arrays is not None and save_scores:
        ds = arrays["dataset"]
        write_file(f"{stem}.scores.npz", lambda tmp: np.savez_compressed(
            tmp, scores=arrays["scores"], labels=arrays["labels"],
            record_ids=np.asarray([ds.record_ids[i] for i in arrays["kept"]]),
            class_names=np.asarray(result["class_names"])))
        paths["scores"] = f"{stem}.scores.npz"
    result["outputs"] = paths
    write_result(output, json.dumps(result, indent=2, default=_json_default) + "\n",
                 [(paths["markdown"], render_markdown(result))], retract_first=False)
    return paths


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.zero_shot",
                                description="Zero-shot ECG classification of a downstream dataset with D-BETA.")
    p.add_argument("--model", required=True, help="exported model folder or Hub repo id")
    p.add_argument("--dataset", required=True, type=str.lower, choices=DATASETS)
    p.add_argument("--data-root", required=True, type=Path, help="the dataset folder (see eval/datasets.py)")
    p.add_argument("--task", choices=PTBXL_TASKS, default=None, help="PTB-XL task (required for ptbxl)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--scoring", default="model", choices=SCORINGS,
                   help="model (default): the model's own logits, model.similarity, as the pipeline scores; "
                        "cosine or dot: explicit alternatives")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers reading/conditioning records")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--prompts", default=None, help="prompt-set JSON (default: the model's prompts_dbeta.json)")
    p.add_argument("--prompt-style", choices=PROMPT_STYLES, default=None,
                   help="encode each class's whole prompt-set entry (description) or its full name alone (name); "
                        "default: the model config's zero_shot_prompt_style")
    p.add_argument("--prompt-members", action="store_true",
                   help="PTB-XL sub/super: also encode each member of a class in the PTB-XL hierarchy and score the "
                        "class with the mean of its texts' features")
    p.add_argument("--protocol-num-samples", default="auto", type=protocol_num_samples_arg,
                   help="'auto' (the dataset's protocol length, CPSC2018: 2500), 'none', or a number of samples")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an unreadable record stops the run (raise) or is left out and listed (skip)")
    p.add_argument("--remote-code", action="store_true",
                   help="load the model folder's own code (trust_remote_code) instead of this repository's")
    p.add_argument("--plot-examples", type=int, default=1, help="records to draw with their scores")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--save-scores", action="store_true", help="also write FILE.scores.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--output", required=True, type=Path, help="FILE.json")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """The command line: a thin wrapper around run_zero_shot."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be >= 0")
    if args.bootstrap < 0 or not 0 <= args.seed < 2**32:
        parser.error("--bootstrap must be >= 0 and --seed from 0 to 2**32 - 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_zero_shot(
            args.model, args.dataset, args.data_root, task=args.task, split=args.split, scoring=args.scoring,
            prompts=args.prompts, prompt_style=args.prompt_style, prompt_members=args.prompt_members,
            batch_size=args.batch_size,
            num_workers=args.num_workers, bootstrap=args.bootstrap, seed=args.seed,
            protocol_num_samples=args.protocol_num_samples, on_error=args.on_error, remote_code=args.remote_code,
            progress=not args.quiet, output=args.output, plot=not args.no_plots, plot_examples=args.plot_examples,
            save_scores=args.save_scores,
        )
    except (FileNotFoundError, ValueError, RecordError, OSError) as err:
        # the loaders' and readers' messages name the dataset, folder or file: print them without a traceback
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2)
    ci = result.get("macro_auc_ci") or {}
    print(f"{args.dataset}{'/' + args.task if args.task else ''} {args.split}: {result['n_records']} records, "
          f"macro AUC {_fmt(result['macro_auc'])} (95% CI {_fmt(ci.get('low'))}-{_fmt(ci.get('high'))}), "
          f"{result['n_classes_scored']}/{result['n_classes']} classes scored ({args.scoring})")
    if result.get("note"):
        print(f"note: {result['note']}")
    paths = result["outputs"]
    print("wrote " + ", ".join(v if isinstance(v, str) else f"{len(v)} ECG plot(s)" for v in paths.values()))
    return result


if __name__ == "__main__":
    main()
