"""Exports and loading: file permissions, no local paths, non-finite weights, configs that disagree with their
weights, re-saved / pushed copies that keep the pipeline, prompts and card, and the card's front matter."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from dbeta.configuration_dbeta import DBetaConfig
from dbeta.modeling_dbeta import DBetaForECGClassification, DBetaForPreTraining, DBetaModel
from tests.tiny import ecg_batch, tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import build_processor, export_model


@pytest.fixture(scope="module")
def tok():
    return train_t5_tokenizer()


@pytest.fixture(scope="module")
def pre_export(tmp_path_factory, tok):
    """A DBetaForPreTraining export (tiny config: width 32, 2 ECG layers, 2 T5 layers)."""
    torch.manual_seed(0)
    model = DBetaForPreTraining(tiny_config(tiny_t5_text_config(len(tok)))).eval()
    return export_model(model, tmp_path_factory.mktemp("pre") / "export", processor=build_processor(tok))


def copy_export(src: Path, dst: Path, config_edit=None, weights_edit=None) -> Path:
    """A copy of an export with config.json and/or the weights edited."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if config_edit:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    if weights_edit:
        state = load_file(dst / "model.safetensors")
        weights_edit(state)
        save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# -- 1. permissions and local paths ------------------------------------------------------------------------------


def test_exported_files_get_ordinary_permissions(tok, tmp_path):
    old = os.umask(0o022)
    try:
        out = export_model(DBetaModel(tiny_config(tiny_t5_text_config(len(tok)))), tmp_path / "e",
                           processor=build_processor(tok))
        DBetaModel.from_pretrained(out).save_pretrained(tmp_path / "again")
    finally:
        os.umask(old)
    for folder in (out, tmp_path / "again"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert modes["model.safetensors"] == 0o644, modes
        assert all(m == 0o644 for m in modes.values()), modes


def test_no_local_path_in_any_exported_file(tmp_path):
    """Text encoder and tokenizer loaded from a local folder, a card fact naming local folders: none of those
    paths, nor the home or temp prefix, appears in any file of the export."""
    from transformers import AutoConfig, AutoTokenizer, T5Config, T5EncoderModel

    source = Path(tempfile.mkdtemp(prefix="dbeta-local-src-", dir=tmp_path))
    tok = train_t5_tokenizer()
    tok.save_pretrained(source / "text-encoder")
    text = {k: v for k, v in tiny_t5_text_config(len(tok)).items() if k != "model_type"}
    T5EncoderModel(T5Config(**text)).save_pretrained(source / "text-encoder")
    config = DBetaConfig.small(text_config=AutoConfig.from_pretrained(source / "text-encoder"))
    model = DBetaForPreTraining(config)
    processor = build_processor(AutoTokenizer.from_pretrained(source / "text-encoder"))
    out = export_model(model, tmp_path / "export", processor=processor, card_facts={
        "pretraining data": f"{source / 'data'} (30 train / 4 validation rows)",
        "text encoder init": f"{source / 'text-encoder'} (pretrained weights)",
        "converted from": str(Path.home() / "downloads" / "sample.pt"),
    })
    forbidden = {str(source), str(tmp_path), str(Path.home()), tempfile.gettempdir() + os.sep}
    for f in out.iterdir():
        content = f.read_bytes()
        for needle in forbidden:
            assert needle.encode() not in content, f"{f.name} contains {needle}"
    card = (out / "README.md").read_text()
    assert "| pretraining data | data (30 train / 4 validation rows) |" in card
    assert "| converted from | sample.pt |" in card


# -- 2. non-finite weights -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_loading_refuses_non_finite_weights_naming_file_and_tensor(pre_export, tmp_path, bad):
    key = "ecg_model.layers.1.fc1.weight"

    def poison(state):
        state[key][0, 3] = bad

    damaged = copy_export(pre_export, tmp_path / "damaged", weights_edit=poison)
    for cls in (DBetaModel, DBetaForPreTraining, DBetaForECGClassification):
        with pytest.raises(ValueError, match="non-finite") as err:
            cls.from_pretrained(damaged)
        assert str(damaged / "model.safetensors") in str(err.value) and key in str(err.value)


def test_export_refuses_non_finite_weights(tok, tmp_path):
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tok))))
    with torch.no_grad():
        model.text_projection.bias[0] = float("nan")
        model.ecg_pooler.dense.weight[1, 1] = float("-inf")
    with pytest.raises(ValueError, match="non-finite") as err:
        export_model(model, tmp_path / "e")
    assert "text_projection.bias" in str(err.value) and "ecg_pooler.dense.weight" in str(err.value)
    assert not (tmp_path / "e").exists()


