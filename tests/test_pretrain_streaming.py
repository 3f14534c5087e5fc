"""Pretraining straight from a MIMIC-IV-ECG folder (data.mimic_root / --mimic-root): the split is prepare_mimic's,
a resumed run equals an uninterrupted one, an unreadable record is replaced deterministically, N3S tables are
checked against the training reports, and every bad folder is refused before training (exit 2).

A tiny synthetic MIMIC-IV-ECG v1.0 folder (train.synthetic) and the tiny model of tests/test_pretrain.py.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_pretrain import (assert_same_weights, assets, batches, one_thread, run_main,  # noqa: F401 (fixtures)
                                 sigterm_after_validation, t5_tokenizer, weights, word_hash_embed)
from train import synthetic as syn
from train.settings import ConfigError

SPLIT = ["--set", "data.split_seed=7", "--set", "data.val_fraction=0.3"]


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
    """40 synthetic studies; the .dat of one training-side record is truncated (it cannot be read)."""
    from train.pretrain_data import mimic_entries

    root = syn.write_mimic_layout(tmp_path_factory.mktemp("mimic") / "mimic", 40, seed=3)
    splits, _ = mimic_entries(root, 7, 0.3)
    broken = splits["train"][5]["path"]
    dat = (root / broken).with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:1000])
    return root


def stream_args(assets, root, out, *extra, steps: int = 8) -> list:
    return [
        "--output-dir", str(out), "--mimic-root", str(root), "--text-encoder", str(assets.t5),
        "--set", f"model.config={assets.tiny}", "--max-steps", str(steps), "--batch-size", "4", "--grad-accum", "2",
        "--no-bf16", "--lr", "3e-3", "--warmup-steps", "2", "--num-workers", "0", "--eval-every", "4",
        "--save-every", "4", "--set", "train.log_every=2", "--set", "train.log_with=[]",
        "--set", "data.max_val_samples=8", *SPLIT, *extra,
    ]


@pytest.fixture(scope="module")
def straight_stream(assets, mimic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight-stream")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("train.pretrain_data").addHandler(handler)
    try:
        assert run_main(stream_args(assets, mimic_root, out)) == 0
    finally:
        logging.getLogger("train.pretrain_data").removeHandler(handler)
    return out, [r.getMessage() for r in records]


def test_split_and_validation_rows_are_prepare_mimics(mimic_root, tmp_path):
    from datasets import load_from_disk

    from train.mimic import load_prepared_mimic
    from train.prepare_mimic import prepare_mimic
    from train.pretrain_data import mimic_splits, write_reports
    from train.settings import DataSettings

    prepare_mimic(mimic_root, tmp_path / "prepared", num_proc=1, val_fraction=0.3, seed=7, chunk_size=16,
                  progress=False)
    prepared = load_prepared_mimic(tmp_path / "prepared")
    records, val_rows, _ = mimic_splits(DataSettings(mimic_root=str(mimic_root), split_seed=7, val_fraction=0.3,
                                                  max_val_samples=100))
    # The same subject-level split: the validation rows are the prepared validation split, row for row.
    got, want = val_rows.with_format("numpy")[:], prepared["validation"].with_format("numpy")[:]
    assert len(want["study_id"]) > 0 and got["study_id"].tolist() == want["study_id"].tolist()
    for column in ("signal", "adc_gain", "baseline", "report"):
        np.testing.assert_array_equal(got[column], want[column], err_msg=column)
    # The training side holds the prepared train rows plus the record prepare_mimic drops at read time.
    assert set(prepared["train"]["study_id"]) < set(records.entries["study_id"])  # strictly: the broken record
    assert len(records) == len(prepared["train"]) + 1
    assert not set(records.entries["subject_id"]) & set(prepared["validation"]["subject_id"])
    # The reports written for build_n3s carry the same split.
    reports = load_from_disk(str(write_reports(mimic_root, tmp_path / "reports", 7, 0.3)))
    assert list(reports["train"]["report"]) == records.reports()
    assert list(reports["validation"]["study_id"]) == want["study_id"].tolist()
    # Written again with another split, stopped while saving: the earlier folder stays whole (was written in place:
    # the new train split beside the old validation split, subjects on both sides, loaded without a word).
    import datasets

    def stopped(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "dataset_dict.json").write_text("{")
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.DatasetDict, "save_to_disk", stopped)
        with pytest.raises(KeyboardInterrupt):
            write_reports(mimic_root, tmp_path / "reports", 7, 0.6)
    again = load_from_disk(str(tmp_path / "reports"))
    assert list(again["validation"]["study_id"]) == want["study_id"].tolist()
    assert list(load_from_disk(str(write_reports(mimic_root, tmp_path / "reports", 7, 0.6)))["train"]["report"]) \
        != records.reports()  # a finished rewrite replaces it
    # an N3S table built at its default place (REPORTS/n3s) leaves its writers' lock beside it: once the table is
    # deleted, the reports folder is still only an earlier reports folder (the lock refused it, helper)
    (tmp_path / "reports" / ".n3s.lock").touch()
    write_reports(mimic_root, tmp_path / "reports", 7, 0.6)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds something other than an earlier reports folder \(config.json\)"):
        write_reports(mimic_root, tmp_path / "model", 7, 0.3)
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
    # training without validation (--val-fraction 0): the empty split was saved with no shard, and build_n3s then
    # died inside load_from_disk (IndexError); it is left out, as a missing split means no validation
    alone = load_from_disk(str(write_reports(mimic_root, tmp_path / "no_val", 7, 0.0)))
    assert list(alone) == ["train"] and len(alone["train"]) == len(records) + len(want["study_id"])
    (tmp_path / "reports" / "n3s").mkdir()  # build_n3s's default place: a table hours in the making
    with pytest.raises(ConfigError, match=r"\(n3s\)"):
        write_reports(mimic_root, tmp_path / "reports", 7, 0.3)
    assert (tmp_path / "reports" / "n3s").is_dir()


def test_streamed_run_validates_and_replaces_the_unreadable_record(straight_stream, mimic_root):
    from train.pretrain_data import mimic_entries

    out, messages = straight_stream
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 8
    assert metrics["validation"]["samples"] == 8
    train = mimic_entries(mimic_root, 7, 0.3)[0]["train"]
    broken = train[5]["path"]
    assert any(broken in m and "another training record takes its place" in m for m in messages), messages
    used = [i for b in batches(out) for i in b["indices"]]
    assert len(used) == 64 and 5 not in used  # 64 rows > 28 records: the broken one was drawn and replaced


def test_streamed_resume_reproduces_an_uninterrupted_run(assets, mimic_root, straight_stream, tmp_path):
    straight, _ = straight_stream
    out = tmp_path / "interrupted"
    with sigterm_after_validation(call=1):  # stop after step 4
        assert run_main(stream_args(assets, mimic_root, out)) == 3
    # Resume with DataLoader workers: the batches (replacements included) must not depend on them.
    assert run_main(stream_args(assets, mimic_root, out, "--resume", "--num-workers", "2")) == 0
    assert batches(out) == batches(straight)
    assert_same_weights(weights(out / "model"), weights(straight / "model"))


def test_n3s_table_must_cover_the_training_reports(assets, mimic_root, tmp_path, capsys):
    from train.build_n3s import read_reports
    from train.n3s import build_n3s_table
    from train.pretrain_data import main as write_reports_main

    # A table built from other data: refused before training, naming what is missing.
    out = tmp_path / "foreign"
    assert run_main(stream_args(assets, mimic_root, out, "--n3s", str(assets.n3s), steps=2)) == 2
    err = capsys.readouterr().err
    assert "has no row for" in err and "distinct training reports" in err
    assert not (out / "checkpoints").exists()
    # The table built from the folder's reports (python -m train.pretrain_data --reports) trains.
    assert write_reports_main(["--mimic-root", str(mimic_root), "--reports", str(tmp_path / "reports"),
                               "--split-seed", "7", "--val-fraction", "0.3"]) == 0
    train_reports, query, _ = read_reports(tmp_path / "reports")
    table = build_n3s_table(train_reports, word_hash_embed, k=4, index="flat", progress=False,
                            query_only_reports=query).save(tmp_path / "n3s")
    out = tmp_path / "own"
    assert run_main(stream_args(assets, mimic_root, out, "--n3s", str(table), "--eval-every", "0",
                                "--save-every", "0", steps=2)) == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"


def _without(root: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("files") if name == "files" else None)
    if name != "files":
        (copy / name).unlink()
    return copy


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder"),
    ("record_list.csv", "has no record_list.csv"),
    ("machine_measurements.csv", "has no machine_measurements.csv"),
    ("files", "none of the first 8 training records can be read"),
    ("bad columns", "no column(s) ['subject_id', 'study_id', 'path']"),
    ("all validation", "no training record"),
    ("both", "not both"),
])
def test_bad_mimic_roots_are_refused_before_training(assets, mimic_root, tmp_path, capsys, case, message):
    root, extra = mimic_root, []
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "bad columns":
        root = _without(mimic_root, tmp_path, "files")
        shutil.copytree(mimic_root / "files", root / "files")
        (root / "record_list.csv").write_text("a,b\n1,2\n")
    elif case == "all validation":
        extra = ["--set", "data.val_fraction=1"]
    elif case == "both":
        extra = ["--dataset", str(assets.data)]
    elif case in ("record_list.csv", "machine_measurements.csv", "files"):
        root = _without(mimic_root, tmp_path, case)
    out = tmp_path / "out"
    assert run_main(stream_args(assets, root, out, *extra, steps=2)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (out / "checkpoints").exists()
