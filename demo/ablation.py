"""What each objective adds, at the demo's budget: the demo's small D-BETA pretrained once per objective mix and
seed, each export evaluated the same way (zero-shot PTB-XL rhythm and sub, linear probe sub at 10% of the
training labels, ECG->report retrieval and MEM against its baselines on the held-out MIMIC-layout split).

    python -m demo.ablation [--out demo/out] [--steps 2000] [--seeds 42 43] [--jobs 2] [--only "ETS alone" ...]

Needs the demo's data (run `make demo`, or `python -m demo.run`, first). Objectives are switched on at the
paper's weight (1) and off at 0, everything else as train/configs/small_cpu.yaml. Runs land in
OUT/ablation/<variant>-seed<S>/ (log: ablation.log); a finished run or evaluation is reused. Writes
OUT/ablation/results.json and ablation.md.
The signals are synthetic: the table says what the objectives do on this corpus at this budget, not on
MIMIC-IV-ECG.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean

from demo.run import DEFAULT_STEPS, PY, ROOT, read_json

# name -> (MEM, MLM, ETM, ETS weights, negatives for ETM: "n3s" | "random" | None = no mismatched pairs)
VARIANTS = {
    "ETS alone": ((0, 0, 0, 1), None),
    "ETS + ETM (N3S negatives)": ((0, 0, 1, 1), "n3s"),
    "ETS + ETM (random negatives)": ((0, 0, 1, 1), "random"),
    "ETS + MEM": ((1, 0, 0, 1), None),
    "ETS + MLM": ((0, 1, 0, 1), None),
    "all four (N3S)": ((1, 1, 1, 1), "n3s"),
}
DEFAULT_SEEDS = (42, 43)


def seed_number(text: str) -> int:
    """A seed from the command line: a whole number >= 0 (plain digits only)."""
    if not re.fullmatch(r"[0-9]+", text):
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def run_name(variant: str, seed: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-") + f"-seed{seed}"


def pretrain_command(out: Path, variant: str, seed: int, steps: int) -> list:
    (mem, mlm, etm, ets), negatives = VARIANTS[variant]
    prepared, run_dir = out / "prepared", out / "ablation" / run_name(variant, seed)
    command = [PY, "-m", "train.pretrain", "--config", ROOT / "train" / "configs" / "small_cpu.yaml",
               "--dataset", prepared, "--output-dir", run_dir, "--seed", seed, "--max-steps", steps, "--resume",
               "--set", "train.log_with=[]", "--set", f"train.eval_every={steps}",
               "--set", f"model.overrides.mem_weight={mem}", "--set", f"model.overrides.mlm_weight={mlm}",
               "--set", f"model.overrides.etm_weight={etm}", "--set", f"model.overrides.ets_weight={ets}"]
    if negatives == "n3s":
        command += ["--n3s", prepared / "n3s"]
    if negatives is None:  # nothing learns from mismatched pairs: every pair stays a positive for ETS
        command += ["--set", "collator.p_neg=0"]
    return [str(c) for c in command]


def evaluate(out: Path, variant: str, seed: int) -> dict:
    """Figures of one finished run (cached in its folder as ablation_eval.json)."""
    from eval.linear_probe import run_linear_probe
    from eval.zero_shot import run_zero_shot

    run_dir = out / "ablation" / run_name(variant, seed)
    cached = run_dir / "ablation_eval.json"
    if cached.exists():
        return read_json(cached)
    model, ptbxl = run_dir / "model", out / "data" / "ptbxl"
    row = {"variant": variant, "seed": seed}
    for task in ("rhythm", "sub"):
        zs = run_zero_shot(str(model), "ptbxl", ptbxl, task=task, bootstrap=0, plot=False, num_workers=1)
        row[f"zero_shot_{task}"] = {"auroc": zs["macro_auc"], "auprc": zs["macro_auprc"]}
    probe = run_linear_probe(model=str(model), dataset="ptbxl", data_root=ptbxl, task="sub", fractions=(0.1,),
                             plot=False, num_workers=1, cache_dir=run_dir / "feature_cache")
    (summary,) = probe["summary"]
    row["probe_sub_10"] = {"auroc": summary["test_auc_mean"], "auprc": summary["test_auprc_mean"]}
    final = read_json(run_dir / "metrics.json")["validation"]
    row["validation"] = {k: final[k] for k in ("mem_loss", "mem_zero", "mem_interp", "mlm_loss", "etm_loss",
                                               "ets_loss", "R@1", "R@10") if k in final}
    cached.write_text(json.dumps(row, indent=1))
    return row


def pretrain_and_evaluate(out: Path, variant: str, seed: int, steps: int, threads: int) -> None:
    """One run in two child processes (pretraining, then its evaluation), so parallel runs share no state."""
    run_dir = out / "ablation" / run_name(variant, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    commands = []
    if not (run_dir / "model" / "config.json").exists():
        commands.append(("pretraining", pretrain_command(out, variant, seed, steps)))
    if not (run_dir / "ablation_eval.json").exists():
        commands.append(("evaluating", [PY, "-m", "demo.ablation", "--out", str(out), "--evaluate", variant,
                                        str(seed)]))
    for what, command in commands:
        print(f"[ablation] {what} {variant}, seed {seed} -> {run_dir}", flush=True)
        with open(run_dir / "ablation.log", "a") as log:
            code = subprocess.call(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code:
            raise SystemExit(f"{what} {variant!r} seed {seed} failed (exit {code}); log: {run_dir / 'ablation.log'}")


def table(rows: list) -> str:
    """Markdown: mean of the seeds with each seed's value, AUROC / AUPRC x100."""
    def cell(values):
        values = [100 * v for v in values]
        return f"{mean(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"

    head = ("| objectives | zero-shot rhythm AUROC | AUPRC | zero-shot sub AUROC | AUPRC | probe 10% AUROC | AUPRC "
            "| R@1 | MEM / predict-zero |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for variant in VARIANTS:
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        cells = [cell([r[key][metric] for r in runs]) for key in ("zero_shot_rhythm", "zero_shot_sub", "probe_sub_10")
                 for metric in ("auroc", "auprc")]
        cells.append(cell([r["validation"]["R@1"] for r in runs]))
        (mem, mlm, etm, ets), _ = VARIANTS[variant]
        ratio = [r["validation"]["mem_loss"] / r["validation"]["mem_zero"] for r in runs] if mem else None
        cells.append(f"{mean(ratio):.3f}" if ratio else "(MEM off)")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "demo" / "out"), help="the demo's output folder")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="pretraining steps per run (the demo's)")
    parser.add_argument("--seeds", type=seed_number, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores / jobs threads)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants only")
    parser.add_argument("--evaluate", nargs=2, metavar=("VARIANT", "SEED"),
                        help="only evaluate this one finished run (what each run's child process does)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.evaluate:
        variant, seed = args.evaluate
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        try:
            seed = seed_number(seed)
        except argparse.ArgumentTypeError as error:
            parser.error(f"SEED {error}")
        exported = out / "ablation" / run_name(variant, seed) / "model" / "config.json"
        if not exported.exists():
            parser.error(f"{exported.parent} is missing: that run has not finished; run `python -m demo.ablation "
                         f"--out {shlex.quote(str(out))} --only {shlex.quote(variant)} --seeds {seed}`")
        evaluate(out, variant, seed)
        return 0
    for needed in (out / "prepared" / "dataset", out / "prepared" / "n3s", out / "data" / "ptbxl"):
        if not needed.exists():
            parser.error(f"{needed} is missing: run `make demo` (or python -m demo.run) first for the demo's data")
    if args.steps < 1 or args.jobs < 1:
        parser.error("--steps and --jobs must be at least 1")
    runs = [(v, s) for v in (args.only or VARIANTS) for s in args.seeds]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda r: pretrain_and_evaluate(out, r[0], r[1], args.steps, threads), runs))
    rows = [evaluate(out, v, s) for v, s in runs]
    folder = out / "ablation"
    (folder / "results.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "runs": rows},
                                                    indent=1))
    text = table(rows)
    (folder / "ablation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