# -- 3. config and weights that disagree ---------------------------------------------------------------------------


def _ecg_layers(n):
    return lambda c: c["ecg_config"].update(num_hidden_layers=n)


def _text_layers(n):
    return lambda c: c["text_config"].update(num_layers=n)


def _kernel(c):
    c["ecg_config"]["conv_layers"][0][1] = 4


def _drop(key):
    return lambda state: state.pop(key)


@pytest.mark.parametrize("cls", [DBetaModel, DBetaForPreTraining])
@pytest.mark.parametrize("case, config_edit, weights_edit, named", [
    ("ecg layers 2 -> 3", _ecg_layers(3), None, "ecg_model.layers.2."),
    ("ecg layers 2 -> 1", _ecg_layers(1), None, "ecg_model.layers.1."),
    ("text layers 2 -> 1", _text_layers(1), None, "text_model.encoder.block.1."),
    ("conv kernel", _kernel, None, "ecg_model.conv_layers.0.conv.weight"),
    ("one tensor missing", None, _drop("fusion.ecg_layers.0.fc2.weight"), "fusion.ecg_layers.0.fc2.weight"),
])
def test_config_that_disagrees_with_the_weights_is_refused(pre_export, tmp_path, cls, case, config_edit,
                                                           weights_edit, named):
    edited = copy_export(pre_export, tmp_path / "edited", config_edit, weights_edit)
    with pytest.raises(ValueError, match="does not match") as err:
        cls.from_pretrained(edited)
    assert named in str(err.value) and str(edited) in str(err.value)


def test_classifier_is_refused_when_its_ecg_side_disagrees(pre_export, tmp_path):
    for config_edit, named in ((_ecg_layers(1), "ecg_model.layers.1."), (_kernel, "conv_layers.0.conv.weight")):
        edited = copy_export(pre_export, tmp_path / named, config_edit)
        with pytest.raises(ValueError, match=named.replace(".", r"\.")):
            DBetaForECGClassification.from_pretrained(edited, num_labels=3)


def test_conv_stride_change_is_caught_through_the_mem_decoder(pre_export, tmp_path):
    """A stride leaves every conv shape intact; the MEM decoder's output (leads x token size) does not."""
    edited = copy_export(pre_export, tmp_path / "edited", lambda c: c["ecg_config"]["conv_layers"][0].__setitem__(2, 1))
    with pytest.raises(ValueError, match=r"mem_head\.pred\.weight"):
        DBetaForPreTraining.from_pretrained(edited)


def test_a_partly_present_head_is_refused(pre_export, tmp_path):
    edited = copy_export(pre_export, tmp_path / "edited", weights_edit=_drop("mem_head.pred.bias"))
    DBetaModel.from_pretrained(edited)  # the base model ignores the pretraining heads
    with pytest.raises(ValueError, match=r"mem_head\.pred\.bias"):
        DBetaForPreTraining.from_pretrained(edited)


