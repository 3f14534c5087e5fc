"""Linear probe (eval.linear_probe): the head on separable features, subsets, and the CLI end to end on a tiny
exported model and a CPSC2018-layout WFDB fixture (feature cache hits, invalidation, reproducibility, JSON).

The helpers `write_cpsc_fixture` and `export_tiny_encoder` are shared with tests/test_finetune.py."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from eval import linear_probe as lp
from dbeta.modeling_dbeta import DBetaForPreTraining
from dbeta.processing_dbeta import STANDARD_LEADS
from tests.tiny import tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import build_processor, export_model

# CPSC2018 SNOMED codes as in the CinC 2020 headers (eval.label_sets.CPSC2018_SNOMED).
DX = {"NORM": "426783006", "AFIB": "164889003", "CLBBB": "164909002"}
FIXTURE_RATE = 100  # Hz; the tiny processor runs at 100 Hz / 1000 samples to keep the tests fast


# ------------------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------------------


def fixture_signal(wide: bool, fast: bool, rng: np.random.Generator, fs: int = FIXTURE_RATE,
                   seconds: float = 10.0) -> np.ndarray:
    """A [12, samples] mV signal: Gaussian beats, wide (120 ms) or narrow (20 ms), fast (2.4-3 /s) or slow."""
    t = np.arange(int(fs * seconds)) / fs
    rate = rng.uniform(2.4, 3.0) if fast else rng.uniform(0.8, 1.2)
    width = 0.12 if wide else 0.02
    phase = (t * rate + rng.uniform()) % 1.0
    beat = np.exp(-((phase - 0.5) ** 2) / (2 * width**2))
    gains = rng.uniform(0.7, 1.3, size=(12, 1))
    return (gains * beat + 0.03 * rng.standard_normal((12, t.size))).astype(np.float32)


def write_wfdb(folder: Path, name: str, signal_mv: np.ndarray, fs: int, lead_names, comments=()) -> Path:
    """A format-16 WFDB record (gain 1000 adu/mV), written directly (wfdb.wrsamp is ~100x slower)."""
    adc = np.round(signal_mv.T * 1000.0).astype("<i2")  # [samples, leads], interleaved
    adc.tofile(folder / f"{name}.dat")
    lines = [f"{name} {adc.shape[1]} {fs} {adc.shape[0]}"]
    for j, lead in enumerate(lead_names):
        checksum = int(adc[:, j].astype(np.int64).sum()) % 65536
        checksum -= 65536 if checksum >= 32768 else 0
        lines.append(f"{name}.dat 16 1000/mV 16 0 {adc[0, j]} {checksum} 0 {lead}")
    lines += [f"# {c}" for c in comments]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.hea"


def write_cpsc_fixture(root: Path, n: int = 120, seed: int = 0) -> Path:
    """n records in the CinC-2020 CPSC2018 layout (A0001.hea/.dat with '# Dx:'), three learnable classes:
    CLBBB = wide beats, AFIB = fast beats, NORM = neither (a record can be CLBBB and AFIB at once).
    Record A0000 carries only an out-of-set code and is dropped by the loader."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        wide, fast = bool(i % 2), bool((i // 2) % 2)
        codes = ([DX["CLBBB"]] if wide else []) + ([DX["AFIB"]] if fast else []) or [DX["NORM"]]
        write_wfdb(root, f"A{i + 1:04d}", fixture_signal(wide, fast, rng), FIXTURE_RATE, STANDARD_LEADS,
                   ["Age: 60", "Sex: Female", "Dx: " + ",".join(codes)])
    write_wfdb(root, "A0000", fixture_signal(False, False, rng), FIXTURE_RATE, STANDARD_LEADS, ["Dx: 10370003"])
    return root


