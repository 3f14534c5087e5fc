"""The demo's reuse rule (the demo itself runs under `make demo`, not in the test suite)."""

import json

import pytest

from demo.run import MEASUREMENT_CHOICES, check_settings


def test_reuse_refuses_outputs_built_with_other_settings(tmp_path):
    done = tmp_path / "out" / "done"
    settings = {"n_pairs": 4000, "n_downstream": 3000, "steps": 2000}
    check_settings(done, settings)  # first run: records them
    assert json.loads((done / "settings.json").read_text()) == settings
    check_settings(done, dict(settings))  # same settings: reuse is fine
    with pytest.raises(SystemExit) as err:
        check_settings(done, {**settings, "n_downstream": 1500})
    message = str(err.value)
    assert "n_downstream 3000 -> 1500" in message and "--fresh" in message and str(tmp_path / "out") in message
    assert json.loads((done / "settings.json").read_text()) == settings  # untouched


def test_reuse_refuses_outputs_without_recorded_settings(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "pretrain").write_text("{}")
    with pytest.raises(SystemExit, match="--fresh"):
        check_settings(done, {"steps": 2000})
    assert not (done / "settings.json").exists()


def test_the_demo_offers_the_generators_measurement_choices():
    from train.synthetic.measurements import MEASUREMENT_DETAILS

    assert MEASUREMENT_CHOICES == MEASUREMENT_DETAILS
