"""ONNX export (train.export_onnx) and the ONNX Runtime model (onnx_dbeta.DBetaOnnxModel): parity with torch,
dynamic batch, int8, the folder checks, and the zero-shot pipeline on the graphs."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import dbeta.pipeline_dbeta as pipeline_dbeta
from dbeta.modeling_dbeta import DBetaForPreTraining, DBetaModel
from dbeta.onnx_dbeta import MANIFEST, DBetaOnnxModel, OnnxFolderError
from tests.test_remote_code import ALLOWED_TOP_LEVEL, fresh_python
from tests.tiny import REPORTS, ecg_batch, tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train import export_onnx as export_onnx_module
from train.export import build_processor, export_model
from train.export_onnx import ParityError, export_onnx, main

TOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny exported model and its ONNX folder (with the int8 graph)."""
    tmp = tmp_path_factory.mktemp("onnx")
    tok = train_t5_tokenizer()
    torch.manual_seed(0)
    model = DBetaForPreTraining(tiny_config(tiny_t5_text_config(len(tok)))).eval()
    model_dir = export_model(model, tmp / "model", processor=build_processor(tok))
    assert main(["--model", str(model_dir), "--output", str(tmp / "onnx"), "--int8"]) == 0
    return model_dir, tmp / "onnx"


@pytest.fixture(scope="module")
def torch_model(folders):
    return DBetaModel.from_pretrained(str(folders[0])).eval()


@pytest.fixture(scope="module")
def processor(folders):
    return load_processor(folders[1])


def load_processor(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_graphs_have_the_named_io_and_a_dynamic_batch(folders, torch_model):
    import onnxruntime as ort

    _, out = folders
    assert {"ecg_encoder.onnx", "text_encoder.onnx", "ecg_encoder.int8.onnx", MANIFEST, "onnx_dbeta.py",
            "config.json", "processor_config.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.safetensors"))
    ecg = ort.InferenceSession(str(out / "ecg_encoder.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = ecg.get_inputs(), ecg.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:], outp.name) == ("ecg_values", "tensor(float)", [12, 5000],
                                                               "ecg_features")
    assert isinstance(inp.shape[0], str), "the batch axis must be dynamic"
    text = ort.InferenceSession(str(out / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in text.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                             ("attention_mask", "tensor(int64)")]
    assert [o.name for o in text.get_outputs()] == ["text_features"]
    # batch sizes and inputs the export never saw
    for b in (1, 3, 7):
        x = ecg_batch(b, seed=10 + b)
        with torch.no_grad():
            ref = torch_model.get_ecg_features(x).pooler_output.numpy()
        assert np.abs(ecg.run(None, {"ecg_values": x.numpy()})[0] - ref).max() <= TOL
    tok = load_processor(out).tokenizer
    for texts in (REPORTS[:1], REPORTS[2:7]):
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            ref = torch_model.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output.numpy()
        got = text.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})
        assert np.abs(got[0] - ref).max() <= TOL
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["parity"]["ecg_max_abs_diff"] <= TOL and manifest["parity"]["text_max_abs_diff"] <= TOL


def test_onnx_model_equals_torch_model_on_processor_outputs(folders, torch_model, processor):
    onnx_model = DBetaOnnxModel.from_pretrained(folders[1])
    rng = np.random.default_rng(3)
    batch = processor(ecg=[rng.standard_normal((12, 4000)).astype(np.float32) * 0.3 for _ in range(3)],
                      sampling_rate=400, text=["atrial fibrillation", "sinus rhythm. normal ecg.", "lbbb"])
    with torch.no_grad():
        ref = torch_model(**batch)
    got = onnx_model(**batch)
    for key in ("ecg_embeds", "text_embeds", "logits_per_ecg"):
        assert isinstance(got[key], torch.Tensor)
        torch.testing.assert_close(got[key], ref[key], atol=TOL, rtol=0)
    assert type(got) is type(ref) and got.logits_per_ecg is got["logits_per_ecg"]  # read as the torch model's
    # numpy in, and no attention mask (all ones), as DBetaModel accepts
    ids = batch["input_ids"][:1]
    with torch.no_grad():
        torch.testing.assert_close(onnx_model.get_text_features(ids.numpy()).pooler_output,
                                   torch_model.get_text_features(ids).pooler_output,
                                   atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=r"ecg_values must be \[batch, 12, 5000\]"):
        onnx_model.get_ecg_features(torch.zeros(1, 12, 2500))


