"""Pretraining faults found by fault injection (docs/faults.md): each test fails without its fix."""

from __future__ import annotations

import json
import shutil

from tests.test_pretrain import (assets, one_thread, run_main, straight_run, t5_tokenizer,  # noqa: F401 - fixtures
                                 train_args)


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
