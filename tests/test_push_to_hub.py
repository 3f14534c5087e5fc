"""push_export / `python -m train.push_to_hub` against a local fake Hub; never touches the real internet.

conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, and huggingface_hub 2.4 then refuses
every HTTP request in this process (OfflineModeIsEnabled). The `online` fixture flips the module constants for
in-process pushes only; loading is checked in fresh subprocesses with HF_ENDPOINT pointing at the fake Hub.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError

from tests.fake_hub import FakeHub
from train.hub import push_export

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "dbeta-test/tiny-bert"
SENTENCES = ["sinus rhythm with first degree av block", "atrial fibrillation with rapid ventricular response"]
MODEL_CARD = """---
license: mit
library_name: transformers
tags:
- ecg
- test
---

# tiny-bert

A 2-layer BERT used to test pushing to a fake Hub.
"""
REPORTS = [
    "sinus rhythm", "sinus bradycardia", "sinus tachycardia", "atrial fibrillation", "atrial flutter",
    "first degree av block", "left bundle branch block", "right bundle branch block", "left axis deviation",
    "rapid ventricular response", "st elevation in anterior leads", "t wave inversion", "normal ecg",
    "premature ventricular complexes", "low voltage qrs", "left ventricular hypertrophy", "with", "and",
]

# Runs in a fresh interpreter: argv = repo_id, output path, JSON list of sentences.
LOADER = """
import json, os, sys, torch
from huggingface_hub import hf_hub_download, snapshot_download
from transformers import AutoConfig, AutoModel, AutoTokenizer
repo, out, sentences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = AutoConfig.from_pretrained(repo)
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModel.from_pretrained(repo).eval()
batch = tokenizer(sentences, padding=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
readme = open(hf_hub_download(repo, "README.md"), encoding="utf-8").read()
files = sorted(os.listdir(snapshot_download(repo)))
torch.save({"model_type": config.model_type, "model_class": type(model).__name__, "input_ids": batch["input_ids"],
            "hidden": hidden, "readme": readme, "files": files}, out)
"""


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def client_env(hf_home: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    """Environment of a fresh 'user' process: fake Hub endpoint and token, empty cache, nothing inherited from HF_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN="hf_fake", HF_HOME=str(hf_home), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A real save_pretrained() folder (2-layer BertModel + in-memory WordPiece tokenizer) plus model_card.md."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(REPORTS, trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config).eval()

    folder = tmp_path_factory.mktemp("export")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "model_card.md").write_text(MODEL_CARD, encoding="utf-8")
    # Things that must never be uploaded.
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling.cpython-311.pyc").write_bytes(b"\x00pyc")
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-1" / "optimizer.bin").write_bytes(b"\x00" * 64)
    (folder / "stray.pyc").write_bytes(b"\x00pyc")

    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return {"folder": folder, "input_ids": batch["input_ids"], "hidden": hidden}


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def online(hub, monkeypatch):
    """Let this process reach the fake Hub (and only it) despite conftest's HF_HUB_OFFLINE=1."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    # Anything that uses the default endpoint (e.g. the agent-harness registry fetched while building the
    # user agent) must hit the fake Hub too, never huggingface.co; and skip that fetch altogether.
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return hub


def test_push_then_load_in_fresh_process_then_offline_from_cache(tiny_export, online, tmp_path):
    hub, folder = online, tiny_export["folder"]
    before = folder_bytes(folder)

    url = push_export(folder, REPO_ID, commit_message="Upload tiny-bert", token="hf_fake", endpoint=hub.url)

    assert url.startswith(f"{hub.url}/{REPO_ID}/commit/")
    assert hub.commit_messages(REPO_ID) == ["Upload tiny-bert", "initial commit"]  # one commit for the whole folder
    remote = hub.files(REPO_ID)
    assert remote["README.md"] == before["model_card.md"]
    expected = {k for k in before if not (k.endswith(".pyc") or k.startswith(("checkpoints/", "__pycache__/")))}
    assert set(remote) == expected - {"model_card.md"} | {"README.md", ".gitattributes"}
    assert all(remote[k] == before[k] for k in expected - {"model_card.md"})
    assert folder_bytes(folder) == before  # the local folder is only read

    # Fresh process, empty cache, online against the fake Hub.
    hf_home = tmp_path / "hf_home"
    online_out = tmp_path / "online.pt"
    args = ["-c", LOADER, REPO_ID, str(online_out), json.dumps(SENTENCES)]
    proc = run(args, client_env(hf_home, hub.url))
    assert proc.returncode == 0, proc.stderr
    got = torch.load(online_out)
    assert (got["model_type"], got["model_class"]) == ("bert", "BertModel")
    assert torch.equal(got["input_ids"], tiny_export["input_ids"])
    torch.testing.assert_close(got["hidden"], tiny_export["hidden"], rtol=0, atol=1e-6)
    assert got["readme"] == MODEL_CARD
    assert got["files"] == sorted(remote)
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= fetched

    # Server gone: the same process recipe works from the cache with HF_HUB_OFFLINE=1.
    hub.stop()
    offline_out = tmp_path / "offline.pt"
    proc = run(["-c", LOADER, REPO_ID, str(offline_out), json.dumps(SENTENCES)], client_env(hf_home, url, offline=True))
    assert proc.returncode == 0, proc.stderr
    torch.testing.assert_close(torch.load(offline_out)["hidden"], tiny_export["hidden"], rtol=0, atol=1e-6)


def test_failed_commit_raises_clear_error_and_keeps_folder(tiny_export, online):
    hub, folder = online, tiny_export["folder"]
    hub.fail_commits = True
    before = folder_bytes(folder)

    with pytest.raises(RuntimeError) as excinfo:
        push_export(folder, REPO_ID, token="hf_fake", endpoint=hub.url)

    message = str(excinfo.value)
    assert REPO_ID in message and hub.url in message and "500" in message
    assert isinstance(excinfo.value.__cause__, HfHubHTTPError)
    assert excinfo.value.__cause__.response.status_code == 500
    assert folder_bytes(folder) == before
    assert hub.commit_messages(REPO_ID) == ["initial commit"]  # repo created, nothing committed


def test_push_refuses_clearly_in_offline_mode(tiny_export, hub):
    # No `online` fixture: conftest's HF_HUB_OFFLINE=1 is in force.
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        push_export(tiny_export["folder"], REPO_ID, token="hf_fake", endpoint=hub.url)
    assert hub.requests == []


def test_cli_missing_weights_errors_clearly(tiny_export, hub, tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_bytes((tiny_export["folder"] / "config.json").read_bytes())

    proc = run(["-m", "train.push_to_hub", "--folder", str(incomplete), "--repo-id", REPO_ID],
               client_env(tmp_path / "hf_home", hub.url))

    assert proc.returncode == 1
    assert "model.safetensors" in proc.stderr and str(incomplete) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert hub.requests == []  # validation happens before any network call


def test_a_folder_holding_pickles_is_not_pushed(tiny_export, hub, tmp_path):
    """A Trainer checkpoint (optimizer.pt, training_args.bin) or any pickle beside the safetensors weights: refused
    before any request, naming the files."""
    folder = tmp_path / "with_pickles"
    shutil.copytree(tiny_export["folder"], folder)
    (folder / "checkpoint-6").mkdir()
    (folder / "checkpoint-6" / "optimizer.pt").write_bytes(b"pickle")
    (folder / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(RuntimeError, match="pickle file\\(s\\) checkpoint-6/optimizer.pt, training_args.bin"):
        push_export(folder, REPO_ID, token="hf_fake", endpoint=hub.url)
    assert hub.requests == []


def test_a_folder_with_non_finite_weights_is_not_pushed(tiny_export, hub, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan"
    shutil.copytree(tiny_export["folder"], folder)
    weights = load_file(folder / "model.safetensors")
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=rf"NaN or infinite values in model.safetensors: {re.escape(name)}"):
        push_export(folder, REPO_ID, token="hf_fake", endpoint=hub.url)
    assert hub.requests == []


def test_a_pickle_under_another_name_is_found_by_its_content(tiny_export, hub, tmp_path):
    """checkpoint.pth.tar (torch.save), label_encoder.pkl.gz and scaler.sav passed every check by name."""
    import gzip
    import pickle
    import zlib

    import torch

    folder = tmp_path / "renamed_pickles"
    shutil.copytree(tiny_export["folder"], folder)
    torch.save({"step": 3}, folder / "checkpoint.pth.tar")
    with gzip.open(folder / "label_encoder.pkl.gz", "wb") as f:
        pickle.dump(["NORM", "AFIB"], f)
    (folder / "scaler.sav").write_bytes(pickle.dumps({"mean": 1.0}))
    torch.save({"w": torch.zeros(2)}, folder / "weights.data")  # a name no pattern knows: found by its zip content
    (folder / "notes").mkdir()
    (folder / "notes" / "blob").write_bytes(gzip.compress(pickle.dumps([1, 2], protocol=4)))
    (folder / "encoder.PKL").write_bytes(pickle.dumps([1], protocol=0))  # protocol 0: by name, in any case
    (folder / "scaler.dat").write_bytes(zlib.compress(pickle.dumps({"mean": 1.0}, protocol=4)))  # joblib's zlib
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RuntimeError, match=r"pickle file\(s\) checkpoint.pth.tar, encoder.PKL, label_encoder.pkl.gz, "
                                           r"notes/blob, objects.npy, scaler.dat, scaler.sav, weights.data would run"):
        push_export(folder, REPO_ID, token="hf_fake", endpoint=hub.url)
    assert hub.requests == []


def test_safetensors_and_numbers_are_not_taken_for_pickles(tmp_path):
    """A safetensors header of 640 bytes starts with 0x80 0x02, a pickle's opening: it was refused as one."""
    from train.hub import is_pickle

    header = b'{"__metadata__":{"format":"pt"}}'.ljust(640)
    (tmp_path / "model.safetensors").write_bytes((640).to_bytes(8, "little") + header)
    np.save(tmp_path / "numbers.npy", np.arange(3.0))
    (tmp_path / "damaged.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 20)
    assert not any(is_pickle(tmp_path / n) for n in ("model.safetensors", "numbers.npy", "damaged.gz"))


def test_cli_pushes_folder(tiny_export, hub, tmp_path):
    proc = run(["-m", "train.push_to_hub", "--folder", str(tiny_export["folder"]), "--repo-id", REPO_ID,
                "--private", "--commit-message", "from the CLI"], client_env(tmp_path / "hf_home", hub.url))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"{hub.url}/{REPO_ID}/commit/")
    assert hub.repos[REPO_ID]["private"] is True
    assert hub.commit_messages(REPO_ID) == ["from the CLI", "initial commit"]
    assert hub.files(REPO_ID)["README.md"] == MODEL_CARD.encode()