def export_tiny_encoder(out: Path, tokenizer, fixture_root: Path = None, seed: int = 0,
                        fit_steps: int = 120) -> Path:
    """Export a tiny DBetaForPreTraining (processor at 100 Hz, 1000 samples) as a stand-in pretrained encoder.

    Its CLS embedding is zeroed (the random uniform one swamps the tokens in a 2-layer untrained model) and,
    with `fixture_root`, its ECG projection + pooler are fitted for `fit_steps` full-batch Adam steps to the
    fixture's train labels (with a penalty on the pooler's pre-tanh values, so the features stay unsaturated),
    so its features carry the classes the way a pretrained encoder's would."""
    from eval.datasets import load_downstream

    torch.manual_seed(seed)
    model = DBetaForPreTraining(tiny_config(tiny_t5_text_config(len(tokenizer)))).eval()
    processor = build_processor(tokenizer, sampling_rate=FIXTURE_RATE, num_samples=10 * FIXTURE_RATE)
    with torch.no_grad():
        model.ecg_model.class_embedding.zero_()
    if fixture_root is not None and fit_steps:
        from eval.features import ProcessedRecords

        train = load_downstream("cpsc2018", fixture_root, split="train")
        records = ProcessedRecords(train, processor.feature_extractor)
        batch = {"ecg_values": torch.stack([records[i]["ecg_values"] for i in range(len(records))]),
                 "labels": torch.from_numpy(train.labels_matrix())}
        with torch.no_grad():
            cls = model.ecg_model(batch["ecg_values"]).last_hidden_state[:, :1]
        head = torch.nn.Linear(model.config.hidden_size, batch["labels"].shape[1])
        params = [*model.ecg_projection.parameters(), *model.ecg_pooler.parameters(), *head.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        for _ in range(fit_steps):
            pre_tanh = model.ecg_pooler.dense(model.ecg_projection(cls)[:, 0])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(torch.tanh(pre_tanh)), batch["labels"])
            loss = loss + 0.1 * pre_tanh.pow(2).mean()  # keeps the tanh out of saturation (features ~ +-0.4)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
    return export_model(model, out, processor=processor, card_facts={"run": "linear-probe test"})


# ------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: extra threads only spin (7 s vs 2 s for one probe run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("probe")
    data = write_cpsc_fixture(tmp / "cpsc")
    model = export_tiny_encoder(tmp / "model", train_t5_tokenizer(), fixture_root=data)
    return {"tmp": tmp, "data": data, "model": model, "cache": tmp / "cache"}


def probe_args(setup, output, *extra, model=None, fractions=("0.03", "1.0"), seeds=("42", "7"), epochs="15"):
    return ["--model", str(model or setup["model"]), "--dataset", "cpsc2018", "--data-root", str(setup["data"]),
            "--output", str(output), "--cache-dir", str(setup["cache"]), "--fractions", *fractions,
            "--seeds", *seeds, "--epochs", epochs, "--num-workers", "0", "--bootstrap", "200", *extra]


def spy_on_extraction(mp: pytest.MonkeyPatch) -> list:
    """Count the splits the model encodes (cache misses): a list that grows by one per extract_features call."""
    calls, real = [], lp.extract_features
    mp.setattr(lp, "extract_features", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.fixture
def extractions(monkeypatch):
    return spy_on_extraction(monkeypatch)


@pytest.fixture(scope="module")
def first_run(setup):
    out = setup["tmp"] / "out" / "probe.json"
    with pytest.MonkeyPatch.context() as mp:
        calls = spy_on_extraction(mp)
        result = lp.main(probe_args(setup, out))
    return {"result": result, "out": out, "extractions": len(calls),
            "cache_files": {p: p.stat().st_mtime_ns for p in setup["cache"].glob("*.safetensors")}}


# ------------------------------------------------------------------------------------------------------------
# Units
# ------------------------------------------------------------------------------------------------------------


def test_head_separates_an_easy_feature_set():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 4)) < 0.3).astype(np.float32)
    x = (y @ rng.normal(size=(4, 24)) * 2.0 + rng.normal(size=(400, 24))).astype(np.float32)
    h = lp.train_linear_head(x[:250], y[:250], x[250:320], y[250:320], x[320:], y[320:], epochs=30, seed=0)
    assert len(h["val_auc"]) == 30 and h["val_auc"][-1] > 0.95 and h["test_auc"][-1] > 0.95
    assert h["train_loss"][-1] < h["train_loss"][0]
    best = int(np.nanargmax(h["val_auc"]))
    assert h["best_epoch"] == best and h["best_test_scores"].shape == (80, 4)
    # shuffled labels: nothing to learn, the test AUC stays near chance
    h = lp.train_linear_head(x[:250], rng.permutation(y[:250]), x[250:320], y[250:320], x[320:], y[320:],
                             epochs=30, seed=0)
    assert abs(h["test_auc"][-1] - 0.5) < 0.2


