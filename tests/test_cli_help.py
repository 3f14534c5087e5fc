"""Every command the README names imports and prints its help (a broken import or a help string that argparse
cannot format shows here, not in a user's terminal)."""

import importlib

import pytest

COMMANDS = [
    "train.pretrain", "train.pretrain_data", "train.finetune", "train.prepare_mimic", "train.build_n3s", "train.export_onnx",
    "train.convert_original_checkpoint", "train.push_to_hub", "train.synthetic.cli", "train.synthetic.independent",
    "eval.zero_shot", "eval.linear_probe", "eval.retrieval", "eval.windows", "eval.explain", "eval.int8_quality",
    "demo.run",
]


@pytest.mark.parametrize("name", COMMANDS)
def test_command_prints_its_help(name, capsys):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