def test_similarity_follows_the_learnable_mode(folders, tmp_path):
    """SigLIP mode (scaled cosine + bias) reads its constants from the manifest, as torch does from weights. The
    export itself crashed on such a model (the demo's config): the source fingerprint viewed the 0-dim
    logit_scale as bytes (helper: /tmp/hK/repro/onnx_export_learnable_crash.py)."""
    torch.manual_seed(1)
    tok = train_t5_tokenizer()
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tok)), ets_mode="learnable", ets_scale_init=7.0,
                                   ets_bias_init=-3.0)).eval()
    model_dir = export_model(model, tmp_path / "learnable", processor=build_processor(tok))
    assert main(["--model", str(model_dir), "--output", str(tmp_path / "onnx")]) == 0
    onnx_model = DBetaOnnxModel.from_pretrained(tmp_path / "onnx")
    base = DBetaOnnxModel.from_pretrained(folders[1])
    ecg, text = torch.randn(3, 32), torch.randn(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(onnx_model.similarity(ecg, text), model.similarity(ecg, text))
    assert not torch.allclose(onnx_model.similarity(ecg, text), base.similarity(ecg, text))


def test_int8_graph_is_used_and_stays_close(folders, torch_model):
    _, out = folders
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["parity"]["ecg_int8_min_cosine"] >= 0.99
    fp32 = DBetaOnnxModel.from_pretrained(out)
    int8 = DBetaOnnxModel.from_pretrained(out, int8=True)
    assert int8.int8 and not fp32.int8
    x = ecg_batch(4, seed=5)
    a, b = fp32.get_ecg_features(x).pooler_output, int8.get_ecg_features(x).pooler_output
    assert not torch.equal(a, b)  # the quantized graph really runs
    assert torch.nn.functional.cosine_similarity(a, b).min() >= 0.99


def test_int8_graph_is_the_fused_one_with_a_static_int8_positional_conv(folders):
    """The served int8 graph is built from ONNX Runtime's fused graph (attention quantized as QAttention) checked
    against torch first, and its positional conv is quantized statically (QDQ), not left fp32."""
    import onnx

    _, out = folders
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["parity"]["ecg_fused_max_abs_diff"] <= TOL
    assert manifest["parity"]["ecg_int8_fused_ops"]["Attention"] >= 1
    graph = onnx.load(str(out / "ecg_encoder.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "QAttention" in ops and "DynamicQuantizeLinear" in ops
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    (pos_conv,) = [n for n in graph.node if n.op_type == "Conv" and "pos_conv" in n.name]
    assert [produced_by.get(i) for i in pos_conv.input[:2]] == ["DequantizeLinear", "DequantizeLinear"]
    assert not any(p.name.endswith((".raw.onnx", ".static.onnx", ".fused.onnx")) for p in out.iterdir())


def test_zero_shot_pipeline_runs_on_the_graphs(folders, monkeypatch):
    """The pipeline's model calls are get_ecg_features / get_text_features / similarity: the ONNX model gives the
    torch model's scores. The pipeline finds the device with next(model.parameters()); the ONNX model has no
    parameters, so its `device` is patched in (the one-line change described in the README)."""
    model_dir, out = folders
    proc = load_processor(out)
    torch_pipe = pipeline_dbeta.ZeroShotECGClassificationPipeline(
        model=DBetaModel.from_pretrained(str(model_dir)).eval(), processor=proc)
    onnx_pipe = pipeline_dbeta.ZeroShotECGClassificationPipeline(model=DBetaOnnxModel.from_pretrained(out),
                                                                 processor=proc)
    signals = [x.numpy() for x in ecg_batch(3, seed=8)]
    labels = ["NORM", "AFIB", "left bundle branch block"]
    ref = torch_pipe(signals, sampling_rate=500, candidate_labels=labels)
    got = onnx_pipe(signals, sampling_rate=500, candidate_labels=labels)
    for r, g in zip(ref, got):
        assert [x["label"] for x in r] == [x["label"] for x in g]
        np.testing.assert_allclose([x["score"] for x in g], [x["score"] for x in r], atol=1e-5)
    # attributions integrate gradients, which a graph run by ONNX Runtime has not (was torch's "does not require
    # grad" from deep inside captum)
    with pytest.raises(TypeError, match="explain=True needs the torch model"):
        onnx_pipe(signals[0], sampling_rate=500, candidate_labels=labels, explain=True)
    # pipeline(task, model=ONNX folder) looks for torch weights the folder has not (was "no file named
    # model.safetensors"): the error (transformers wraps the loader's in a ValueError) names the ONNX route
    from transformers import pipeline

    with pytest.raises(ValueError, match="holds the ONNX export.*DBetaOnnxModel"):
        pipeline("zero-shot-ecg-classification", model=str(out), trust_remote_code=True)


def test_missing_or_replaced_graph_is_refused_naming_the_file(folders, tmp_path):
    _, out = folders
    missing = copy_folder(out, tmp_path / "missing")
    (missing / "text_encoder.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="text_encoder.onnx not found"):
        DBetaOnnxModel.from_pretrained(missing)

    swapped = copy_folder(out, tmp_path / "swapped")
    shutil.copy2(out / "ecg_encoder.int8.onnx", swapped / "ecg_encoder.onnx")
    with pytest.raises(OnnxFolderError, match=r"ecg_encoder.onnx is not the graph .*SHA-256"):
        DBetaOnnxModel.from_pretrained(swapped)

    # the text graph in the ECG graph's place, manifest rehashed: still refused by its inputs
    wrong_io = copy_folder(out, tmp_path / "wrong_io")
    shutil.copy2(out / "text_encoder.onnx", wrong_io / "ecg_encoder.onnx")
    with pytest.raises(OnnxFolderError, match=r"ecg_encoder.onnx: expected inputs \['ecg_values'\]"):
        DBetaOnnxModel.from_pretrained(wrong_io, verify_hashes=False)

    no_int8 = copy_folder(out, tmp_path / "no_int8")
    manifest = json.loads((no_int8 / MANIFEST).read_text())
    del manifest["graphs"]["ecg_int8"]
    (no_int8 / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"no ecg_int8 graph \(export with --int8\)"):
        DBetaOnnxModel.from_pretrained(no_int8, int8=True)

    outside = copy_folder(out, tmp_path / "outside")
    manifest = json.loads((outside / MANIFEST).read_text())
    manifest["graphs"]["ecg"]["file"] = "../model/ecg_encoder.onnx"
    (outside / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(OnnxFolderError, match="must be a plain file name"):
        DBetaOnnxModel.from_pretrained(outside)

    with pytest.raises(FileNotFoundError, match=f"{MANIFEST} not found"):
        DBetaOnnxModel.from_pretrained(folders[0])

    # a damaged or edited manifest was a bare KeyError or AttributeError (helper)
    def no_sha(m):
        del m["graphs"]["ecg"]["sha256"]

    def no_width(m):
        del m["hidden_size"]

    def graph_list(m):
        m["graphs"] = list(m["graphs"])

    for n, (edit, message) in enumerate(((no_sha, "graphs.ecg must have a string file and sha256"),
                                         (no_width, "hidden_size must be a positive integer"),
                                         (graph_list, "graphs must be an object"),
                                         (lambda m: None, "expected a JSON object, got a list"))):
        damaged = copy_folder(out, tmp_path / f"damaged{n}")
        manifest = json.loads((damaged / MANIFEST).read_text())
        edit(manifest)
        (damaged / MANIFEST).write_text(json.dumps([manifest] if n == 3 else manifest))
        with pytest.raises(OnnxFolderError, match=message):
            DBetaOnnxModel.from_pretrained(damaged)


def test_a_graph_that_differs_from_torch_is_not_published(folders, tmp_path, monkeypatch):
    model_dir, _ = folders
    real = export_onnx_module._ECGFeatures.forward
    monkeypatch.setattr(export_onnx_module._ECGFeatures, "forward",
                        lambda self, ecg_values: real(self, ecg_values) * 1.01)
    with pytest.raises(ParityError, match="ecg_encoder.onnx: ONNX Runtime output differs from torch"):
        export_onnx(model_dir, tmp_path / "bad")
    assert not (tmp_path / "bad" / MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        DBetaOnnxModel.from_pretrained(tmp_path / "bad")


def test_a_fused_graph_that_differs_from_torch_is_not_quantized_or_published(folders, tmp_path, monkeypatch):
    """The int8 graph is quantized from the optimizer's fused fp32 graph: that graph is held to the same 1e-4."""
    model_dir, _ = folders
    real = export_onnx_module._export_fused_ecg

    def fused_from_other_weights(model, ecg, path):
        with torch.no_grad():
            model.ecg_pooler.dense.bias.add_(0.1)
            try:
                return real(model, ecg, path)
            finally:
                model.ecg_pooler.dense.bias.sub_(0.1)

    monkeypatch.setattr(export_onnx_module, "_export_fused_ecg", fused_from_other_weights)
    with pytest.raises(ParityError, match="ecg_encoder.fused.onnx: ONNX Runtime output differs from torch"):
        export_onnx(model_dir, tmp_path / "bad", int8=True)
    assert not (tmp_path / "bad" / MANIFEST).exists()
    assert not (tmp_path / "bad" / "ecg_encoder.int8.onnx").exists()
    assert not (tmp_path / "bad" / "ecg_encoder.fused.onnx").exists()


def test_export_never_runs_the_model_folders_code(folders, tmp_path):
    """The processor is built with this repository's classes: a processing_dbeta.py planted in the model folder
    (a downloaded repo is data) is copied for the ONNX folder's users, never imported by the export."""
    model_dir = copy_folder(folders[0], tmp_path / "model")
    marker = tmp_path / "ran"
    code = (model_dir / "processing_dbeta.py").read_text()
    future = "from __future__ import annotations\n"
    assert future in code
    (model_dir / "processing_dbeta.py").write_text(
        code.replace(future, future + f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n", 1))
    export_onnx(model_dir, tmp_path / "onnx")
    assert not marker.exists()
    assert (tmp_path / "onnx" / MANIFEST).exists()


def test_cli_refuses_a_folder_without_a_model(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "config.json not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "dbeta", "architectures": ["DBetaForECGClassification"]}')
    assert main(["--model", str(tmp_path), "--output", str(tmp_path / "o")]) == 2  # was a strict-loading traceback
    assert "is a fine-tuned classifier" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_onnx_folder_never_writes_into_another_folder(folders, tmp_path, capsys):
    """--output was written into in place: a project folder's README.md and config.json were overwritten."""
    model_dir, onnx_dir = folders
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project")
    (project / "config.json").write_text("{}")
    assert main(["--model", str(model_dir), "--output", str(project)]) == 2
    assert "is not empty and holds no D-BETA export" in capsys.readouterr().err
    assert (project / "README.md").read_text() == "my project" and (project / "config.json").read_text() == "{}"
    assert main(["--model", str(model_dir), "--output", str(model_dir)]) == 2  # the model it reads
    assert "would replace" in capsys.readouterr().err and (model_dir / "model.safetensors").is_file()
    again = export_onnx(model_dir, copy_folder(onnx_dir, tmp_path / "onnx"))  # an earlier ONNX export: replaced
    assert (again / MANIFEST).is_file() and sorted(p.name for p in tmp_path.iterdir()) == [".onnx.lock", "onnx", "project"]
    download = copy_folder(model_dir, tmp_path / "download")  # a Hub download: copied into the first export, it
    (download / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # made the second one refuse the folder
    (download / "LICENSE").write_text("MIT")
    for _ in range(2):
        export_onnx(download, tmp_path / "onnx2")
    assert not (tmp_path / "onnx2" / ".gitattributes").exists()


def test_onnx_folder_loads_in_a_fresh_process_and_obeys_the_remote_code_import_rule(folders, tmp_path):
    import ast

    _, out = folders
    tree = ast.parse((out / "onnx_dbeta.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert top - {"__future__", "configuration_dbeta"} <= ALLOWED_TOP_LEVEL
    stdout = fresh_python(
        f"""
        import numpy as np
        from transformers import AutoProcessor
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        DBetaOnnxModel = get_class_from_dynamic_module("onnx_dbeta.DBetaOnnxModel", ".")  # the folder's own code
        model = DBetaOnnxModel.from_pretrained(".", int8=True)
        proc = AutoProcessor.from_pretrained(".", trust_remote_code=True)
        ecg = np.random.default_rng(0).standard_normal((12, 5000)).astype(np.float32) * 0.3
        b = proc(ecg=ecg, sampling_rate=500, text=["sinus rhythm"])
        print(tuple(model(**b)["logits_per_ecg"].shape))
        """, cwd=out, hf_home=tmp_path / "hf")
    assert stdout.strip().endswith("(1, 1)")


def test_misspelt_or_unsupported_keywords_are_refused(folders):
    """The ONNX twin swallowed any keyword (`model(ecg_value=x)` gave an empty dict, `.to(torch.float16)` or
    `return_loss=True` were ignored); like DBetaModel it now refuses them."""
    onnx_model = DBetaOnnxModel.from_pretrained(folders[1])
    ecg = torch.zeros(1, 12, 5000)
    with pytest.raises(TypeError, match="ecg_value"):
        onnx_model(ecg_value=ecg)
    for asked in ("return_loss", "output_attentions", "output_hidden_states"):
        with pytest.raises(ValueError, match=asked):
            onnx_model(ecg_values=ecg, **{asked: True})
    with pytest.raises(ValueError, match="float32"):
        onnx_model.to(torch.float16)
    with pytest.raises(ValueError, match="float32"):
        onnx_model.to("cpu", dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="memory_format"):
        onnx_model.to("cpu", memory_format=torch.channels_last)
    assert onnx_model.to("cpu", torch.float32) is onnx_model


def test_int8_quality_refuses_an_onnx_folder_of_other_weights(folders, torch_model, tmp_path, capsys):
    """eval.int8_quality --onnx took a folder exported before the model changed and reported the drift between the
    two models as int8's cost (helper: minimum cosine 0.9906 against 0.99869). The manifest records its source."""
    from safetensors.torch import load_file, save_file

    from eval.int8_quality import main as int8_quality
    from train.export_onnx import source_fingerprint

    model_dir, out = folders
    assert json.loads((out / MANIFEST).read_text())["source_weights"] == source_fingerprint(torch_model)
    changed = copy_folder(model_dir, tmp_path / "changed")
    state = load_file(changed / "model.safetensors")
    state["ecg_projection.weight"] = state["ecg_projection.weight"] * 1.05
    save_file(state, changed / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SystemExit) as stop:
        int8_quality(["--model", str(changed), "--onnx", str(out), "--data-root", str(tmp_path / "unread")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{out} was not exported from {changed}" in err, err
    # --output inside the model folder replaced its config.json (helper: /tmp/hK/repro/int8_quality_overwrites_
    # model.sh); --fractions 0 failed after every feature was extracted; --onnx without an int8 graph: a traceback
    config = (changed / "config.json").read_bytes()
    for argv, said in ((["--output", str(changed / "config.json")], "would replace a file in"),
                       (["--output", str(tmp_path / "quality.txt")], "must be a .json file"),
                       (["--fractions", "0"], "a fraction must be in (0, 1]")):
        with pytest.raises(SystemExit) as stop:
            int8_quality(["--model", str(changed), "--data-root", str(tmp_path / "unread"), *argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and said in err, (argv, err)
    assert (changed / "config.json").read_bytes() == config
    fp32_only = tmp_path / "fp32-onnx"
    assert main(["--model", str(model_dir), "--output", str(fp32_only)]) == 0
    with pytest.raises(SystemExit) as stop:
        int8_quality(["--model", str(model_dir), "--onnx", str(fp32_only), "--data-root", str(tmp_path / "unread")])
    assert stop.value.code == 2 and "lists no ecg_int8 graph" in capsys.readouterr().err
