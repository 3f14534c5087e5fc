"""What int8 costs: the ONNX int8 ECG graph against the torch fp32 model on a downstream set.

    python -m eval.int8_quality --model demo/out/model --data-root demo/out/data/ptbxl [--task sub]
        [--onnx DIR] [--fractions 0.1 1.0] [--output int8_quality.json]

Exports `--model` with `train.export_onnx --int8` (or opens `--onnx`), computes every record's ECG feature
through torch fp32 and through the int8 graph (the same processor conditioning, eval.features), and reports the
minimum and mean cosine similarity between them, the zero-shot macro AUC of each (the label prompts' text
features from the same model, cosine scoring as eval.zero_shot) and the linear-probe test AUC of each
(eval.linear_probe's protocol, seed 42), with the int8 - fp32 differences in AUC points (x100).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


from eval.datasets import load_downstream
from eval.features import ProcessedRecords, load_model_and_processor
from eval.linear_probe import fraction_arg, probe_run
from eval.outputs import check_outputs
from eval.metrics import auc_report
from eval.zero_shot import class_prompts, class_text_features, label_set_name, zero_shot_scores
from dbeta.prompting_dbeta import load_prompt_set, prompt_style_for
from dbeta.onnx_dbeta import DBetaOnnxModel
from train.export_onnx import export_onnx, source_fingerprint
from train.folders import write_text

ROOT = Path(__file__).resolve().parents[1]


def features(model, processor, dataset, batch_size: int = 32) -> np.ndarray:
    loader = torch.utils.data.DataLoader(ProcessedRecords(dataset, processor.feature_extractor),
                                         batch_size=batch_size, shuffle=False)
    out = []
    with torch.no_grad():
        for batch in loader:
            errors = [e for e in batch["error"] if e]
            if errors:
                raise ValueError(errors[0])
            out.append(model.get_ecg_features(batch["ecg_values"]).pooler_output.float().numpy())
    return np.concatenate(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-root", required=True, help="a PTB-XL-layout folder")
    parser.add_argument("--task", default="sub")
    parser.add_argument("--onnx", default=None, help="an ONNX folder with the int8 graph (default: export one)")
    parser.add_argument("--fractions", type=fraction_arg, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--output", default=None, help="a .json file (never one the run reads)")
    args = parser.parse_args(argv)
    try:  # before any work: an --output inside the model folder replaced its config.json
        if args.output is not None:
            if Path(args.output).suffix.lower() != ".json":
                raise ValueError(f"--output {args.output} must be a .json file")
            check_outputs({"--output": args.output}, reads=[args.model, args.onnx, args.data_root])
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")

    model, processor = load_model_and_processor(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(args.onnx) if args.onnx else export_onnx(args.model, Path(tmp) / "onnx", int8=True)
        try:
            int8 = DBetaOnnxModel.from_pretrained(onnx_dir, int8=True)
        except FileNotFoundError as err:  # no int8 graph in --onnx, or no ONNX folder at all
            parser.exit(2, f"error: {err}\n")
        made_from = int8.manifest.get("source_weights")
        if made_from != source_fingerprint(model):  # another model's graphs: their drift is not int8's cost
            parser.exit(2, f"error: {onnx_dir} was not exported from {args.model} ("
                           + ("its manifest records other source weights" if made_from else
                              "its manifest records no source weights: exported before 2026-12-03")
                           + "); re-run python -m train.export_onnx, or leave out --onnx\n")
        splits = {s: load_downstream("ptbxl", args.data_root, split=s, task=args.task)
                  for s in ("train", "val", "test")}
        feats = {"fp32": {}, "int8": {}}
        for split, ds in splits.items():
            feats["fp32"][split] = features(model, processor, ds)
            feats["int8"][split] = features(int8, processor, ds)
        prompts = class_prompts(splits["test"].class_names, label_set_name("ptbxl", args.task),
                                load_prompt_set(args.model), prompt_style_for(model.config))
        text = class_text_features(model, processor, prompts)

    a = torch.from_numpy(np.concatenate([feats["fp32"][s] for s in splits]))
    b = torch.from_numpy(np.concatenate([feats["int8"][s] for s in splits]))
    cos = torch.nn.functional.cosine_similarity(a, b)
    labels = {s: ds.labels_matrix() for s, ds in splits.items()}
    names = list(splits["test"].class_names)
    result = {"model": args.model, "task": args.task, "n_records": {s: len(d) for s, d in splits.items()},
              "cosine_int8_vs_fp32": {"min": round(cos.min().item(), 5), "mean": round(cos.mean().item(), 5)}}
    for kind in ("fp32", "int8"):
        zs = auc_report(labels["test"], zero_shot_scores(model, feats[kind]["test"], text), names, n_resamples=0)
        result[f"zero_shot_auc_{kind}"] = zs["macro_auc"]
        for f in args.fractions:
            run, _ = probe_run(feats[kind], labels, names, f, 42, args.epochs, 16, 1e-3, 1e-4, bootstrap=0)
            result[f"probe_{f:g}_auc_{kind}"] = run["test_auc"]
    for key in [k for k in result if k.endswith("_fp32") and k != "cosine_int8_vs_fp32"]:
        base = key[: -len("_fp32")]
        result[f"{base}_change_points"] = round(100 * (result[base + "_int8"] - result[key]), 2)
    print(json.dumps(result, indent=1))
    if args.output:
        write_text(args.output, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
