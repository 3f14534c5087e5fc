"""Export -> fresh-process load with trust_remote_code, for every Auto class; and the remote-code import rule."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dbeta.modeling_dbeta import DBetaForPreTraining
from tests.tiny import ecg_batch, tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import build_processor, export_model

ROOT = Path(__file__).resolve().parents[1]
REMOTE_FILES = sorted(p.name for p in ROOT.glob("*_dbeta.py"))
ALLOWED_TOP_LEVEL = {"torch", "transformers", "numpy"} | set(sys.stdlib_module_names)


def fresh_python(script: str, cwd: Path, hf_home: Path) -> str:
    """Run `script` in a new interpreter that cannot see the repository's modules."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    tok = train_t5_tokenizer()
    model = DBetaForPreTraining(tiny_config(tiny_t5_text_config(len(tok)))).eval()
    out = export_model(model, tmp / "dbeta-tiny", processor=build_processor(tok),
                       card_facts={"run": "unit test"})
    ecg = ecg_batch(2)
    ids = tok(["sinus rhythm. normal ecg.", "atrial fibrillation."], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = {
            "ecg": model.get_ecg_features(ecg).pooler_output,
            "text": model.get_text_features(ids["input_ids"], ids["attention_mask"]).pooler_output,
            "etm": model.get_matching_logits(ecg[:1].repeat(2, 1, 1), ids["input_ids"], ids["attention_mask"]),
        }
    torch.save({"ecg_values": ecg, **ids, **{f"expected_{k}": v for k, v in expected.items()}}, tmp / "io.pt")
    return out, tmp


def test_export_folder_contents(exported):
    out, _ = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_dbeta.py", "modeling_dbeta.py",
            "processing_dbeta.py", "processor_config.json", "tokenizer_config.json", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))], "weights must be safetensors only"
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_dbeta.DBetaForECGClassification"
    assert "zero-shot-ecg-classification" in config["custom_pipelines"]
    assert "| run | unit test |" in (out / "README.md").read_text()


def test_fresh_process_loads_every_auto_class(exported, tmp_path):
    out, tmp = exported
    stdout = fresh_python(
        f"""
        import torch
        from transformers import (AutoConfig, AutoModel, AutoModelForPreTraining,
                                  AutoModelForSequenceClassification, AutoProcessor)
        path, io = {str(out)!r}, torch.load({str(tmp / 'io.pt')!r}, weights_only=True)
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        pre = AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True).eval()
        clf = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, num_labels=3)
        proc = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        with torch.no_grad():
            ecg = base.get_ecg_features(io["ecg_values"]).pooler_output
            text = base.get_text_features(io["input_ids"], io["attention_mask"]).pooler_output
            etm = pre.get_matching_logits(io["ecg_values"][:1].repeat(2, 1, 1), io["input_ids"], io["attention_mask"])
        assert (ecg - io["expected_ecg"]).abs().max() < 1e-6
        assert (text - io["expected_text"]).abs().max() < 1e-6
        assert (etm - io["expected_etm"]).abs().max() < 1e-6
        assert clf(ecg_values=io["ecg_values"]).logits.shape == (2, 3)
        batch = proc(ecg=io["ecg_values"][0].numpy(), sampling_rate=500, text="Sinus rhythm. Normal EKG")
        assert batch["ecg_values"].shape == (1, 12, 5000)
        ids = proc.tokenizer(["sinus rhythm. normal ecg"])["input_ids"]
        assert batch["input_ids"].tolist() == ids
        print(type(config).__module__, type(base).__name__, type(proc).__name__)
        """,
        cwd=tmp_path,
        hf_home=tmp_path / "hf",
    )
    assert "transformers_modules" in stdout and "DBetaModel DBetaProcessor" in stdout


def test_without_trust_remote_code_the_error_says_so(exported, tmp_path):
    out, _ = exported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-c", f"from transformers import AutoModel; AutoModel.from_pretrained({str(out)!r})"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0 and "trust_remote_code" in proc.stderr


@pytest.mark.parametrize("name", REMOTE_FILES)
def test_remote_code_imports_only_allowed_modules_at_module_level(name):
    path = ROOT / name
    if not path.exists():
        pytest.skip(f"{name} not written yet")
    tree = ast.parse(path.read_text())
    for node in tree.body:  # module level only; lazy imports inside functions sit in try/except ImportError
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative sibling import
                continue
            roots = [node.module.split(".")[0]]
        elif isinstance(node, ast.Try):
            continue  # the `from .x import` / `from x import` fallback
        else:
            continue
        for root in roots:
            assert root in ALLOWED_TOP_LEVEL or root == "__future__", f"{name} imports {root} at module level"
