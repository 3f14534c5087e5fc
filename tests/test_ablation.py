"""demo.ablation: the objective mixes it trains and how it tabulates them (the runs themselves are the demo's
pretraining and evaluations, tested elsewhere)."""

import pytest

from demo import ablation


def _setting(command, key):
    values = [command[i + 1] for i, arg in enumerate(command) if arg == "--set" and command[i + 1].startswith(key)]
    return values[-1].split("=", 1)[1] if values else None


@pytest.mark.parametrize("variant", list(ablation.VARIANTS))
def test_each_variant_trains_its_objectives_at_the_papers_weight(variant, tmp_path):
    command = ablation.pretrain_command(tmp_path, variant, 7, 30)
    (mem, mlm, etm, ets), negatives = ablation.VARIANTS[variant]
    for name, weight in (("mem", mem), ("mlm", mlm), ("etm", etm), ("ets", ets)):
        assert _setting(command, f"model.overrides.{name}_weight=") == str(weight)
    assert ets == 1 and {mem, mlm, etm} <= {0, 1}
    assert ("--n3s" in command) == (negatives == "n3s")
    # without ETM nothing learns from mismatched pairs, so no row loses its positive to a negative
    assert (_setting(command, "collator.p_neg=") == "0") == (etm == 0)
    assert command[command.index("--seed") + 1] == "7" and command[command.index("--max-steps") + 1] == "30"
    assert str(tmp_path / "ablation" / ablation.run_name(variant, 7)) in command


def test_run_names_are_distinct_folder_names():
    names = {ablation.run_name(v, s) for v in ablation.VARIANTS for s in (42, 43)}
    assert len(names) == 2 * len(ablation.VARIANTS)
    assert all(n.replace("-", "").isalnum() for n in names)


def test_table_gives_the_mean_of_the_seeds_and_each_seed():
    def row(variant, seed, x):
        return {"variant": variant, "seed": seed,
                **{k: {"auroc": x, "auprc": x / 2} for k in ("zero_shot_rhythm", "zero_shot_sub", "probe_sub_10")},
                "validation": {"R@1": x / 4, "mem_loss": 0.9 * x, "mem_zero": x}}

    text = ablation.table([row("ETS alone", 42, 0.8), row("ETS alone", 43, 0.9), row("ETS + MEM", 42, 0.6)])
    lines = text.strip().splitlines()
    assert len(lines) == 4  # header, rule, the two variants that ran
    assert lines[2].startswith("| ETS alone | 85.0 (80.0, 90.0) | 42.5 (40.0, 45.0) |")
    assert lines[2].endswith("| (MEM off) |")
    assert lines[3].endswith("| 15.0 (15.0) | 0.900 |")


def test_missing_demo_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "run `make demo`" in capsys.readouterr().err


@pytest.mark.parametrize("seed, message", [("x42", "SEED must be a whole number"), ("\u00b2", "SEED must be a whole"),
                                           ("-1", "SEED must be a whole"), ("42", "that run has not finished")])
def test_evaluating_a_run_that_is_not_there_is_a_clear_error(tmp_path, capsys, seed, message):
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(["--out", str(tmp_path), "--evaluate", "ETS alone", seed])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "not finished" in err:  # the command it suggests can be pasted into a shell as it is
        assert "--only 'ETS alone' --seeds 42" in err


def test_negative_seeds_are_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(["--out", str(tmp_path), "--seeds", "42", "-1"])
    assert exit_info.value.code == 2
    assert "must be a whole number >= 0, got '-1'" in capsys.readouterr().err
