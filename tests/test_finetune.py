"""Fine-tuning with transformers.Trainer (train.finetune): train, checkpoint, resume, export that reloads with
AutoModelForSequenceClassification in a fresh process, push, early stopping, bf16, class weights, and gradient
accumulation that does not scale the loss."""

from __future__ import annotations

import json
import logging
import re
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_linear_probe import export_tiny_encoder, write_cpsc_fixture
from tests.test_remote_code import fresh_python
from tests.tiny import train_t5_tokenizer
from train import finetune as ft


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("finetune")
    data = write_cpsc_fixture(tmp / "cpsc", n=48, seed=1)  # train 34 / val 4 / test 10
    model = export_tiny_encoder(tmp / "model", train_t5_tokenizer(), fit_steps=0)
    return {"tmp": tmp, "data": data, "model": model}


def ft_args(setup, output_dir, *extra):
    return ["--model", str(setup["model"]), "--dataset", "cpsc2018", "--data-root", str(setup["data"]),
            "--output-dir", str(output_dir), "--num-workers", "0", "--no-progress", "--bootstrap", "50", *extra]


def no_dropout(model):
    """Zero every dropout of the model (nn.Dropout modules and the attention's functional dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.0
    return model


# ------------------------------------------------------------------------------------------------------------
# Units
# ------------------------------------------------------------------------------------------------------------


def test_a_diverging_run_ends_with_a_message_not_a_traceback(setup, tmp_path, capsys):
    """--lr 1e30: the first evaluation raised "scores contain 36 NaN/inf values" from inside Trainer (exit 1)."""
    out = tmp_path / "diverged"
    with pytest.raises(SystemExit) as exit_:
        ft.main(ft_args(setup, out, "--epochs", "1", "--batch-size", "17", "--lr", "1e30"))
    err = capsys.readouterr().err
    assert exit_.value.code == 5 and "training diverged. Lower --lr (now 1e+30)" in err
    assert not (out / "results.json").exists() and not (out / "export").exists()


def test_a_saved_head_keeps_its_rows_with_their_classes(setup, tmp_path, caplog):
    """A fine-tuned export loaded for a dataset of as many classes in another order (or other classes) kept its head
    row for row under the new names: the row trained for STD was then labelled AFIB."""
    first = ft.load_classifier(str(setup["model"]), ["A", "B", "C"])
    with torch.no_grad():
        first.classifier.weight.copy_(torch.arange(3.0)[:, None].expand_as(first.classifier.weight))
        first.classifier.bias.copy_(torch.tensor([10.0, 11.0, 12.0]))
    first.save_pretrained(tmp_path / "ft")
    reordered = ft.load_classifier(str(tmp_path / "ft"), ["C", "A", "B"])
    assert reordered.classifier.bias.tolist() == [12.0, 10.0, 11.0]
    assert reordered.classifier.weight[:, 0].tolist() == [2.0, 0.0, 1.0]
    same = ft.load_classifier(str(tmp_path / "ft"), ["A", "B", "C"])
    assert same.classifier.bias.tolist() == [10.0, 11.0, 12.0]
    with caplog.at_level("WARNING"):
        other = ft.load_classifier(str(tmp_path / "ft"), ["X", "Y", "Z"])
    assert "trained for other classes (A, B, C); a new head for X, Y, Z, untrained" in caplog.text
    assert not set(other.classifier.bias.tolist()) & {10.0, 11.0, 12.0} and other.untrained_heads() == ["classifier"]
    # the same through from_pretrained itself (the README's Trainer route): the row trained for C was served as A
    from transformers import AutoModelForSequenceClassification

    user = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "ft", trust_remote_code=True, id2label={0: "C", 1: "A", 2: "B"}, label2id={"C": 0, "A": 1, "B": 2})
    assert user.classifier.bias.tolist() == [12.0, 10.0, 11.0] and user.untrained_heads() == []
    from dbeta.modeling_dbeta import DBetaForECGClassification

    # compared with the config of the folder loaded: a subfolder's head is not reordered by its parent's labels
    import shutil

    repo = shutil.copytree(tmp_path / "ft", tmp_path / "repo")
    shutil.copytree(tmp_path / "ft", repo / "sub")
    config = json.loads((repo / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "C", "1": "B", "2": "A"}, {"C": 0, "B": 1, "A": 2}
    (repo / "config.json").write_text(json.dumps(config))
    sub = DBetaForECGClassification.from_pretrained(repo, subfolder="sub")
    assert sub.classifier.bias.tolist() == [10.0, 11.0, 12.0] and sub.untrained_heads() == []


def test_class_weights_and_labels_follow_the_head(setup, tmp_path, caplog):
    """helper: /tmp/hJ/repro/classweights_reorder.py, single_label_float_labels.py, id2label_one_based.py. A head
    reloaded under its classes in another order kept its class weights in the saved order (AFIB took STACH's 40);
    a new head for other classes kept the old classes' weights; weights of another length failed in a bare
    broadcast; single-label float labels were truncated to indices; 1-based id2label keys raised `KeyError: 0`."""
    first = ft.load_classifier(str(setup["model"]), ["A", "B", "C"])
    first.config.class_weights = [1.0, 2.0, 40.0]
    with torch.no_grad():
        first.classifier.weight.add_(1.0)  # a trained head (an untrained one is new at every load)
    first.save_pretrained(tmp_path / "ft")
    from dbeta.modeling_dbeta import DBetaForECGClassification

    def load(names, **kwargs):
        return DBetaForECGClassification.from_pretrained(tmp_path / "ft", id2label=dict(enumerate(names)),
                                                         label2id={c: i for i, c in enumerate(names)}, **kwargs)

    assert load(["C", "A", "B"]).config.class_weights == [40.0, 1.0, 2.0]
    assert load(["C", "A", "B"], class_weights=[3.0, 2.0, 1.0]).config.class_weights == [3.0, 2.0, 1.0]  # as given
    with caplog.at_level("WARNING"):
        other = load(["X", "Y", "Z"])
    assert other.config.class_weights is None and "saved class_weights were for the saved classes" in caplog.text
    model = ft.load_classifier(str(tmp_path / "ft"), ["A", "B", "C"]).eval()
    ecg = torch.randn(2, 12, model.config.ecg_config.num_samples)
    model.config.problem_type = "multi_label_classification"
    model.config.class_weights = [1.0] * 5
    with pytest.raises(ValueError, match="class_weights holds 5 weights for 3 classes"):
        model(ecg, labels=torch.zeros(2, 3))
    model.config.class_weights, model.config.problem_type = None, "single_label_classification"
    with pytest.raises(ValueError, match="not whole numbers"):
        model(ecg, labels=torch.tensor([1.9, 0.7]))
    with pytest.raises(ValueError, match=r"labels of shape \(2, 3\) for 2 records"):
        model(ecg, labels=torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert model(ecg, labels=torch.tensor([2.0, 0.0])).loss is not None  # whole-number floats are indices
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    config["id2label"] = {"1": "A", "2": "B", "3": "C"}
    config["label2id"] = {"A": 1, "B": 2, "C": 3}
    (tmp_path / "ft" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"id2label has keys \[1, 2, 3\]; a head of 3 classes needs exactly 0..2"):
        DBetaForECGClassification.from_pretrained(tmp_path / "ft")
    # keys as a JSON file gives them ("0"): the same classes, not a contradictory refusal (helper:
    # /tmp/hM/repro/id2label_string_keys.py)
    config["id2label"], config["label2id"] = {"0": "A", "1": "B", "2": "C"}, {"A": 0, "B": 1, "C": 2}
    (tmp_path / "ft" / "config.json").write_text(json.dumps(config))
    for source in (tmp_path / "ft", setup["model"]):
        loaded = DBetaForECGClassification.from_pretrained(source, id2label={"0": "C", "1": "A", "2": "B"})
        assert loaded.config.id2label == {0: "C", 1: "A", 2: "B"}
    assert loaded.untrained_heads() == ["classifier"]  # the pretrained export: a new head


def test_each_logged_loss_says_how_many_steps_it_averages():
    """Trainer restarts its loss sum at a resume: the loss logged at step 10 after a resume at step 6 averaged
    steps 7-10 where an uninterrupted run's averaged 1-10, and results.json said nothing (helper:
    /tmp/hJ/repro/finetune_resume_loss_log.py)."""
    history = [{"step": 10, "loss": 0.7}, {"eval_macro_auc": 0.5, "step": 10}, {"step": 20, "loss": 0.6},
               {"step": 30, "loss": 0.5}]
    assert [e["steps_averaged"] for e in ft.loss_log(history)] == [10, 10, 10]
    assert [e["steps_averaged"] for e in ft.loss_log(history, resumed_at=26)] == [10, 10, 4]
    assert [e["steps_averaged"] for e in ft.loss_log(history, resumed_at=20)] == [10, 10, 10]  # on a log
    assert [e["step"] for e in ft.loss_log(history)] == [10, 20, 30]


def test_auto_class_weights():
    y = np.zeros((100, 4), np.float32)
    y[:10, 0] = 1  # 10 positives: 90 / 10 = 9
    y[:50, 1] = 1  # balanced: 1
    y[:1, 2] = 1  # 1 positive: 99, clipped to 50
    w = ft.auto_class_weights(y, max_weight=50.0)  # class 3 has no positive: 1
    assert w == pytest.approx([9.0, 1.0, 50.0, 1.0])
    y[:99, 1] = 1  # 99 positives: 1 / 99, clipped to 1 / 20
    assert ft.auto_class_weights(y, max_weight=20.0)[1] == pytest.approx(1 / 20)


def test_compute_metrics_is_sklearns_macro_auc():
    from sklearn.metrics import roc_auc_score
    from transformers import EvalPrediction

    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.4).astype(np.float32)
    y[:, 2] = 0  # unscorable: left out
    logits = rng.normal(size=(40, 3)) + y
    metrics = ft.make_compute_metrics(["A", "B", "C"])(EvalPrediction(predictions=logits, label_ids=y))
    expected = [roc_auc_score(y[:, j], logits[:, j]) for j in range(2)]
    assert metrics["macro_auc"] == pytest.approx(np.mean(expected))
    assert metrics["auc_A"] == pytest.approx(expected[0]) and "auc_C" not in metrics
    assert metrics["classes_scored"] == 2


def test_checkpoint_selection_and_report_use_the_same_metric_function(monkeypatch):
    """compute_metrics (which selects the checkpoint) and the test report (auc_report) both go through
    eval.metrics.point_metrics, so they cannot disagree; a split with no evaluable class gives NaN, never 0."""
    from transformers import EvalPrediction

    from eval import metrics

    calls = []
    real = metrics.point_metrics
    monkeypatch.setattr(metrics, "point_metrics", lambda y, s: calls.append(len(y)) or real(y, s))
    rng = np.random.default_rng(1)
    y = (rng.random((30, 3)) < 0.5).astype(np.float32)
    y[:, 1] = 1  # only positives: no AUROC, no AUPRC
    logits = rng.normal(size=(30, 3)) + y
    selected = ft.make_compute_metrics(["A", "B", "C"])(EvalPrediction(predictions=logits, label_ids=y))
    report = ft.auc_report(y, logits, ["A", "B", "C"], n_resamples=0)
    assert calls == [30, 30]
    assert selected["macro_auc"] == report["macro_auc"] and selected["macro_auprc"] == report["macro_auprc"]
    assert selected["auprc_A"] == report["per_class_auprc"]["A"] and "auprc_B" not in selected
    assert report["per_class_auc"]["B"] is None and [e["class"] for e in report["excluded_classes"]] == ["B"]
    none = ft.make_compute_metrics(["A"])(EvalPrediction(predictions=logits[:, :1], label_ids=np.ones((30, 1))))
    assert np.isnan(none["macro_auc"]) and np.isnan(none["macro_auprc"]) and none["classes_scored"] == 0


def test_dataset_conditions_records_in_dataloader_workers(setup):
    """One record per item through the processor; it pickles into DataLoader workers and gives the same batches."""
    from eval.datasets import load_downstream

    processor = ft.load_processor(str(setup["model"]))
    val = load_downstream("cpsc2018", setup["data"], split="val")
    ds = ft.ECGClassificationDataset(val, processor.feature_extractor, protocol_num_samples=500)
    item = ds[0]
    assert item["ecg_values"].shape == (12, 1000) and torch.equal(item["labels"], torch.from_numpy(val[0]["labels"]))
    assert (item["ecg_values"][:, 500:] == 0).all() and item["ecg_values"][:, :500].abs().max() > 0.5  # protocol cut
    batches = [list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=w)) for w in (0, 2)]
    for a, b in zip(*batches):
        assert torch.equal(a["ecg_values"], b["ecg_values"]) and torch.equal(a["labels"], b["labels"])


def test_random_crop_only_changes_the_window():
    from dbeta.processing_dbeta import DBetaFeatureExtractor, STANDARD_LEADS

    class Long:  # one 30 s record whose samples count up
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"signal": np.tile(np.arange(3000, dtype=np.float32), (12, 1)), "sampling_rate": 100.0,
                    "lead_names": list(STANDARD_LEADS), "labels": np.ones(2, np.float32), "record_id": "x"}

    fe = DBetaFeatureExtractor(sampling_rate=100, num_samples=1000, max_amplitude_mv=None)  # values count samples, not mV
    fixed = ft.ECGClassificationDataset(Long(), fe)
    assert fixed[0]["ecg_values"][0, 0] == 0  # the protocol's first 10 s
    starts = {int(ft.ECGClassificationDataset(Long(), fe, random_crop=True)[0]["ecg_values"][0, 0]) for _ in range(8)}
    assert len(starts) > 1 and fe.crop == "start"  # random windows; the model's extractor is left as it was


def test_with_random_crops_the_record_scan_judges_the_windows_training_may_draw():
    """The processor judges the part of a record the model reads; fine-tuning's scan read the first 10 s, and with
    --random-crop a later stretch at 200 mV ended the run mid-training (helper). Training records are judged whole
    then, as the processor judges a random crop."""
    from dbeta.processing_dbeta import DBetaFeatureExtractor, STANDARD_LEADS
    from tests.tiny import ecg_batch

    signal = np.concatenate([ecg_batch(1, seed=k)[0].numpy() for k in range(6)], axis=1)  # 60 s at 500 Hz
    signal[1, 20000:22500] = 200.0

    class Late:
        record_ids = ["late"]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"signal": signal, "sampling_rate": 500.0, "lead_names": list(STANDARD_LEADS),
                    "labels": np.ones(2, np.float32), "record_id": "late"}

    fe = DBetaFeatureExtractor()
    assert ft.check_records({"train": Late(), "val": Late()}, fe, None, "raise", 0, False) == ({}, {})
    with pytest.raises(ft.RecordError, match=r"1 record\(s\) cannot be read .*\n  train: .*implausible amplitude"):
        ft.check_records({"train": Late(), "val": Late()}, fe, None, "raise", 0, False, random_crop=True)
    assert fe.crop == "start"


def test_bad_records_stop_the_run_before_its_first_step_or_are_left_out(setup, tmp_path, capsys):
    """A truncated signal file or a two-lead record in the train split ended a fine-tuning run midway, with a
    DataLoader-worker traceback, whenever the sampler reached it. Every record is now checked first."""
    import shutil

    from eval.datasets import load_downstream
    from tests.test_linear_probe import FIXTURE_RATE, fixture_signal, write_wfdb

    data = tmp_path / "cpsc"
    shutil.copytree(setup["data"], data)
    train_ids = load_downstream("cpsc2018", data, split="train").record_ids
    truncated, two_leads = train_ids[3], train_ids[7]
    dat = data / f"{truncated}.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2])
    signal = fixture_signal(False, False, np.random.default_rng(0))[:2]
    write_wfdb(data, two_leads, signal, FIXTURE_RATE, ["I", "II"], ["Dx: 426783006"])

    def args(out, *extra):
        argv = ft_args(setup, out, "--epochs", "1", "--batch-size", "17", "--lr", "1e-3", *extra)
        return [str(data) if a == str(setup["data"]) else a for a in argv]

    with pytest.raises(SystemExit) as exit_:
        ft.main(args(tmp_path / "refused"))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "2 record(s) cannot be read or conditioned; nothing was trained" in err
    assert f"record {truncated}" in err and "bytes, but the header implies" in err
    assert f"record {two_leads}" in err and "lacks lead(s) III" in err
    assert "--on-error skip" in err and not list((tmp_path / "refused").glob("checkpoint-*"))

    done = ft.main(args(tmp_path / "skipped", "--on-error", "skip"))
    skipped = {r["record_id"] for r in done["skipped_records"]["train"]}
    assert skipped == {truncated, two_leads} and done["splits"]["train"] == len(train_ids) - 2
    saved = json.loads((tmp_path / "skipped" / "results.json").read_text())
    assert {r["record_id"] for r in saved["skipped_records"]["train"]} == skipped

    with pytest.raises(SystemExit) as exit_:  # skipping needs the check; no run can leave a record out midway
        ft.main(args(tmp_path / "unchecked", "--on-error", "skip", "--set", "data.check_records=false"))
    assert exit_.value.code == 2 and "needs data.check_records=true" in capsys.readouterr().err


def test_gradient_accumulation_does_not_scale_the_loss(setup, tmp_path):
    """Same data, lr 0: the logged loss of each optimizer step is the mean over its 4 records whether they come
    as one batch of 4 or as 2 accumulated batches of 2; with the loss treated as pre-scaled it would be x2."""
    s, _ = ft.resolve_settings(ft_args(setup, tmp_path / "ga", "--lr", "0", "--max-steps", "2",
                                       "--logging-steps", "1", "--early-stopping-patience", "0"))
    parts = ft.prepare(s)
    initial = {k: v.clone() for k, v in parts["model"].state_dict().items()}

    def logged_losses(batch, accumulation, loss_is_scaled=False):
        model = no_dropout(ft.load_classifier(str(setup["model"]), parts["class_names"]))
        model.load_state_dict(initial)  # the same head in every run
        s.train.per_device_batch_size, s.train.gradient_accumulation_steps = batch, accumulation
        s.output_dir = str(tmp_path / f"ga-{batch}-{accumulation}-{loss_is_scaled}")
        trainer = ft.build_trainer(s, model, parts["processor"], parts["datasets"]["train"],
                                   parts["datasets"]["val"], parts["class_names"])
        assert trainer.model_accepts_loss_kwargs is False  # DBetaForECGClassification.accepts_loss_kwargs
        trainer.loss_is_scaled_for_ga = loss_is_scaled or False
        trainer.train()
        return [e["loss"] for e in trainer.state.log_history if "loss" in e]

    one = logged_losses(4, 1)
    two = logged_losses(2, 2)
    assert len(one) == len(two) == 2
    assert two == pytest.approx(one, rel=1e-4), (one, two)
    trap = logged_losses(2, 2, loss_is_scaled=True)  # what the accepts_loss_kwargs trap does
    assert np.asarray(trap) / np.asarray(one) == pytest.approx([2.0, 2.0], rel=1e-4)


# ------------------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------------------


def _stopped_after_saving(monkeypatch, step: int) -> None:
    """The next run stops (as if killed) once its checkpoint of `step` is on disk."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    build = ft.build_trainer

    def stopping(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(Stop())
        return trainer

    monkeypatch.setattr(ft, "build_trainer", stopping)


def _killed_after_saving(argv, step: int, monkeypatch) -> None:
    """ft.main(argv), stopped (as if killed) once its checkpoint of `step` is on disk."""
    with monkeypatch.context() as stop:
        _stopped_after_saving(stop, step)
        with pytest.raises(KeyboardInterrupt):
            ft.main(argv)


def test_finetune_checkpoints_resumes_exports_and_pushes(setup, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ft_args(setup, out, "--epochs", "2", "--batch-size", "17", "--lr", "1e-3", "--logging-steps", "1",
                   "--class-weights", "auto")
    _killed_after_saving(argv, 2, monkeypatch)
    assert (out / "checkpoint-2" / "model.safetensors").is_file() and not (out / "results.json").exists()
    assert (out / "checkpoint-2" / "processor_config.json").is_file()  # processing_class is saved
    recorded = json.loads((out / "checkpoint-2" / ft.DIGESTS_FILE).read_text())
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(recorded)
    # a Trainer checkpoint is a classifier folder too: it names only the classifier's pipeline
    assert set(json.loads((out / "checkpoint-2" / "config.json").read_text())["custom_pipelines"]) == {
        "ecg-classification"}
    assert json.loads((out / ft.SETTINGS_FILE).read_text())["data"]["dataset"] == "cpsc2018"

    pushed = []
    monkeypatch.setattr(ft, "push_export", lambda folder, repo, **kw: pushed.append((folder, repo, kw)) or "url")
    second = ft.main(argv + ["--resume", "--push-to-hub", "someone/dbeta-cpsc"])
    assert second["splits"] == {"train": 34, "val": 4, "test": 10}
    assert second["class_weights"] and len(second["class_weights"]) == 9
    # the fixture teaches three of CPSC2018's nine classes: the other six are scored by the export, never learned
    assert set(second["classes_without_train_positives"]) == set(second["class_names"]) - {"AFIB", "CLBBB", "NORM"}
    assert second["test"]["report"]["n_records"] == 10 and second["best_val_macro_auc"] is not None
    assert second["test"]["report"]["macro_auprc"] is not None and "eval_macro_auprc" in second["eval_log"][0]
    assert json.loads((out / "results.json").read_text())["schema"] == "dbeta-finetune/1"
    assert second["resumed_from"] == str(out / "checkpoint-2")
    assert second["global_step"] == 4 and second["epochs_run"] == 2
    steps = [e["step"] for e in second["train_loss_log"]]
    assert steps == [1, 2, 3, 4]  # the first epoch's log comes back from the checkpoint, then steps 3-4
    assert [e["steps_averaged"] for e in second["train_loss_log"]] == [1, 1, 1, 1]
    assert len(second["eval_log"]) == 2 and second["best_checkpoint"] in (str(out / "checkpoint-2"),
                                                                         str(out / "checkpoint-4"))
    assert pushed == [(Path(second["export_dir"]), "someone/dbeta-cpsc", pushed[0][2])]
    assert second["pushed"] == {"repo": "someone/dbeta-cpsc", "ok": True, "commit_url": "url"}

    def offline(folder, repo, **kw):
        raise RuntimeError("Cannot push: HF_HUB_OFFLINE is set")
    monkeypatch.setattr(ft, "push_export", offline)  # the upload failing: results.json was never written
    (out / "results.json").unlink()
    with pytest.raises(SystemExit) as exit_:
        ft.main(argv + ["--resume", "--push-to-hub", "someone/dbeta-cpsc"])
    assert exit_.value.code == 4
    failed = json.loads((out / "results.json").read_text())
    assert failed["pushed"]["ok"] is False and "HF_HUB_OFFLINE" in failed["pushed"]["error"]
    assert failed["test"]["report"]["macro_auc"] == second["test"]["report"]["macro_auc"]

    export = Path(second["export_dir"])
    config = json.loads((export / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config.get("class_weights") is None
    assert config["id2label"]["0"] == "AFIB" and config["label2id"]["CLBBB"] == 7
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_dbeta.DBetaForECGClassification"
    # its own pipeline only: a classifier has no text tower to score zero-shot labels with
    assert list(config["custom_pipelines"]) == ["ecg-classification"]
    card = (export / "README.md").read_text()
    assert 'pipeline("ecg-classification"' in card and "zero-shot-ecg-classification" not in card
    assert "test macro AUC" in (export / "README.md").read_text()
    assert "test macro AUPRC" in (export / "README.md").read_text()
    assert "classes never seen positive in training" in card

    # the export reloads in a fresh interpreter (remote code only) and gives the same logits
    from dbeta.modeling_dbeta import DBetaForECGClassification

    ecg = torch.randn(2, 12, 1000) * 0.3
    with torch.no_grad():
        expected = DBetaForECGClassification.from_pretrained(export).eval()(ecg_values=ecg).logits
    torch.save({"ecg": ecg, "logits": expected}, tmp_path / "io.pt")
    stdout = fresh_python(
        f"""
        import numpy as np, torch
        from transformers import AutoModelForSequenceClassification, AutoProcessor, pipeline
        path, io = {str(export)!r}, torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
        proc = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        with torch.no_grad():
            out = model(ecg_values=io["ecg"])
        assert (out.logits - io["logits"]).abs().max() < 1e-5
        assert model.config.problem_type == "multi_label_classification"
        batch = proc(ecg=np.random.default_rng(0).standard_normal((12, 500)).astype(np.float32), sampling_rate=50)
        pipe = pipeline("ecg-classification", model=path, trust_remote_code=True)
        rate = proc.feature_extractor.sampling_rate
        scores = [{{d["label"]: d["score"] for d in r}} for r in pipe(list(io["ecg"].numpy()), sampling_rate=rate)]
        for row, got in enumerate(scores):
            want = torch.sigmoid(io["logits"][row])
            assert all(abs(got[model.config.id2label[i]] - float(want[i])) < 1e-5 for i in range(9)), (got, want)
        print(type(model).__name__, model.config.id2label[7], tuple(batch["ecg_values"].shape))
        """,
        cwd=tmp_path,
        hf_home=tmp_path / "hf",
    )
    assert "DBetaForECGClassification CLBBB (1, 12, 1000)" in stdout


def test_a_resume_continues_the_run_it_resumes(setup, tmp_path, monkeypatch, capsys):
    """Helper findings, each exit 0 before: a run stopped early and then killed before its results trained on
    when resumed; a moved run took its best weights from the old path (another run's); a resume on regenerated
    data, or under another warmup or epoch count, went on with results.json recording the new values; the
    old results.json stayed beside a new export while it was written; a data folder spelled another way was
    refused."""
    import shutil

    es = tmp_path / "es"
    argv = ft_args(setup, es, "--epochs", "5", "--batch-size", "17", "--lr", "0", "--early-stopping-patience", "1",
                   "--class-weights", "none")
    done = ft.main(argv)
    assert done["global_step"] == 4 and done["best_checkpoint"].endswith("checkpoint-2")
    (es / "results.json").unlink()  # killed during the final evaluation
    again = ft.main(argv + ["--resume"])
    assert again["global_step"] == 4 and again["best_checkpoint"] == str(es / "checkpoint-2")
    # Trainer's train_loss is the mean over this invocation's steps (here none): the JSON says where it starts
    assert done["train"]["resumed_at_step"] == 0 and again["train"]["resumed_at_step"] == 4
    assert again["test"]["report"]["macro_auc"] == done["test"]["report"]["macro_auc"]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # stopped while the new export is written: no results of the old one
        patch.setattr(ft, "export_model", stopped)
        with pytest.raises(KeyboardInterrupt):
            ft.main(argv + ["--resume"])
    assert not (es / "results.json").exists()

    moved = tmp_path / "moved"
    shutil.move(es, moved)  # the old place now holds another run's folder of that name
    (es / "checkpoint-2").mkdir(parents=True)
    here = ft.main([a if a != str(es) else str(moved) for a in argv] + ["--resume"])
    assert here["best_checkpoint"] == str(moved / "checkpoint-2")
    assert here["test"]["report"]["macro_auc"] == done["test"]["report"]["macro_auc"]

    spelled = [a if a != str(setup["data"]) else f"{setup['data']}/./" for a in argv]
    ft.main([a if a != str(es) else str(moved) for a in spelled] + ["--resume"])  # the same folder: accepted

    for flag, value, named in (("--warmup-steps", "5", "optim.warmup_steps: 0 -> 5"),
                               ("--epochs", "6", "train.epochs: 5.0 -> 6.0"),
                               ("--classifier-dropout", "0.5", "model.classifier_dropout"),
                               ("--bf16", None, "train.mixed_precision: 'no' -> 'bf16'")):
        with pytest.raises(SystemExit) as exit_:
            ft.main([a if a != str(es) else str(moved) for a in argv]
                    + [flag, *([value] if value else []), "--resume"])
        assert exit_.value.code == 2 and named in capsys.readouterr().err

    data = shutil.copytree(setup["data"], tmp_path / "data")  # a run on a data folder later made anew
    run = [a if a != str(setup["data"]) else str(data)
           for a in ft_args(setup, tmp_path / "run", "--epochs", "1", "--batch-size", "17")]
    ft.main(run)
    shutil.rmtree(data)
    write_cpsc_fixture(data, n=60, seed=2)
    with pytest.raises(SystemExit) as exit_:
        ft.main(run + ["--resume"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "the data differ from the run's (train: 34 records -> " in err, err


def test_a_resume_whose_best_checkpoint_is_damaged_finishes_on_the_best_saved_since(setup, tmp_path, monkeypatch,
                                                                                     caplog):
    """The resumed run's best checkpoint truncated: a warning, then 20 more steps, then transformers' end-of-run
    load of that very checkpoint crashed with no results or export; a second resume exported the last weights
    while results.json kept the lost checkpoint's score (helper). transformers sets the best checkpoint again from
    `best_global_step` at every save."""
    out = tmp_path / "run"
    argv = ft_args(setup, out, "--epochs", "4", "--batch-size", "17", "--lr", "0", "--early-stopping-patience", "0",
                   "--class-weights", "none")
    _killed_after_saving(argv, 4, monkeypatch)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith("checkpoint-2")  # lr 0: no later score beats the first
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="dbeta.finetune"):
        done = ft.main(argv + ["--resume"])
    assert any("best checkpoint checkpoint-2 cannot be used" in r.getMessage() for r in caplog.records)
    assert done["global_step"] == 8 and done["best_checkpoint"] == str(out / "checkpoint-6")
    at_6 = [e["eval_macro_auc"] for e in done["eval_log"] if e["step"] == 6]
    assert done["best_val_macro_auc"] == at_6[0]  # the score the exported checkpoint holds
    assert Path(done["export_dir"], "model.safetensors").is_file()


def test_a_validation_split_that_cannot_select_a_checkpoint_is_exit_2(setup, tmp_path, monkeypatch, capsys):
    """No class with both positives and negatives in val: the selection metric is undefined. It was a ValueError
    traceback (exit 1) where every other data problem is a message and exit 2 (helper)."""
    import eval.datasets

    load = eval.datasets.load_downstream

    def constant_val(*args, split, **kwargs):
        ds = load(*args, split=split, **kwargs)
        if split == "val":
            ds.labels_matrix = lambda: np.zeros((len(ds), len(ds.class_names)), dtype=np.float32)
        return ds

    monkeypatch.setattr(eval.datasets, "load_downstream", constant_val)
    with pytest.raises(SystemExit) as exit_:
        ft.main(ft_args(setup, tmp_path / "run", "--epochs", "1"))
    assert exit_.value.code == 2 and "no class has both positives and negatives in val" in capsys.readouterr().err


def test_early_stopping_with_bf16(setup, tmp_path):
    """lr 0: the val AUC never improves after the first epoch, so patience 1 stops after epoch 2 of 5."""
    result = ft.main(ft_args(setup, tmp_path / "es", "--epochs", "5", "--batch-size", "17", "--lr", "0",
                             "--early-stopping-patience", "1", "--bf16", "--class-weights", "none"))
    assert result["epochs_run"] == 2 and result["global_step"] == 4
    assert result["hyperparameters"]["bf16"] is True and result["class_weights"] is None
    assert result["best_checkpoint"].endswith("checkpoint-2")


# ------------------------------------------------------------------------------------------------------------
# Settings: the same system as pretraining (train/settings.py), checked before anything is read
# ------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def nothing_is_read(monkeypatch):
    """Fail the test if a run gets as far as reading data or loading a model."""
    from eval import datasets

    def built(*args, **kwargs):
        raise AssertionError("data or a model was read before the settings were checked")

    for name in ("prepare", "load_processor", "load_classifier"):
        monkeypatch.setattr(ft, name, built)
    monkeypatch.setattr(datasets, "load_downstream", built)


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "train.epochs must be > 0"),
    (["--seed=-1"], "seed must be >= 0"),  # numpy's "Seed must be between 0 and 2**32 - 1" after the data was read
    (["--epochs", "-2"], "train.epochs must be > 0"),
    (["--lr=-1e-4"], "optim.lr must be >= 0"),
    (["--weight-decay", "-0.1"], "optim.weight_decay must be >= 0"),
    (["--batch-size", "0"], "train.per_device_batch_size must be >= 1"),
    (["--eval-batch-size", "0"], "train.eval_batch_size must be >= 1"),
    (["--gradient-accumulation-steps", "0"], "train.gradient_accumulation_steps must be >= 1"),
    (["--max-steps", "0"], "train.max_steps must be >= 1, got 0 (or one of: -1)"),
    (["--protocol-num-samples", "junk"], "data.protocol_num_samples must be an integer, got 'junk' (or one of: auto"),
    (["--protocol-num-samples", "0"], "data.protocol_num_samples must be >= 1"),
    (["--early-stopping-patience", "-1"], "train.early_stopping_patience must be >= 0"),
    (["--bootstrap", "-5"], "eval.bootstrap must be >= 0"),
    (["--max-class-weight", "0"], "model.max_class_weight must be >= 1"),
    (["--max-class-weight", "0.5"], "model.max_class_weight must be >= 1"),  # [1/0.5, 0.5] is empty
    (["--classifier-dropout", "1"], "model.classifier_dropout must be < 1"),
    (["--classifier-dropout", "-0.1"], "model.classifier_dropout must be >= 0"),
    (["--class-weights", "sometimes"], "model.class_weights must be one of auto, none"),
    (["--save-total-limit", "0"], "train.checkpoint_total_limit must be >= 1"),
    (["--logging-steps", "0"], "train.log_every must be >= 1"),
    (["--num-workers", "-1"], "data.num_workers must be >= 0"),
    (["--epochs", "ten"], "train.epochs must be a number"),
    (["--task", "super"], "data.task applies to ptbxl only"),
    (["--dataset", "ptbxl"], "data.task (--task) is required for ptbxl"),
    (["--dataset", "ptb"], "data.dataset must be one of ptbxl, cpsc2018"),
    (["--warmup-steps", "-1"], "warmup_steps >= 0"),  # TrainingArguments' own check
    (["--report-to", "tensorbard"], "tensorbard is not supported"),  # transformers' integration check
    (["--set", "train.epoch=3"], "unknown setting 'train.epoch' ('epoch' is not one of: epochs, max_steps"),
    (["--set", "train.epoch=3"], "did you mean 'epochs'?"),
    (["--set", "optim.lr=fast"], "optim.lr must be a number"),
])
def test_bad_settings_exit_2_before_anything_is_read(tmp_path, capsys, nothing_is_read, extra, message):
    out = tmp_path / "never"
    argv = ["--model", str(tmp_path / "model"), "--dataset", "cpsc2018", "--data-root", str(tmp_path / "data"),
            "--output-dir", str(out), *extra]
    with pytest.raises(SystemExit) as exit_:
        ft.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err, err
    assert not out.exists()


def test_required_settings_are_named_with_their_flags(tmp_path, capsys, nothing_is_read):
    from train.finetune_settings import FinetuneSettings
    from train.settings import ConfigError

    with pytest.raises(SystemExit) as exit_:
        ft.main(["--dataset", "cpsc2018", "--data-root", str(tmp_path), "--output-dir", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "model.name_or_path (--model) is required" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"output_dir \(--output-dir\) is required"):  # run() as a function
        ft.run(FinetuneSettings.from_dict({"model": {"name_or_path": "m"},
                                           "data": {"dataset": "csn", "root": str(tmp_path)}}))


def test_an_output_folder_with_checkpoints_needs_resume(tmp_path, capsys, nothing_is_read):
    """A new run into a folder holding another run's checkpoints is refused before anything is read: Trainer's
    rotation would delete them and a later --resume would continue whichever has the highest step."""
    out = tmp_path / "run"
    (out / "checkpoint-500").mkdir(parents=True)
    (out / "checkpoint-500" / "model.safetensors").write_bytes(b"earlier run")
    argv = ["--model", str(tmp_path / "model"), "--dataset", "cpsc2018", "--data-root", str(tmp_path / "data"),
            "--output-dir", str(out)]
    with pytest.raises(SystemExit) as exit_:
        ft.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "already holds checkpoints of an earlier run (checkpoint-500)" in err, err
    assert "--resume" in err and (out / "checkpoint-500" / "model.safetensors").read_bytes() == b"earlier run"
    with pytest.raises(AssertionError, match="data or a model was read"):  # --resume goes on to read the data
        ft.main(argv + ["--resume"])
    # a finished run whose checkpoints were deleted: its results and export were replaced without a word (helper)
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / ft.RESULTS_FILE).write_text('{"earlier": true}')
    with pytest.raises(SystemExit) as exit_:
        ft.main([a if a != str(out) else str(finished) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "holds a finished run (results.json" in err, err
    assert (finished / ft.RESULTS_FILE).read_text() == '{"earlier": true}'


def test_a_resume_under_another_task_model_or_data_is_refused(tmp_path, capsys, nothing_is_read):
    """The run's settings are kept beside its checkpoints; --resume with another task (a classifier of another
    shape), base model or data folder stops before anything is read instead of failing deep in Trainer or
    continuing silently on other data."""
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    argv = ["--model", str(tmp_path / "model"), "--dataset", "ptbxl", "--task", "super", "--data-root",
            str(tmp_path / "data"), "--output-dir", str(out), "--resume"]
    settings = ft.FinetuneSettings.from_dict({"model": {"name_or_path": str(tmp_path / "model")}, "output_dir": str(out),
                                             "data": {"dataset": "ptbxl", "task": "super",
                                                      "root": str(tmp_path / "data")}})
    (out / ft.SETTINGS_FILE).write_text(json.dumps(settings.to_dict()))
    argv += ["--lr", str(settings.optim.lr), "--seed", "42"]
    for flag, value, named in (("--task", "rhythm", "data.task: 'super' -> 'rhythm'"),
                               ("--model", str(tmp_path / "other"), "model.name_or_path"),
                               ("--data-root", str(tmp_path / "elsewhere"), "data.root"),
                               # Trainer restores the optimizer's LR: a new --lr was ignored, results.json recorded it
                               ("--lr", "0.01", f"optim.lr: {settings.optim.lr!r} -> 0.01"),
                               ("--seed", "7", "seed: 42 -> 7")):  # another data order, recorded for the whole run
        changed = list(argv)
        changed[changed.index(flag) + 1] = value
        with pytest.raises(SystemExit) as exit_:
            ft.main(changed)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "the run differs from the checkpointed one" in err and named in err, err
    with pytest.raises(AssertionError, match="data or a model was read"):  # the same run resumes
        ft.main(argv)


def test_every_flag_keeps_its_meaning(tmp_path):
    """The command line of before the settings system, flag by flag, lands on the fields the run reads."""
    s, args = ft.resolve_settings([
        "--model", "M", "--dataset", "ptbxl", "--data-root", "D", "--task", "rhythm", "--output-dir", "O",
        "--export-dir", "E", "--epochs", "2.5", "--max-steps", "7", "--lr", "3e-4", "--weight-decay", "0.01",
        "--warmup-steps", "5", "--batch-size", "8", "--eval-batch-size", "32", "--gradient-accumulation-steps", "4",
        "--bf16", "--class-weights", "auto", "--max-class-weight", "20", "--classifier-dropout", "0.2",
        "--early-stopping-patience", "0", "--save-total-limit", "3", "--resume", "--random-crop",
        "--protocol-num-samples", "2500", "--num-workers", "0", "--on-error", "skip", "--logging-steps", "5",
        "--bootstrap", "0",
        "--seed", "7", "--report-to", "tensorboard", "--no-progress", "--push-to-hub", "me/ft", "--private"])
    assert args.resume is True
    assert s.to_dict() == {
        "output_dir": "O", "export_dir": "E", "seed": 7,
        "data": {"dataset": "ptbxl", "root": "D", "task": "rhythm", "protocol_num_samples": 2500,
                 "random_crop": True, "num_workers": 0, "check_records": True, "on_error": "skip"},
        "model": {"name_or_path": "M", "classifier_dropout": 0.2, "class_weights": "auto", "max_class_weight": 20.0},
        "optim": {"lr": 3e-4, "weight_decay": 0.01, "warmup_steps": 5},
        "train": {"epochs": 2.5, "max_steps": 7, "per_device_batch_size": 8, "eval_batch_size": 32,
                  "gradient_accumulation_steps": 4, "mixed_precision": "bf16", "early_stopping_patience": 0,
                  "checkpoint_total_limit": 3, "log_every": 5, "log_with": ["tensorboard"], "progress": False},
        "eval": {"bootstrap": 0},
        "hub": {"push_to_hub": "me/ft", "private": True},
    }
    targs = ft.build_training_args(s)
    assert (targs.num_train_epochs, targs.max_steps, targs.learning_rate, targs.per_device_train_batch_size,
            targs.per_device_eval_batch_size, targs.gradient_accumulation_steps, targs.bf16, targs.logging_steps,
            targs.save_total_limit, targs.seed, targs.disable_tqdm, targs.report_to) == (
        2.5, 7, 3e-4, 8, 32, 4, True, 5, 3, 7, True, ["tensorboard"])
    none, _ = ft.resolve_settings(["--protocol-num-samples", "none", "--report-to", "none", "--max-steps", "-1"])
    assert none.data.protocol_num_samples is None and none.train.log_with == [] and none.train.max_steps == -1


def test_config_file_then_set_then_flags_and_print_config_round_trips(tmp_path, capsys):
    import yaml

    from train.finetune_settings import FinetuneSettings

    shipped = sorted((ROOT / "train" / "configs").glob("finetune_*.yaml"))
    assert shipped
    for path in shipped:  # every shipped fine-tuning config resolves and runs its checks
        s, _ = ft.resolve_settings(["--config", str(path), "--model", "M", "--data-root", "D", "--output-dir", "O"])
        s.require(ft.FLAGS)
        ft.build_training_args(s)
    config = ROOT / "train" / "configs" / "finetune_ptbxl.yaml"
    s, _ = ft.resolve_settings(["--config", str(config), "--set", "data.task=rhythm", "--set", "optim.lr=1e-3",
                                "--lr", "2e-4"])
    assert (s.data.dataset, s.data.task, s.model.class_weights) == ("ptbxl", "rhythm", "auto")  # file, then --set
    assert s.optim.lr == 2e-4  # the flag wins over --set
    (tmp_path / "bad.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ft.ConfigError, match="'train.epoch'.*did you mean 'epochs'"):
        ft.resolve_settings(["--config", str(tmp_path / "bad.yaml")])

    assert ft.main(["--print-config", "--config", str(config), "--bf16"]) is None
    printed = capsys.readouterr().out
    assert "# peak learning rate" in printed
    resolved, _ = ft.resolve_settings(["--config", str(config), "--bf16"])
    assert FinetuneSettings.from_dict(yaml.safe_load(printed)).to_dict() == resolved.to_dict()
    assert yaml.safe_load(FinetuneSettings().to_yaml()) == FinetuneSettings().to_dict()


def test_config_files_with_repeated_keys_or_odd_yaml_are_refused(tmp_path):
    """YAML and JSON keep the last of two equal keys: a second `optim:` section would drop the first one's
    settings without a word. Anchors and merge keys still work; a number as a key and YAML's unquoted `no` (a
    boolean) are clear errors."""
    def resolve(name, text):
        (tmp_path / name).write_text(text)
        return ft.resolve_settings(["--config", str(tmp_path / name)])[0]

    with pytest.raises(ft.ConfigError, match=r"dup.yaml: key 'optim' appears twice in one mapping \(lines 1 and 5\)"):
        resolve("dup.yaml", "optim:\n  lr: 1e-3\ntrain:\n  epochs: 2\noptim:\n  weight_decay: 0.1\n")
    with pytest.raises(ft.ConfigError, match="key 'lr' appears twice"):
        resolve("inner.yaml", "optim:\n  lr: 1e-3\n  lr: 2e-3\n")
    with pytest.raises(ft.ConfigError, match="dup.json: key.s. 'optim' appear more than once"):
        resolve("dup.json", '{"optim": {"lr": 1}, "optim": {"weight_decay": 0.1}}')
    merged = resolve("anchor.yaml", "optim: &o\n  lr: 1e-3\n  weight_decay: 0.1\nhub:\n  private: true\n"
                                    "train:\n  epochs: 3\n  <<: {log_every: 5, epochs: 4}\n")
    assert (merged.optim.lr, merged.optim.weight_decay, merged.train.epochs, merged.train.log_every) == (
        1e-3, 0.1, 3.0, 5)  # an explicit key wins over a merged one, as YAML says
    with pytest.raises(ft.ConfigError, match="unknown setting '1'"):
        resolve("number.yaml", "1: x\n")
    with pytest.raises(ft.ConfigError, match=r"train.mixed_precision must be a non-empty string, got False "
                                             r"\(YAML reads an unquoted no"):
        resolve("no.yaml", "train:\n  mixed_precision: no\n")


def test_one_output_folder_one_fine_tuning_run(tmp_path, capsys, nothing_is_read):
    """Two runs into one folder both exited 0; the second's checkpoints, export and results replaced the first's."""
    from train.run_lock import RunLock

    out = tmp_path / "run"
    argv = ["--model", str(tmp_path / "model"), "--dataset", "cpsc2018", "--data-root", str(tmp_path / "data"),
            "--output-dir", str(out)]
    with RunLock(out):
        with pytest.raises(SystemExit) as exit_:
            ft.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "in use by another run" in err and f'"pid": {os.getpid()}' in err
    with pytest.raises(AssertionError, match="data or a model was read"):  # free again: goes on to read the data
        ft.main(argv)


def test_the_output_folder_is_never_the_model_folder(tmp_path, capsys, nothing_is_read):
    """--output-dir M --model M exited 0 with checkpoint-3/, export/, results.json and run.lock inside the model."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "dbeta"}')
    for out in (model, model / "ft"):
        with pytest.raises(SystemExit) as exit_:
            ft.main(["--model", str(model), "--dataset", "cpsc2018", "--data-root", str(tmp_path / "data"),
                     "--output-dir", str(out)])
        assert exit_.value.code == 2 and "the model this run starts from" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]


def test_an_export_folder_fine_tuning_must_not_take_is_refused_first(tmp_path, capsys, nothing_is_read):
    """--export-dir OUT/checkpoint-11 passed the start check (absent then), Trainer saved a checkpoint there, and
    the export was refused after the whole run with no results written; a pretrained export given as --export-dir
    was replaced by the classifier, its text tower gone (helper)."""
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "config.json").write_text('{"model_type": "dbeta", "architectures": ["DBetaModel"]}')
    for export, message in ((tmp_path / "run" / "checkpoint-11", "Trainer names its checkpoints so"),
                            (pretrained, r"holds a pretrained D-BETA export \(DBetaModel\)")):
        with pytest.raises(SystemExit) as exit_:
            ft.main(["--model", str(tmp_path / "model"), "--dataset", "cpsc2018", "--data-root", str(tmp_path / "d"),
                     "--output-dir", str(tmp_path / "run"), "--export-dir", str(export)])
        assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert sorted(p.name for p in pretrained.iterdir()) == ["config.json"]


def test_resume_skips_a_checkpoint_cut_short_while_saving(tmp_path, caplog):
    """A kill while Trainer saved checkpoint-4 left it without a readable trainer_state.json (written last), and
    every --resume failed on it (transformers takes the highest number) though checkpoint-2 was whole. Damaged
    weights, NaN weights (resumed, they ended the run as 'diverged, lower the LR') and a damaged optimizer or RNG
    file are skipped the same way, each named with its reason (helper)."""
    import datetime
    import zipfile

    from safetensors.torch import save_file

    def checkpoint(step, state='{"global_step": 1}', weights=1.0):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
        (folder / "config.json").write_text("{}")
        save_file({"classifier.weight": torch.full((2, 2), weights)}, str(folder / "model.safetensors"))
        torch.save({"step": step}, folder / "optimizer.pt")
        torch.save({"step": step}, folder / "scheduler.pt")
        return folder

    checkpoint(2)
    checkpoint(4, state='{"global_st')
    checkpoint(6, state=None)
    checkpoint(8, weights=float("nan"))
    cut = checkpoint(10) / "model.safetensors"
    cut.write_bytes(cut.read_bytes()[:40])
    opt = checkpoint(12) / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-30])
    (checkpoint(14) / "rng_state.pth").write_bytes(b"\x00" * 100)
    # copied without the optimizer or the schedule: Trainer restarted both silently (the LR jumped, helper)
    (checkpoint(16) / "optimizer.pt").unlink()
    (checkpoint(18) / "scheduler.pt").unlink()
    # a truncated config.json and a schedule holding objects were transformers' tracebacks (the object never ran)
    (checkpoint(20) / "config.json").write_text('{"model_ty')
    torch.save({"when": datetime.date(2020, 1, 1)}, checkpoint(22) / "scheduler.pt")
    # a trainer_state.json without its step count was a bare KeyError after the choice
    checkpoint(24, state='{"best_metric": 0.5}')
    checkpoint(26, state='[1]')
    # a NaN moment in the optimizer state: resumed, the run ended as 'diverged, lower the LR' (helper:
    # /tmp/hJ/repro/finetune_nan_optimizer_state.py)
    torch.save({"state": {0: {"step": torch.tensor(3.0), "exp_avg_sq": torch.tensor([1.0, float("nan")])}},
                "param_groups": []}, checkpoint(28) / "optimizer.pt")
    # bytes changed in recorded weights (finite, and they load) were resumed from, exit 0, an export up to 1,570
    # away (helper: /tmp/hK/repro/finetune_ckpt_bitflip_resumed.sh)
    from train.checkpoints import file_digests

    flipped = checkpoint(30)
    (flipped / ft.DIGESTS_FILE).write_text(json.dumps(file_digests(flipped)))
    save_file({"classifier.weight": torch.full((2, 2), 1.5)}, str(flipped / "model.safetensors"))
    (checkpoint(32) / ft.DIGESTS_FILE).write_text('{"model.safe')
    (tmp_path / "checkpoint-x").mkdir()  # not Trainer's
    assert [p.name for p in ft.checkpoint_folders(tmp_path)] == [f"checkpoint-{n}" for n in range(2, 33, 2)]
    assert zipfile.is_zipfile(tmp_path / "checkpoint-2" / "optimizer.pt")
    with caplog.at_level("WARNING", logger=ft.logger.name):
        assert ft.find_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    for step, reason in ((4, "no readable trainer_state.json"), (6, "no readable trainer_state.json"),
                         (8, "model.safetensors holds NaN or infinite values in classifier.weight"),
                         (10, "model.safetensors does not read"), (12, "optimizer.pt is damaged"),
                         (14, "rng_state.pth is damaged"), (16, "no optimizer.pt: resumed, the optimizer"),
                         (18, "no scheduler.pt"), (20, "no readable config.json"),
                         (22, "scheduler.pt does not load as plain weights (UnpicklingError)"),
                         (24, "trainer_state.json has no step count"), (26, "trainer_state.json has no step count"),
                         (28, "optimizer.pt holds NaN or infinite values in state/0/exp_avg_sq"),
                         (30, "model.safetensors is damaged: its SHA-256 differs"),
                         (32, f"{ft.DIGESTS_FILE} does not read")):
        assert f"checkpoint-{step} cannot be resumed from ({reason}" in caplog.text, step
    assert ft.find_checkpoint(tmp_path / "absent") is None

def test_a_protocol_cut_travels_with_the_export(setup, tmp_path):
    """A classifier fine-tuned on the first 5 s of each record (a protocol cut) was served on whole records by its
    pipeline, and told users of 5 s records to give 10 s (helper: 35 of 303 top classes changed, SBRAD
    sensitivity 0.27 for 0.70). The processor now carries the cut into the export and applies it."""
    import warnings

    from transformers import pipeline

    done = ft.main(ft_args(setup, tmp_path / "run", "--protocol-num-samples", "500", "--max-steps", "1",
                           "--batch-size", "8", "--bootstrap", "0"))
    export = Path(done["export_dir"])
    saved = json.loads((export / "processor_config.json").read_text())["feature_extractor"]
    assert saved["keep_samples"] == 500 and done["protocol_num_samples"] == 500
    assert "the first 5 s of each record (500 samples: the cut it was fine-tuned on)" in (export / "README.md").read_text()
    # the cut is recorded with the model too, in the export and in Trainer's checkpoints (classifier folders as
    # well): their processors fit their configs
    from dbeta.configuration_dbeta import DBetaConfig

    for folder in (export, *ft.checkpoint_folders(tmp_path / "run")):
        assert DBetaConfig.from_pretrained(folder).ecg_config.keep_samples == 500, folder
        ft.load_processor(str(folder)).feature_extractor.check_model_input(
            DBetaConfig.from_pretrained(folder).ecg_config, str(folder))
    pipe = pipeline("ecg-classification", model=str(export), trust_remote_code=True)
    record = (torch.randn(12, 1000) * 0.3).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the length it was trained on is no short record
        cut = pipe(record[:, :500], sampling_rate=100)
    assert pipe(record, sampling_rate=100) == cut
    with pytest.warns(UserWarning, match="3.00 s of signal, zero-padded .*give 5 s"):
        pipe(record[:, :300], sampling_rate=100)
    # a random window under the cut would be the first samples every time: refused before training
    with pytest.raises(SystemExit) as exit_:
        ft.main(ft_args(setup, tmp_path / "crop", "--protocol-num-samples", "500", "--max-steps", "1",
                        "--random-crop"))
    assert exit_.value.code == 2 and not (tmp_path / "crop" / "checkpoint-1").exists()


def test_damaged_base_weights_end_the_run_before_the_records_are_scanned(setup, tmp_path, monkeypatch, capsys):
    """The base model was loaded after every record had been read and conditioned (minutes on a large dataset),
    so truncated weights ended the run only then (helper): the model is now loaded first."""
    import shutil

    base = Path(shutil.copytree(setup["model"], tmp_path / "base"))
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    def scanned(*args, **kwargs):
        raise AssertionError("the records were scanned before the model was loaded")

    monkeypatch.setattr(ft, "check_records", scanned)
    args = ft_args(setup, tmp_path / "run")
    args[args.index("--model") + 1] = str(base)
    with pytest.raises(SystemExit) as stop:
        ft.main(args)
    assert stop.value.code == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_a_model_folder_with_a_damaged_tokenizer_is_exit_2_naming_the_file(setup, tmp_path, capsys):
    """A truncated tokenizer.json in the model folder ended as "no D-BETA processor ... found" and a
    FileNotFoundError traceback, exit 1 (helper: /tmp/hK/repro/damaged_tokenizer_reported_as_missing_processor.sh)."""
    import shutil

    model = shutil.copytree(setup["model"], tmp_path / "model")
    (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text()[:80])
    argv = [str(model) if a == str(setup["model"]) else a for a in ft_args(setup, tmp_path / "run", "--max-steps", "1")]
    with pytest.raises(SystemExit) as exit_:
        ft.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{model / 'tokenizer.json'}: not readable JSON" in err, err


def test_checkpoint_digests_wait_for_every_process(tmp_path, monkeypatch):
    """Trainer saves each process's RNG state with no barrier after; hashed at once by the first process, a whole
    checkpoint could later read as damaged and be skipped on resume (helper: /tmp/hR/repro/
    finetune_digests_race_with_other_ranks.py)."""
    from types import SimpleNamespace

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    calls = []

    def barrier():
        calls.append("barrier")
        (folder / "rng_state_1.pth").write_bytes(b"written by the other process")

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", barrier)
    args = SimpleNamespace(output_dir=str(tmp_path))
    ft.RecordCheckpointDigests().on_save(args, SimpleNamespace(is_world_process_zero=False, global_step=4), None)
    assert calls == ["barrier"] and not (folder / ft.DIGESTS_FILE).exists()
    ft.RecordCheckpointDigests().on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=4), None)
    assert "rng_state_1.pth" in json.loads((folder / ft.DIGESTS_FILE).read_text())