def test_legitimate_loads_still_work(pre_export, tmp_path):
    pre = DBetaForPreTraining.from_pretrained(pre_export)
    base = DBetaModel.from_pretrained(pre_export)  # pretraining heads ignored
    torch.testing.assert_close(base.ecg_pooler.dense.weight, pre.ecg_pooler.dense.weight)
    clf, info = DBetaForECGClassification.from_pretrained(pre_export, num_labels=3, output_loading_info=True)
    assert {"classifier.weight", "classifier.bias"} <= set(info["missing_keys"])  # a new head, initialised
    torch.testing.assert_close(clf.ecg_model.layers[1].fc1.weight, pre.ecg_model.layers[1].fc1.weight)
    assert torch.isfinite(clf(ecg_values=ecg_batch(1)).logits).all()
    # a fine-tuned classifier re-headed for another label count: only when asked
    clf.save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match=r"classifier\.weight: \(3, 32\) vs \(5, 32\)"):
        DBetaForECGClassification.from_pretrained(tmp_path / "clf", num_labels=5)
    resized = DBetaForECGClassification.from_pretrained(tmp_path / "clf", num_labels=5, ignore_mismatched_sizes=True)
    assert resized.classifier.weight.shape == (5, 32)
    # a base (no pretraining heads) checkpoint starts pretraining with new heads; a classifier export has no text
    base.save_pretrained(tmp_path / "base")
    DBetaForPreTraining.from_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match=r"text_model\."):
        DBetaModel.from_pretrained(tmp_path / "clf")


# -- 4. re-saved and pushed copies keep the pipeline, prompts and card --------------------------------------------


