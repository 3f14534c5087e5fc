"""The benchmarks run: each one's smallest setting end to end (their figures are printed, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from train.export import ROOT


def test_zeroshot_speed_runs_on_the_small_model(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.zeroshot_speed", "--n", "2", "--configs", "small",
                           "--batch-sizes", "1", "--labels", "3", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(out.read_text())
    assert result["label_text_features_s"] > 0 and [r["batch_size"] for r in result["runs"]] == [1]
    assert result["runs"][0]["records_per_s"] > 0


def test_window_speed_runs_on_the_small_model(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.window_speed", "--hours", "0.02", "--configs", "small"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])  # the summary after the per-size line
    assert report["results"]["small"]["windows"] == 8  # 72 s of record in 10 s windows, the last one partial