# Runs in a fresh interpreter against the fake Hub: argv = repo_id, revision, folder to save the loaded model to.
PINNED = """
import json, sys
from transformers import AutoModel, AutoProcessor, pipeline
repo, revision, out = sys.argv[1:4]
model = AutoModel.from_pretrained(repo, revision=revision, trust_remote_code=True)
AutoProcessor.from_pretrained(repo, revision=revision, trust_remote_code=True).save_pretrained(out)
model.save_pretrained(out)
clf = pipeline("zero-shot-ecg-classification", model=repo, revision=revision, trust_remote_code=True)
print(json.dumps(clf.label_texts(["AFIB"])[0]))
"""


@pytest.fixture(scope="module")
def dbeta_export(tmp_path_factory):
    from dbeta.modeling_dbeta import DBetaModel
    from tests.tiny import tiny_config, tiny_t5_text_config, train_t5_tokenizer
    from train.export import build_processor, export_model

    tok = train_t5_tokenizer()
    return export_model(DBetaModel(tiny_config(tiny_t5_text_config(len(tok)))),
                        tmp_path_factory.mktemp("dbeta") / "export", processor=build_processor(tok))


def test_a_model_pinned_to_a_revision_keeps_that_revisions_code_and_prompts(dbeta_export, online, tmp_path):
    """Loaded at a pinned commit while main has moved on: re-saving copied main's pipeline code and prompts (code the
    user never chose to trust), and the pipeline read main's prompts. Both now come from the pinned commit."""
    from huggingface_hub import HfApi

    hub, repo = online, "dbeta-test/pinned"
    api = HfApi(endpoint=hub.url, token="hf_fake")
    api.create_repo(repo)
    pinned = api.upload_folder(repo_id=repo, folder_path=dbeta_export, commit_message="reviewed").oid
    prompts = json.loads((dbeta_export / "prompts_dbeta.json").read_text())
    prompts["prompts"]["AFIB"] = "a prompt from main"
    api.upload_file(repo_id=repo, path_or_fileobj=json.dumps(prompts).encode(), path_in_repo="prompts_dbeta.json")
    code = (dbeta_export / "pipeline_dbeta.py").read_text() + "\nprint('main pipeline code ran')\n"
    api.upload_file(repo_id=repo, path_or_fileobj=code.encode(), path_in_repo="pipeline_dbeta.py")

    out = tmp_path / "copy"
    proc = run(["-c", PINNED, repo, pinned, str(out)], client_env(tmp_path / "hf_home", hub.url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "main pipeline code ran" not in proc.stdout
    reviewed = json.loads((dbeta_export / "prompts_dbeta.json").read_text())["prompts"]["AFIB"]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [reviewed]
    for name in ("pipeline_dbeta.py", "prompts_dbeta.json", "prompting_dbeta.py"):
        assert (out / name).read_bytes() == (dbeta_export / name).read_bytes(), name


def test_cli_a_sharded_export_with_a_shard_missing_is_not_pushed(tiny_export, hub, tmp_path):
    """model.safetensors.index.json stood in for model.safetensors without its shards being checked: an export saved
    sharded with one shard lost (a copy cut short) passed the local checks and would be uploaded broken."""
    from transformers import BertModel

    sharded = tmp_path / "sharded"
    BertModel.from_pretrained(tiny_export["folder"]).save_pretrained(sharded, max_shard_size="20KB")
    (sharded / "model_card.md").write_text(MODEL_CARD, encoding="utf-8")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    shards[-1].unlink()

    proc = run(["-m", "train.push_to_hub", "--folder", str(sharded), "--repo-id", REPO_ID],
               client_env(tmp_path / "hf_home", hub.url))

    assert proc.returncode == 1, proc.stderr
    assert shards[-1].name in proc.stderr and "model.safetensors.index.json" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert hub.requests == []  # validation happens before any network call