def test_head_agrees_with_logistic_regression_on_uncentred_features():
    """Outside check: sklearn's LogisticRegression on the same features. Features with a common offset (as pooled
    encoder outputs have), one class told apart by a larger norm (LVH's higher voltages did this in the demo):
    the protocol's Adam head on raw features ranked that class backwards (test AUC 0.0, LVH 14.6 in the demo);
    standardised with the training subset's statistics it agrees with logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)

    def draw(n):
        y = np.stack([rng.random(n) < 0.12, rng.random(n) < 0.5], axis=1).astype(np.float32)
        x = rng.normal(0.3, 0.05, size=(n, 64)) * np.where(y[:, :1] == 1, 1.5, 1.0)
        return x.astype(np.float32), y

    (xt, yt), (xv, yv), (xs, ys) = draw(100), draw(200), draw(200)
    reference = roc_auc_score(ys[:, 0], LogisticRegression(max_iter=5000).fit(xt, yt[:, 0]).decision_function(xs))
    h = lp.train_linear_head(xt, yt, xv, yv, xs, ys, epochs=100, seed=42)
    assert reference > 0.99 and roc_auc_score(ys[:, 0], h["best_test_scores"][:, 0]) > 0.99


def test_a_feature_constant_over_the_training_subset_is_left_out():
    """A feature with no spread in the subset got std 1e-6: val and test moved a millionfold along an untrained
    weight, and that feature's values decided the ranking."""
    rng = np.random.default_rng(2)
    y = (rng.random((40, 1)) < 0.5).astype(np.float32)
    x = np.concatenate([y + rng.normal(0, 0.5, (40, 1)), rng.normal(size=(40, 2)), np.zeros((40, 1))], axis=1)
    x = x.astype(np.float32)
    noisy = x.copy()
    noisy[:, 3] = rng.normal(size=40)  # the last feature varies outside the training subset
    a = lp.train_linear_head(x, y, x, y, x, y, epochs=5, seed=3)
    b = lp.train_linear_head(x, y, noisy, y, noisy, y, epochs=5, seed=3)
    assert np.allclose(a["best_test_scores"], b["best_test_scores"]) and a["test_auc"] == b["test_auc"]


def test_every_probe_run_refuses_a_one_record_subset():
    """eval.lead_subsets --fraction 0.01 trained on one record and wrote AUC 0.5 for every subset as a result."""
    rng = np.random.default_rng(0)
    feats = {s: rng.normal(size=(n, 4)).astype(np.float32) for s, n in (("train", 40), ("val", 10), ("test", 10))}
    labels = {s: (rng.random((len(f), 2)) < 0.5).astype(np.float32) for s, f in feats.items()}
    with pytest.raises(ValueError, match="fraction 0.01 of 40 training records leaves 1: a linear head needs"):
        lp.probe_run(feats, labels, ["A", "B"], 0.01, 42, 2, 16, 1e-3, 1e-4, bootstrap=0)


def test_head_is_reproducible_and_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 8)).astype(np.float32), (rng.random((60, 3)) < 0.5).astype(np.float32)
    a = lp.train_linear_head(x, y, x, y, x, y, epochs=3, seed=5)
    b = lp.train_linear_head(x, y, x, y, x, y, epochs=3, seed=5)
    c = lp.train_linear_head(x, y, x, y, x, y, epochs=3, seed=6)
    assert a["train_loss"] == b["train_loss"] and a["test_auc"] == b["test_auc"]
    assert a["train_loss"] != c["train_loss"]


def test_train_subsets_follow_the_protocol():
    from sklearn.model_selection import train_test_split

    n = 1234
    for fraction in (0.01, 0.1, 0.5):
        idx = lp.train_subset_indices(n, fraction, 42)
        expected, _ = train_test_split(np.arange(n), train_size=math.floor(fraction * n), random_state=42)
        assert len(idx) == math.floor(fraction * n) and (idx == expected).all()
        assert (lp.train_subset_indices(n, fraction, 42) == idx).all()
        assert set(lp.train_subset_indices(n, fraction, 43)) != set(idx)
    assert (lp.train_subset_indices(n, 1.0, 42) == np.arange(n)).all()
    assert len(lp.train_subset_indices(50, 0.01, 42)) == 1  # floor(0.5) -> at least one record
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fractions"):
            lp.train_subset_indices(n, bad, 42)


