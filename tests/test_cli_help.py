"""Every command the README names imports and prints its help (a broken import or a help string that argparse
cannot format shows here, not in a user's terminal)."""

import importlib

import pytest

COMMANDS = [
    "train.pretrain", "train.pretrain_data", "train.finetune", "train.prepare_mimic", "train.build_n3s", "train.export_onnx",
    "train.convert_original_checkpoint", "train.push_to_hub", "train.export", "train.synthetic.cli", "train.synthetic.independent",
    "eval.zero_shot", "eval.linear_probe", "eval.retrieval", "eval.windows", "eval.explain", "eval.int8_quality",
    "demo.run",
]


@pytest.mark.parametrize("name", COMMANDS)
def test_command_runs_as_a_module(name):
    """`python -m NAME` calls main(): without the guard the module is imported and exits 0 having done nothing
    (train.synthetic.cli did, while the demo prints it as the command it ran)."""
    import ast
    from pathlib import Path

    source = Path(importlib.util.find_spec(name).origin).read_text()
    guards = [node for node in ast.parse(source).body if isinstance(node, ast.If)
              and ast.unparse(node.test) in ("__name__ == '__main__'", "'__main__' == __name__")]
    assert guards and "main(" in ast.unparse(guards[0]), f"{name} has no `if __name__ == '__main__':` calling main"


@pytest.mark.parametrize("name", COMMANDS)
def test_command_prints_its_help(name, capsys):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_no_command_is_imported_by_its_package():
    """A package that imports the module `python -m` is about to run makes runpy warn (RuntimeWarning: found in
    sys.modules ... unpredictable behaviour) on every run: train.synthetic did, with its cli."""
    import subprocess
    import sys

    check = ("import importlib, sys\n"
             f"for name in {COMMANDS!r}:\n"
             "    importlib.import_module(name.rpartition('.')[0])\n"
             "    assert name not in sys.modules, name + ' is imported by its package'\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