def _client_env(hf_home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
           and k != "PYTHONPATH"}
    env.update(HF_HOME=str(hf_home), TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    return env


def _run(script: str, cwd: Path, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


CLASSIFY = """
import json, torch
from transformers import pipeline
from tests_signal import signal
clf = pipeline("zero-shot-ecg-classification", model={where!r}, trust_remote_code=True)
print("SCORES", json.dumps(clf(signal, sampling_rate=500, candidate_labels=["AFIB", "NORM", "sinus rhythm"])))
"""


def _scores(stdout: str):
    return json.loads(next(x for x in stdout.splitlines() if x.startswith("SCORES"))[len("SCORES "):])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("client")
    signal = ecg_batch(1, seed=5)[0].numpy()
    (work / "tests_signal.py").write_text(f"import numpy as np\nsignal = np.array({signal.tolist()!r}, "
                                          f"dtype=np.float32)\n")
    return work


def test_resaved_copy_works_like_the_export(pre_export, workdir, tmp_path):
    copy = tmp_path / "copy"
    env = _client_env(tmp_path / "hf", HF_HUB_OFFLINE="1")
    _run(f"""
        from transformers import AutoModel, AutoProcessor
        AutoModel.from_pretrained({str(pre_export)!r}, trust_remote_code=True).save_pretrained({str(copy)!r})
        AutoProcessor.from_pretrained({str(pre_export)!r}, trust_remote_code=True).save_pretrained({str(copy)!r})
        """, workdir, env)
    for name in ("pipeline_dbeta.py", "prompts_dbeta.json", "README.md"):
        assert (copy / name).read_bytes() == (pre_export / name).read_bytes(), name
    fresh = _client_env(tmp_path / "hf-empty", HF_HUB_OFFLINE="1")
    original = _scores(_run(CLASSIFY.format(where=str(pre_export)), workdir, fresh))
    resaved = _scores(_run(CLASSIFY.format(where=str(copy)), workdir, fresh))
    assert [r["label"] for r in resaved] == [r["label"] for r in original]
    assert all(abs(a["score"] - b["score"]) < 1e-6 for a, b in zip(resaved, original))


def test_model_push_to_hub_copy_works_like_the_export(pre_export, workdir, tmp_path):
    from tests.fake_hub import FakeHub

    repo = "dbeta-tests/pushed"
    with FakeHub() as hub:
        env = _client_env(tmp_path / "hf", HF_ENDPOINT=hub.url, HF_TOKEN="hf_fake")
        _run(f"""
            from transformers import AutoModel, AutoProcessor
            AutoModel.from_pretrained({str(pre_export)!r}, trust_remote_code=True).push_to_hub({repo!r})
            AutoProcessor.from_pretrained({str(pre_export)!r}, trust_remote_code=True).push_to_hub({repo!r})
            """, workdir, env)
        files = hub.files(repo)
        for name in ("pipeline_dbeta.py", "prompts_dbeta.json"):
            assert files[name] == (pre_export / name).read_bytes(), name
        fresh = _client_env(tmp_path / "hf-empty", HF_ENDPOINT=hub.url, HF_TOKEN="hf_fake")
        pushed = _scores(_run(CLASSIFY.format(where=repo), workdir, fresh))
    original = _scores(_run(CLASSIFY.format(where=str(pre_export)), workdir,
                            _client_env(tmp_path / "hf-local", HF_HUB_OFFLINE="1")))
    assert [r["label"] for r in pushed] == [r["label"] for r in original]


# -- 5. the Hub card -----------------------------------------------------------------------------------------------


def test_card_front_matter_and_shapes_fit_the_export(pre_export, tok, tmp_path):
    card = ModelCard.load(pre_export / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["license"] == "cc-by-nc-4.0"
    assert "pipeline_tag" not in meta  # the Hub has no zero-shot ECG tag; zero-shot-classification is text NLI
    assert "datasets" not in meta and "base_model" not in meta  # trained here on nothing declared; not a fine-tune
    assert "custom_code" in meta["tags"]
    hidden = json.loads((pre_export / "config.json").read_text())["hidden_size"]
    assert "[1, 768]" not in card.text and f"[1, {hidden}]" in card.text
    assert not (pre_export / "model_card.md").exists()  # README.md is the one card

    # a fine-tune of a Hub model names it; declared datasets are written
    model = DBetaForECGClassification(tiny_config(tiny_t5_text_config(len(tok)), num_labels=2))
    model.name_or_path = "someone/dbeta-base"
    out = export_model(model, tmp_path / "ft", datasets=["someone/ptbxl"])
    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["base_model"] == "someone/dbeta-base" and meta["datasets"] == ["someone/ptbxl"]
    # ... but never a local folder
    local = tmp_path / "local-base"
    local.mkdir()
    model.name_or_path = str(local)
    assert "base_model" not in ModelCard.load(export_model(model, tmp_path / "ft2") / "README.md").data.to_dict()


def test_a_truncated_weights_file_is_named(tmp_path):
    from dbeta.modeling_dbeta import DBetaModel
    from tests.tiny import tiny_config, tiny_t5_text_config, train_t5_tokenizer

    DBetaModel(tiny_config(tiny_t5_text_config(len(train_t5_tokenizer())))).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(OSError, match=f"{weights}: the weights file is damaged"):
        DBetaModel.from_pretrained(tmp_path)


# -- replacing an export ------------------------------------------------------------------------------------------


def test_an_export_never_replaces_a_folder_that_is_not_an_export(pre_export, tmp_path):
    from train.export import ExportTargetError

    model = DBetaForPreTraining.from_pretrained(pre_export)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    with pytest.raises(ExportTargetError, match=f"{work} is not empty and holds no D-BETA export"):
        export_model(model, work)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportTargetError, match="is a file"):
        export_model(model, tmp_path / "file")


def test_an_export_never_replaces_a_model_folder_holding_more_than_an_export(pre_export, tmp_path):
    """A pretraining checkpoint (config.json of a D-BETA model beside optimizer.bin and its RNG state) and a git clone
    of a Hub export (.git, the user's notes) counted as replaceable exports: `--export-only CKPT --export-dir CKPT`
    turned the checkpoint into an export, and the converter wiped a clone's .git."""
    from train.export import ExportTargetError

    model = DBetaForPreTraining.from_pretrained(pre_export)
    checkpoint = copy_export(pre_export, tmp_path / "checkpoint_3")
    (checkpoint / "optimizer.bin").write_bytes(b"state")
    (checkpoint / "random_states_0.pkl").write_bytes(b"state")
    with pytest.raises(ExportTargetError, match=r"checkpoint_3 holds a D-BETA model and also optimizer.bin, "
                                                r"random_states_0.pkl, which no export writes"):
        export_model(model, checkpoint)
    assert (checkpoint / "optimizer.bin").read_bytes() == b"state"
    clone = copy_export(pre_export, tmp_path / "clone")
    (clone / ".git").mkdir()
    (clone / "NOTES.md").write_text("mine")
    with pytest.raises(ExportTargetError, match=r"also .git/, NOTES.md"):
        export_model(model, clone)
    assert (clone / "NOTES.md").read_text() == "mine"
    earlier = copy_export(pre_export, tmp_path / "earlier")  # files of an export's suffixes, but not an export's
    for name in ("NOTES.txt", "analysis.py", "my_eval_results.json"):
        (earlier / name).write_text("mine")
    with pytest.raises(ExportTargetError, match=r"also NOTES.txt, analysis.py, my_eval_results.json"):
        export_model(model, earlier)


def test_a_new_export_replaces_the_old_one_whole_and_a_failed_one_leaves_it(pre_export, tok, tmp_path, monkeypatch):
    import train.export as export_module

    out = copy_export(pre_export, tmp_path / "export")
    (out / "spiece.model").write_bytes(b"an older export's tokenizer")  # a file the new export does not write
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    torch.manual_seed(1)
    model = DBetaForPreTraining(tiny_config(tiny_t5_text_config(len(tok)))).eval()

    def card_fails(*args, **kwargs):
        raise KeyboardInterrupt  # a run stopped while exporting
    monkeypatch.setattr(export_module, "build_model_card", card_fails)
    with pytest.raises(KeyboardInterrupt):
        export_model(model, out, processor=build_processor(tok))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export, untouched
    monkeypatch.undo()

    export_model(model, out, processor=build_processor(tok))
    assert not (out / "spiece.model").exists()
    # no .partial or .old folder left; the writers' lock file stays (removing it would let two writers in)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]
    loaded = DBetaForPreTraining.from_pretrained(out)
    assert torch.equal(loaded.state_dict()["ecg_pooler.dense.weight"], model.state_dict()["ecg_pooler.dense.weight"])


def test_runs_refuse_an_export_folder_that_would_replace_what_they_read(pre_export, tmp_path, capsys):
    """Checked before the first step: fine-tuning into the base model's folder, pretraining into its checkpoint
    folder, converting into a folder of other files."""
    from train import convert_original_checkpoint, finetune, pretrain

    weights = (pre_export / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        finetune.main(["--model", str(pre_export), "--dataset", "cpsc2018", "--data-root", str(tmp_path),
                       "--output-dir", str(tmp_path / "ft"), "--export-dir", str(pre_export)])
    assert exit_.value.code == 2 and f"would replace {pre_export}" in capsys.readouterr().err
    assert (pre_export / "model.safetensors").read_bytes() == weights
    run = tmp_path / "run"
    assert pretrain.main(["--dataset", str(tmp_path / "data"), "--output-dir", str(run), "--export-dir",
                          str(run)]) == 2
    assert f"would replace {run}" in capsys.readouterr().err
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "authors.pt").write_bytes(b"x")
    assert convert_original_checkpoint.main(["--checkpoint", str(folder / "authors.pt"), "--output",
                                             str(folder)]) == 2
    assert f"would replace {folder / 'authors.pt'}" in capsys.readouterr().err


def test_a_folder_left_between_the_two_renames_is_put_back(tmp_path):
    """A stop after the old folder was moved aside and before the new one moved in leaves it as `.NAME.old`: the
    next publication puts it back before staging, so the old folder is never lost to a second stop."""
    from train.folders import replace_folder, staging_folder

    (tmp_path / ".export.old").mkdir()
    (tmp_path / ".export.old" / "config.json").write_text("old")
    staging = staging_folder(tmp_path / "export")
    assert (tmp_path / "export" / "config.json").read_text() == "old" and not (tmp_path / ".export.old").exists()
    staging.mkdir()
    (staging / "config.json").write_text("new")
    replace_folder(staging, tmp_path / "export")
    assert (tmp_path / "export" / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_file_is_published_whole_or_not_at_all(tmp_path):
    """Eval outputs, plots, probe caches and results were written in place: a run killed while writing left the
    earlier good file empty; a killed cache write left a `.tmp<pid>` file no run removed."""
    from train.folders import write_file, write_json

    out = tmp_path / "zs.png"
    out.write_bytes(b"earlier plot")

    def cut_short(tmp):
        tmp.write_bytes(b"half a pl")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file(out, cut_short)
    assert out.read_bytes() == b"earlier plot" and sorted(p.name for p in tmp_path.iterdir()) == ["zs.png"]
    write_file(out, lambda tmp: tmp.write_bytes(b"new plot"))
    assert out.read_bytes() == b"new plot" and sorted(p.name for p in tmp_path.iterdir()) == ["zs.png"]
    written = []
    write_file(tmp_path / "a.safetensors", lambda tmp: written.append(tmp.suffix) or tmp.write_bytes(b"x"))
    assert written == [".safetensors"]  # the temporary keeps the suffix (matplotlib picks the format by it)
    write_json(tmp_path / "r.json", {"auc": 0.9})
    assert json.loads((tmp_path / "r.json").read_text()) == {"auc": 0.9}


def test_a_result_set_never_pairs_its_index_with_another_runs_files(tmp_path, monkeypatch):
    """The eval CLIs wrote FILE.json, then FILE.md and the plots: a run stopped between them left the new JSON
    beside the earlier run's table and plots. The JSON is now removed first and written last."""
    from eval import linear_probe as lp

    out = tmp_path / "probe.json"
    for name, text in (("probe.json", '{"run": 1}'), ("probe.md", "run 1"), ("probe.png", "run 1")):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(lp, "render_markdown", lambda result: f"run {result['run']}")

    def stopped(result, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(lp, "plot_history", stopped)
    with pytest.raises(KeyboardInterrupt):
        lp.write_outputs({"run": 2, "summary": []}, out)
    assert not out.exists()  # no index: the set is incomplete, not run 2's JSON over run 1's plot
    monkeypatch.setattr(lp, "plot_history", lambda result, path: (path.write_text(f"run {result['run']}"), path)[1])
    lp.write_outputs({"run": 2, "summary": []}, out)
    assert json.loads(out.read_text())["run"] == 2
    assert (tmp_path / "probe.md").read_text() == (tmp_path / "probe.png").read_text() == "run 2"


def test_a_new_result_set_retracts_the_files_the_old_one_listed(tmp_path, monkeypatch):
    """A zero-shot run with --save-scores and plots, then one without them to the same --output, left the first
    run's scores and ROC plot beside the second run's JSON. The old index's "outputs" are removed with it; only
    files of its own FILE.* name, so an edited index cannot reach anything else."""
    from eval import linear_probe as lp
    from train.folders import retract_result

    out = tmp_path / "zs.json"
    old = {"zs.scores.npz": "run 1", "zs.roc.png": "run 1", "zs.ecg-30.png": "run 1", "zs.md": "run 1",
           "keep.txt": "not the tool's", "zs-notes.txt": "not listed"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    (tmp_path.parent / "elsewhere.png").write_text("outside the folder")
    listed = {"json": str(out), "markdown": "zs.md", "roc": str(tmp_path / "zs.roc.png"), "scores": "zs.scores.npz",
              "ecg_examples": [str(tmp_path / "zs.ecg-30.png")], "edited": ["../elsewhere.png", "keep.txt"]}
    out.write_text(json.dumps({"run": 1, "outputs": listed}))
    retract_result(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "zs-notes.txt"]
    assert (tmp_path.parent / "elsewhere.png").read_text() == "outside the folder"
    retract_result(out)  # nothing there: nothing to do
    (tmp_path / "zs.json").write_text("{not json")
    retract_result(out)  # an unreadable index is removed alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "zs-notes.txt"]

    # through a tool: a probe run with plots, then one without, to the same output
    monkeypatch.setattr(lp, "render_markdown", lambda result: f"run {result['run']}")
    monkeypatch.setattr(lp, "plot_history", lambda result, path: (path.write_text(f"run {result['run']}"), path)[1])
    probe = tmp_path / "probe.json"
    lp.write_outputs({"run": 1, "summary": []}, probe, plot=True)
    assert (tmp_path / "probe.png").is_file()
    lp.write_outputs({"run": 2, "summary": []}, probe, plot=False)
    assert not (tmp_path / "probe.png").exists() and (tmp_path / "probe.md").read_text() == "run 2"
    assert json.loads(probe.read_text())["outputs"] == {"json": str(probe), "markdown": str(tmp_path / "probe.md")}


def test_two_processes_publishing_one_file_keep_to_their_own_temporaries(tmp_path):
    """write_file used one temporary name per destination: two probes sharing a feature cache that published the
    same file at once renamed each other's half-written temporary (FileNotFoundError in one run, helper). Each
    process now writes its own."""
    import subprocess
    import sys
    import time

    from train.folders import write_file

    dest, started, go = tmp_path / "features.safetensors", tmp_path / "started", tmp_path / "go"
    other = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from train.folders import write_file
def slow(tmp):  # as safetensors writes: one open file, written in parts
    with open(tmp, "w") as f:
        f.write("their")
        f.flush()
        Path({str(started)!r}).touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        f.write("s")
write_file({str(dest)!r}, slow)
"""], cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    write_file(dest, lambda tmp: tmp.write_text("ours"))  # while the other process is midway
    assert dest.read_text() == "ours"
    go.touch()
    assert other.wait(timeout=60) == 0
    assert dest.read_text() == "theirs"  # the later publish wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.safetensors", "go", "started"]


def test_two_processes_publishing_one_folder_take_turns(tmp_path):
    """Two runs exporting to one folder shared its `.NAME.partial` staging folder, and each removed what it took
    for a stopped run's leftovers: 12 of 24 exports failed and published folders held one run's weights under the
    other's card (helper). A second writer now waits for the first, saying so; each folder is published whole."""
    import subprocess
    import sys
    import time

    from train.folders import published_folder

    dest, started = tmp_path / "export", tmp_path / "started"
    other = subprocess.Popen([sys.executable, "-c", f"""
from pathlib import Path
from train.folders import published_folder
Path({str(started)!r}).touch()
with published_folder(Path({str(dest)!r})) as staging:
    staging.mkdir()
    (staging / "weights").write_text("theirs")
    (staging / "card").write_text("theirs")
"""], cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True)
    with published_folder(dest) as staging:
        staging.mkdir()
        (staging / "weights").write_text("ours")
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # the other process is at the lock now
        assert other.poll() is None and (staging / "weights").read_text() == "ours"
        (staging / "card").write_text("ours")
    assert other.wait(timeout=60) == 0
    # the waiting run says why it stands still (it waited without a word, looking hung)
    assert f"waiting for another process writing {dest} to finish" in other.stderr.read()
    assert {p.name: p.read_text() for p in dest.iterdir()} == {"weights": "theirs", "card": "theirs"}
    with pytest.raises(RuntimeError):  # a failed publication leaves the folder as it was, and no staging
        with published_folder(dest) as staging:
            staging.mkdir()
            (staging / "weights").write_text("half")
            raise RuntimeError("stopped")
    assert {p.name: p.read_text() for p in dest.iterdir()} == {"weights": "theirs", "card": "theirs"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export", "started"]


def test_eval_and_demo_outputs_go_through_the_publishing_helpers():
    import re

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted((root / "eval").glob("*.py")) + [root / "demo" / "run.py"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            direct = re.search(r"\.(write_text|write_bytes|savefig|savez|savez_compressed|save)\(", line) or \
                re.search(r"\bopen\([^)]*[\"'][wx]b?\+?[\"']", line)  # the windows CSV was written in place
            if direct and "tmp" not in line:
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not offenders, "write through train.folders.write_file / write_text:\n" + "\n".join(offenders)


def test_an_export_through_a_symlink_replaces_the_folder_it_names(pre_export, tmp_path):
    """The link itself was renamed away and a real folder put in its place; the next export then failed
    (NotADirectoryError) on the leftover link."""
    model = DBetaForPreTraining.from_pretrained(pre_export)
    real = copy_export(pre_export, tmp_path / "real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    for _ in range(3):
        export_model(model, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (real / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real.lock", "link", "real"]


def test_a_processor_set_to_another_rate_or_lead_order_than_the_model_was_trained_on_is_refused(pre_export, tmp_path):
    """Setting the processor's sampling_rate to the records' rate (as audio feature extractors are used) or editing
    its lead order, then saving it with the model, fed the model another signal: the top label changed on every
    record with no word (helper). An export records its processor's input; where model and processor meet, a
    processor that disagrees is refused. An export written before (no record) is not checked."""
    from dbeta.pipeline_dbeta import ZeroShotECGClassificationPipeline, extract_features
    from eval.features import load_model_and_processor

    ecg_config = json.loads((pre_export / "config.json").read_text())["ecg_config"]
    assert ecg_config["sampling_rate"] == 500.0 and ecg_config["num_samples"] == 5000
    assert ecg_config["lead_names"][:3] == ["I", "II", "III"] and len(ecg_config["lead_names"]) == 12
    assert "keep_samples" in ecg_config and ecg_config["keep_samples"] is None
    model, processor = load_model_and_processor(str(pre_export))
    record = ecg_batch(1)[0].numpy()
    pipe = ZeroShotECGClassificationPipeline(model=model, processor=processor)
    assert pipe(record, sampling_rate=500, candidate_labels=["AFIB", "NORM"])

    fe = processor.feature_extractor
    fe.sampling_rate = 1000
    # every scoring path: plain, windows, explain, extract_features (the last three passed unchecked, helper)
    for call in (lambda: pipe(record, sampling_rate=500, candidate_labels=["AFIB", "NORM"]),
                 lambda: pipe(record, sampling_rate=500, candidate_labels=["AFIB", "NORM"], window_seconds=5),
                 lambda: pipe(record, sampling_rate=500, candidate_labels=["AFIB", "NORM"], explain=True),
                 lambda: extract_features(model, processor, ecgs=record, sampling_rate=500)):
        with pytest.raises(ValueError, match=r"sampling_rate 1000\.0 where the model's is 500\.0"):
            call()
    fe.sampling_rate = 500
    fe.keep_samples = 2500  # a fine-tuning cut the model was not trained with (nor the reverse)
    with pytest.raises(ValueError, match=r"keep_samples 2500 where the model's is None"):
        pipe(record, sampling_rate=500, candidate_labels=["AFIB", "NORM"])
    fe.keep_samples = None
    swapped = list(fe.lead_names)
    swapped[4], swapped[5] = swapped[5], swapped[4]
    fe.lead_names = swapped
    copy = tmp_path / "copy"
    model.save_pretrained(copy)
    processor.save_pretrained(copy)
    with pytest.raises(ValueError, match=r"lead_names .*aVF.*aVL.* where the model's is"):
        load_model_and_processor(str(copy))

    def unrecorded(config):
        for key in ("sampling_rate", "lead_names"):
            config["ecg_config"].pop(key)

    older = copy_export(pre_export, tmp_path / "older", config_edit=unrecorded)
    model, processor = load_model_and_processor(str(older))
    assert model.config.ecg_config.sampling_rate is None
    assert ZeroShotECGClassificationPipeline(model=model, processor=processor)(record, sampling_rate=500,
                                                                             candidate_labels=["AFIB", "NORM"])


def test_a_published_file_or_folder_is_on_the_disk_before_its_rename(tmp_path, monkeypatch):
    """Exports, N3S tables, ingest chunks and the prepared dataset were renamed into place without fsync (only
    checkpoints flushed): after a power cut the rename can be on the disk and the data not, an empty published
    file (helper: /tmp/hK, noted). Every file is flushed while it is still in its staging place."""
    from train import folders

    flushed = []

    def record(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(folders.os, "fsync", record)
    with folders.published_folder(tmp_path / "out") as staging:
        staging.mkdir()  # (the writers create it: save_pretrained, save_to_disk)
        (staging / "a.bin").write_bytes(b"a")
        (staging / "sub").mkdir()
        (staging / "sub" / "b.bin").write_bytes(b"b")
    assert sorted(Path(p).name for p in flushed) == ["a.bin", "b.bin"]
    assert all(".out.partial" in p for p in flushed)  # flushed before the rename, where they were written
    flushed.clear()
    folders.write_text(tmp_path / "result.json", "{}")
    assert len(flushed) == 1 and ".result.partial-" in flushed[0]