def test_missing_encoder_weights_are_an_error(setup, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(setup["model"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("ecg_model.layers.")},
              str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks[\s\S]*ecg_model\.layers\."):  # strict loading names the keys
        lp.load_encoder(str(broken))


# ------------------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------------------


def test_probe_results_and_json_schema(first_run):
    result, out = first_run["result"], first_run["out"]
    saved = json.loads(out.read_text())
    assert saved["schema"] == "dbeta-linear-probe/2" == result["schema"]
    assert saved["class_names"] == ["AFIB", "VPC", "NORM", "1AVB", "CRBBB", "STE", "PAC", "CLBBB", "STD"]
    assert saved["feature_dim"] == 32 and saved["random_init"] is False
    assert saved["protocol"]["epochs"] == 15 and saved["protocol"]["lr"] == 1e-3
    assert saved["protocol"]["batch_size"] == 16 and saved["protocol"]["weight_decay"] == 1e-4
    assert saved["protocol_num_samples"] == 2500 and saved["processor"]["sampling_rate"] == 100
    n = {s: saved["splits"][s]["n"] for s in ("train", "val", "test")}
    assert n == {"train": 86, "val": 10, "test": 24}  # 120 labelled records: 20% test, then 10% val
    assert set(saved["splits"]["test"]["unscorable_classes"]) == {"VPC", "1AVB", "CRBBB", "STE", "PAC", "STD"}
    assert len(saved["runs"]) == 4 and [r["fraction"] for r in saved["summary"]] == [0.03, 1.0]
    for run in saved["runs"]:
        h = run["history"]
        assert len(h["val_auc"]) == len(h["test_auc"]) == len(h["train_loss"]) == 15
        best = run["best_epoch"]
        assert h["val_auc"][best - 1] == max(v for v in h["val_auc"] if v is not None) == run["val_auc"]
        assert run["test_auc"] == pytest.approx(h["test_auc"][best - 1], abs=1e-12)
        assert run["comparison_only_max_test_auc"] == max(h["test_auc"]) >= run["test_auc"]
        assert set(run["per_class_test_auc"]) == set(saved["class_names"])
        assert run["per_class_test_auc"]["VPC"] is None  # no test positives: out of the macro AUC
        ci = run["test_auc_ci"]
        assert ci["n_resamples"] == 200 and ci["low"] <= run["test_auc"] <= ci["high"]
        assert run["test_auprc_ci"]["low"] <= run["test_auprc"] <= run["test_auprc_ci"]["high"]
        scored = [v for v in run["per_class_test_auprc"].values() if v is not None]
        assert run["test_auprc"] == pytest.approx(np.mean(scored)) and run["per_class_test_auprc"]["VPC"] is None
    small = [r for r in saved["runs"] if r["fraction"] == 0.03]
    assert all(r["n_train"] == 2 for r in small)  # floor(0.03 * 86) = 2 records
    # two records cannot hold NORM and two abnormal classes: some scored class has no training positive
    assert all({"NORM", "AFIB", "CLBBB"} & set(r["classes_without_train_positives"]) for r in small)
    assert {"NORM", "AFIB", "CLBBB"} & set(saved["summary"][0]["classes_without_train_positives"])
    full = saved["summary"][1]
    assert full["test_auc_mean"] > 0.9, full  # the classes are easy for this encoder
    assert full["test_auc_std"] is not None and full["n_train"] == [86]
    assert full["test_auprc_mean"] is not None and set(full["per_class_test_auprc"]) == set(saved["class_names"])
    md = out.with_suffix(".md").read_text()
    assert "test AUPRC (val-selected)" in md and "## Per-class test AUPRC" in md
    assert "comparison only" in md and "| 1 | 86 | 2 |" in md and "the train split has no positive for VPC" in md
    assert "fraction 0.03: the subset of at least one seed has no positive for" in md
    for suffix in (".png", ".roc-0.03.png", ".roc-1.png"):
        path = out.with_name(out.stem + suffix)
        assert path.is_file() and path.stat().st_size > 1000


def test_features_are_cached_and_results_reproducible(setup, first_run, extractions):
    assert first_run["extractions"] == 3 and len(first_run["cache_files"]) == 3
    assert not any(first_run["result"]["splits"][s]["cache"]["hit"] for s in ("train", "val", "test"))
    before = len(extractions)
    again = lp.main(probe_args(setup, setup["tmp"] / "out2" / "probe.json", "--no-plot"))
    assert len(extractions) == before  # nothing re-extracted
    assert all(again["splits"][s]["cache"]["hit"] for s in ("train", "val", "test"))
    assert {p: p.stat().st_mtime_ns for p in setup["cache"].glob("*.safetensors")} == first_run["cache_files"]
    for a, b in zip(first_run["result"]["runs"], again["runs"]):
        assert a["history"] == b["history"] and a["test_auc"] == b["test_auc"] and a["best_epoch"] == b["best_epoch"]


def test_cache_is_not_reused_by_another_model_or_processor_setting(setup, first_run, tmp_path, extractions):
    from safetensors.torch import load_file, save_file

    from eval.datasets import load_downstream

    val = load_downstream("cpsc2018", setup["data"], split="val")
    fe = lp.load_feature_extractor(str(setup["model"]))
    encoder = lp.load_encoder(str(setup["model"]))
    fingerprint = lp.weights_fingerprint(encoder)
    assert fingerprint == first_run["result"]["model_fingerprint"]
    cache = setup["cache"]

    def features(enc, fe, fp, protocol=2500):
        return lp.cached_features(enc, fe, val, "val", cache, fp, protocol_num_samples=protocol)

    before = len(extractions)
    cached, info = features(encoder, fe, fingerprint)
    assert info["hit"] and len(extractions) == before  # what the CLI wrote is found again

    # the same folder with changed weights (a re-export in place) must not hit the old features
    changed = tmp_path / "model"
    shutil.copytree(setup["model"], changed)
    weights = load_file(str(changed / "model.safetensors"))
    weights["ecg_pooler.dense.bias"] = weights["ecg_pooler.dense.bias"] + 0.5
    save_file(weights, str(changed / "model.safetensors"), metadata={"format": "pt"})
    other = lp.load_encoder(str(changed))
    other_fp = lp.weights_fingerprint(other)
    assert other_fp != fingerprint
    other_features, info = features(other, fe, other_fp)
    assert not info["hit"] and len(extractions) == before + 1
    assert not np.allclose(other_features, cached)

    # another processor setting or protocol length is another key too
    for fe_other, protocol in ((lp.DBetaFeatureExtractor(sampling_rate=100, num_samples=1000,
                                                         normalization="minmax"), 2500), (fe, 300)):
        _, info = features(encoder, fe_other, fingerprint, protocol)
        assert not info["hit"]
    assert len(extractions) == before + 3

    # a damaged cache file is recomputed, not trusted
    path = Path(info["path"])
    path.write_bytes(b"not safetensors")
    again, info = features(encoder, fe, fingerprint, 300)
    assert not info["hit"] and again.shape == (len(val), 32) and len(extractions) == before + 4

    # a record's signal file rewritten in place (the header untouched): the CPSC loader names the record by its
    # .hea, and only that file was fingerprinted, so the old features came back. The folder's name holds " (", as
    # a copy's does: paths were cut there (meant for CODE-test's "FILE (tracings[i])"), so no file was found
    data = tmp_path / "data (copy)"
    shutil.copytree(setup["data"], data)
    moved = load_downstream("cpsc2018", data, split="val")
    _, info = lp.cached_features(encoder, fe, moved, "val", cache, fingerprint)
    assert not info["hit"]
    signal = Path(str(moved._source(0))).with_suffix(".dat")
    assert signal.is_file()
    signal.write_bytes(signal.read_bytes())  # same bytes, a new mtime: the record may have changed
    os.utime(signal, ns=(signal.stat().st_atime_ns, signal.stat().st_mtime_ns + 10**9))
    _, info = lp.cached_features(encoder, fe, moved, "val", cache, fingerprint)
    assert not info["hit"]


def test_random_init_baseline(setup, first_run, extractions):
    before = len(extractions)
    out = setup["tmp"] / "out5" / "random.json"
    base = lp.main(probe_args(setup, out, "--random-init", "--no-plot", fractions=("1.0",), seeds=("42",)))
    assert len(extractions) == before + 3  # other weights: no cache reuse
    assert base["random_init"] is True and base["init_seed"] == 42
    assert base["model_fingerprint"] != first_run["result"]["model_fingerprint"]
    trained = first_run["result"]["summary"][1]["test_auc_mean"]
    assert base["summary"][0]["test_auc_mean"] < trained - 0.1
    assert "random-init baseline" in out.with_suffix(".md").read_text()
    # the same seed builds the same random encoder
    a = lp.load_encoder(str(setup["model"]), random_init=True, init_seed=3)
    b = lp.load_encoder(str(setup["model"]), random_init=True, init_seed=3)
    assert lp.weights_fingerprint(a) == lp.weights_fingerprint(b)


def test_probe_is_a_function_with_keyword_arguments(setup, first_run, extractions):
    result = lp.run_linear_probe(model=str(setup["model"]), dataset="cpsc2018", data_root=setup["data"],
                                 fractions=[1.0], seeds=[42], epochs=3, cache_dir=setup["cache"], num_workers=0,
                                 bootstrap=0)
    assert not extractions and "outputs" not in result  # the CLI's cached features; nothing written
    assert [r["fraction"] for r in result["summary"]] == [1.0] and result["runs"][0]["test_auprc"] is not None
    assert result["protocol"]["epochs"] == 3
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        lp.run_linear_probe(model=str(setup["model"]), dataset="cpsc2018", data_root=setup["data"], fractions=[0])


def test_cli_refuses_bad_fractions_and_wrong_folders(setup, tmp_path, capsys):
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            lp.main(probe_args(setup, tmp_path / "x.json", fractions=(bad,)))
        assert exit_info.value.code == 2 and "must be in (0, 1]" in capsys.readouterr().err
    # a one-record subset: every feature's spread is 0, and the AUC came out the same whatever its labels
    with pytest.raises(SystemExit) as exit_info:
        lp.main(probe_args(setup, tmp_path / "x.json", fractions=("0.02",)))
    assert exit_info.value.code == 2
    assert "fraction 0.02 of the 86 training records is 1 record: a linear head needs at least 2; give a fraction " \
           "of at least 0.0233" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    # a PTB-XL run pointed at the CPSC2018 folder: a message naming the expected file, exit status 2
    with pytest.raises(SystemExit) as exit_info:
        lp.main(probe_args(setup, tmp_path / "x.json", "--task", "super") + ["--dataset", "ptbxl"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "ptbxl_database.csv" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()
    # a seed given twice would count one run twice (std 0 from one run); an output the .md would overwrite
    for extra, message in ((["--seeds", "42", "42"], "each seed once: 42 repeated"),
                           (["--fractions", "0.1", "0.1"], "each fraction once: 0.1 repeated")):
        with pytest.raises(SystemExit) as exit_info:
            lp.main(probe_args(setup, tmp_path / "x.json") + extra)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    # refused while parsing, before the model and data are read (they failed after both, with numpy's message)
    for extra, message in ((["--seeds", "-1"], "--seeds and --init-seed must be whole numbers from 0 to 2**32 - 1"),
                           (["--seeds", str(2**32)], "--seeds and --init-seed must be whole numbers"),
                           (["--protocol-num-samples", "2500.0"], "a whole number of samples >= 1, got '2500.0'")):
        with pytest.raises(SystemExit) as exit_info:
            lp.main(probe_args(setup, tmp_path / "x.json") + extra)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        lp.main(probe_args(setup, tmp_path / "x.md"))
    assert exit_info.value.code == 2 and "must be a .json file" in capsys.readouterr().err


def test_a_class_without_negatives_in_the_training_subset_is_named():
    """A small fraction of a common class can hold only positives: the head learns nothing of that class, yet its
    test AUC entered the macro without a word, where a class without positives was named (helper:
    /tmp/hI/repro/probe_no_negative_in_subset.py)."""
    rng = np.random.default_rng(3)
    features, labels = {}, {}
    for split, n in (("train", 200), ("val", 60), ("test", 60)):
        y = np.stack([rng.random(n) < 0.5, rng.random(n) < 0.9], axis=1).astype(np.float32)
        features[split] = (rng.standard_normal((n, 8)) + np.pad(2 * y, ((0, 0), (0, 6)))).astype(np.float32)
        labels[split] = y
    common_in_subset = [seed for seed in range(60)
                        if labels["train"][lp.train_subset_indices(200, 0.02, seed), 1].all()]
    assert common_in_subset, "no seed draws a subset of only 'common' positives: change the data seed"
    seed = common_in_subset[0]
    run, _ = lp.probe_run(features, labels, ["half", "common"], 0.02, seed, epochs=3, batch_size=4, lr=1e-3,
                          weight_decay=1e-4, bootstrap=0)
    assert run["classes_without_train_negatives"] == ["common"]
    assert "common" not in run["classes_without_train_positives"]
    row = lp.summarize([run], [0.02], ["half", "common"])[0]
    assert row["classes_without_train_negatives"] == ["common"]
