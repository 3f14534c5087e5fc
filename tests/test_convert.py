"""The authors' checkpoint converter: CLI end to end, refusal of damaged checkpoints, and the full-size layout."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from dbeta.configuration_dbeta import DBetaConfig
from dbeta.modeling_dbeta import DBetaForPreTraining, sinusoidal_positions
from train.convert_original_checkpoint import ConversionError, convert, main


def _fixture(shared_dir):
    return shared_dir / "fixtures" / "authors-tiny"


def test_cli_writes_a_loadable_folder(shared_dir, tmp_path):
    fx = _fixture(shared_dir)
    out = tmp_path / "converted"
    code = main(["--checkpoint", str(fx / "checkpoint.pt"), "--config", str(fx / "config.json"),
                 "--text-config", str(fx / "t5_config.json"), "--output", str(out)])
    assert code == 0 and (out / "model.safetensors").is_file()
    from safetensors.torch import load_file

    authors = json.loads((fx / "config.json").read_text())["model"]
    weights = load_file(out / "model.safetensors")  # the geometry no weight shape shows, from the authors' config
    assert weights["ecg_model.geometry"].tolist() == [authors["encoder_attention_heads"], 2, 2, 2, 2]
    assert weights["fusion.geometry"].tolist() == [authors["num_heads"]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = (
        "import torch; from safetensors.torch import load_file\n"
        "from transformers import AutoModel, AutoModelForPreTraining\n"
        f"io = load_file({str(fx / 'io.safetensors')!r})\n"
        f"m = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()\n"
        f"p = AutoModelForPreTraining.from_pretrained({str(out)!r}, trust_remote_code=True).eval()\n"
        "with torch.no_grad():\n"
        "    assert (m.get_ecg_features(io['ecg']).pooler_output - io['ecg_features']).abs().max() < 1e-5\n"
        "    e = p.get_matching_logits(io['ecg'], io['match_input_ids'], io['match_attention_mask'])\n"
        "    assert (e - io['etm_logits']).abs().max() < 1e-5\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_damaged_checkpoints_are_refused_with_the_keys_named(shared_dir, tmp_path):
    fx = _fixture(shared_dir)
    state = torch.load(fx / "checkpoint.pt", weights_only=True)["model"]
    text = json.loads((fx / "t5_config.json").read_text())
    authors = json.loads((fx / "config.json").read_text())["model"]

    missing = dict(state)
    del missing["multi_modal_ecg_layers.1.output.dense.weight"]
    torch.save({"model": missing}, tmp_path / "missing.pt")
    with pytest.raises(ConversionError, match=r"fusion\.ecg_layers\.1\.fc2\.weight"):
        convert(tmp_path / "missing.pt", authors, text)

    extra = dict(state, **{"sep_embedding.weight": torch.zeros(3)})
    torch.save({"model": extra}, tmp_path / "extra.pt")
    with pytest.raises(ConversionError, match="sep_embedding.weight"):
        convert(tmp_path / "extra.pt", authors, text)

    with pytest.raises(ConversionError, match="shape mismatches"):
        convert(fx / "checkpoint.pt", authors, dict(text, num_heads=8, d_kv=8))  # wrong text config

    for key in ("mim_head.decoder_embed.weight", "multi_modal_ecg_layers.0.intermediate.dense.weight",
                "ecg_encoder.conv_pos.pos_conv.0.weight_v"):  # read for the config: named, not a KeyError
        torch.save({"model": {k: v for k, v in state.items() if k != key}}, tmp_path / "part.pt")
        with pytest.raises(ConversionError, match=f"part.pt: not a D-BETA pretraining checkpoint \\(missing {key}"):
            convert(tmp_path / "part.pt", authors, text)

    # settings the model does not implement converted without a word to a model computing something else
    for key, value in (("layer_norm_first", True), ("normalize", True)):
        with pytest.raises(ConversionError, match=rf"does not implement .*{key}={value!r} \(supported: False\)"):
            convert(fx / "checkpoint.pt", dict(authors, **{key: value}), text)
    with pytest.raises(ConversionError, match="must be a JSON object"):  # a list: AttributeError before
        convert(fx / "checkpoint.pt", [authors], text)
    with pytest.raises(ConversionError, match=r"checkpoint.pt: .*divisible.*no --config given"):  # 12 heads on 64
        convert(fx / "checkpoint.pt", None, text)
    half = {k: (v.half() if k == "mim_head.decoder_pos_embed.pe" else v) for k, v in state.items()}
    torch.save({"model": half}, tmp_path / "half.pt")  # refused as "not the standard sinusoid": fp16 rounding
    convert(tmp_path / "half.pt", authors, text)
    shifted = dict(state, **{"mim_head.decoder_pos_embed.pe": state["mim_head.decoder_pos_embed.pe"] + 0.01})
    torch.save({"model": shifted}, tmp_path / "shifted.pt")
    with pytest.raises(ConversionError, match=r"not the standard sinusoid \(max difference 0.01 in torch.float32"):
        convert(tmp_path / "shifted.pt", authors, text)

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="garbage.pt"):
        convert(tmp_path / "garbage.pt", authors, text)
    with pytest.raises(ConversionError, match="not found"):
        convert(tmp_path / "absent.pt", authors, text)


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    """Exit 2 for bad input, as every other tool (it was 1)."""
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    assert main(["--checkpoint", str(tmp_path / "bad.pt"), "--output", str(tmp_path / "o")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a tokenizer folder that is not there: four chained Hub tracebacks, after the conversion's work
    assert main(["--checkpoint", str(tmp_path / "bad.pt"), "--output", str(tmp_path / "o"), "--tokenizer",
                 str(tmp_path / "no-tokenizer")]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer" in err and "cannot load a tokenizer" in err and "Traceback" not in err


_INVERSE = [
    (r"^ecg_model\.class_embedding$", "class_embedding"),
    (r"^ecg_model\.conv_layers\.(\d+)\.conv\.", r"ecg_encoder.feature_extractor.conv_layers.\1.0."),
    (r"^ecg_model\.conv_layers\.(\d+)\.norm\.", r"ecg_encoder.feature_extractor.conv_layers.\1.2."),
    (r"^ecg_model\.feature_layer_norm\.", "ecg_encoder.layer_norm."),
    (r"^ecg_model\.feature_projection\.", "ecg_encoder.post_extract_proj."),
    (r"^ecg_model\.pos_conv\.parametrizations\.weight\.original0$", "ecg_encoder.conv_pos.pos_conv.0.weight_g"),
    (r"^ecg_model\.pos_conv\.parametrizations\.weight\.original1$", "ecg_encoder.conv_pos.pos_conv.0.weight_v"),
    (r"^ecg_model\.pos_conv\.", "ecg_encoder.conv_pos.pos_conv.0."),
    (r"^ecg_model\.layer_norm\.", "ecg_encoder.encoder.layer_norm."),
    (r"^ecg_model\.layers\.", "ecg_encoder.encoder.layers."),
    (r"^text_model\.", "language_encoder."),
    (r"^ecg_projection\.", "multi_modal_ecg_proj."),
    (r"^text_projection\.", "multi_modal_language_proj."),
    (r"^ecg_pooler\.", "unimodal_ecg_pooler."),
    (r"^text_pooler\.", "unimodal_language_pooler."),
    (r"^fused_ecg_pooler\.", "multi_modal_ecg_pooler."),
    (r"^fused_text_pooler\.", "multi_modal_language_pooler."),
    (r"^etm_head\.fc\.", "itm_head.fc."),
    (r"^mlm_head\.dense\.", "mlm_head.transform.dense."),
    (r"^mlm_head\.layer_norm\.", "mlm_head.transform.LayerNorm."),
    (r"^mem_head\.mask_token$", "mim_head.mask_token"),
    (r"^mem_head\.embed\.", "mim_head.decoder_embed."),
    (r"^mem_head\.norm\.", "mim_head.decoder_norm."),
    (r"^mem_head\.pred\.", "mim_head.decoder_pred."),
    (r"^mem_head\.blocks\.(\d+)\.attn\.out_proj\.", r"mim_head.decoder.resblocks.\1.attn.out_proj."),
    (r"^mem_head\.blocks\.(\d+)\.(ln_[12])\.", r"mim_head.decoder.resblocks.\1.\2."),
    (r"^mem_head\.blocks\.(\d+)\.fc1\.", r"mim_head.decoder.resblocks.\1.mlp.c_fc."),
    (r"^mem_head\.blocks\.(\d+)\.fc2\.", r"mim_head.decoder.resblocks.\1.mlp.c_proj."),
]
_FUSION = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
           "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
           "self_attn_layer_norm": "attention.output.LayerNorm", "cross_attn.q_proj": "crossattention.self.query",
           "cross_attn.k_proj": "crossattention.self.key", "cross_attn.v_proj": "crossattention.self.value",
           "cross_attn.out_proj": "crossattention.output.dense",
           "cross_attn_layer_norm": "crossattention.output.LayerNorm", "fc1": "intermediate.dense",
           "fc2": "output.dense", "final_layer_norm": "output.LayerNorm"}


def to_authors_layout(state: dict) -> dict:
    """Our state dict written back in the authors' key layout (what their released file looks like)."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] == "geometry":  # ours only: the authors' file records no geometry
            continue
        m = re.fullmatch(r"fusion\.(text|ecg)_layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m:
            stream = "language" if m.group(1) == "text" else "ecg"
            out[f"multi_modal_{stream}_layers.{m.group(2)}.{_FUSION[m.group(3)]}.{m.group(4)}"] = value
            continue
        m = re.fullmatch(r"mem_head\.blocks\.(\d+)\.attn\.([qkv])_proj\.(weight|bias)", key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _INVERSE:
            if re.search(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            out[key] = value  # mlm_head.bias, mlm_head.decoder.weight, modality_type_embeddings.weight
    for (block, kind), parts in qkv.items():
        out[f"mim_head.decoder.resblocks.{block}.attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def test_full_size_layout_converts_with_the_default_text_config(tmp_path):
    """The released checkpoint's layout at full size (768 wide, flan-t5-base text encoder) converts exactly."""
    torch.manual_seed(0)
    source = DBetaForPreTraining(DBetaConfig())
    state = to_authors_layout(source.state_dict())
    state["ecg_encoder.mask_emb"] = torch.zeros(768)
    state["mim_head.decoder_pos_embed.pe"] = sinusoidal_positions(512, 384)[None]
    torch.save({"model": state}, tmp_path / "full.pt")
    del state
    converted = convert(tmp_path / "full.pt")  # no config, no text config: the released model's defaults
    cfg = converted.config
    assert (cfg.ecg_config.hidden_size, cfg.ecg_config.num_hidden_layers, cfg.num_fusion_layers) == (768, 8, 6)
    assert cfg.mem_decoder_layers == 4 and cfg.text_config.d_model == 768
    n_params = sum(p.numel() for p in converted.parameters())
    assert 300e6 < n_params < 340e6, n_params
    theirs, ours = source.state_dict(), converted.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path):
    from tests.tiny import tiny_config, tiny_t5_text_config

    text = tiny_t5_text_config(64)
    state = to_authors_layout(DBetaForPreTraining(tiny_config(text)).state_dict())
    state["multi_modal_ecg_layers.0.output.dense.weight"][0, 0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pt")
    authors = {"encoder_attention_heads": 4, "num_heads": 4, "mem_decoder_num_heads": 2, "mem_layer": 1}
    bad_key = r"non-finite[\s\S]*multi_modal_ecg_layers\.0\.output\.dense\.weight"
    with pytest.raises(ConversionError, match=bad_key) as err:
        convert(tmp_path / "nan.pt", authors, text)
    assert "nan.pt" in str(err.value)
    (tmp_path / "authors.json").write_text(json.dumps({"model": authors}))
    (tmp_path / "text.json").write_text(json.dumps(text))
    assert main(["--checkpoint", str(tmp_path / "nan.pt"), "--config", str(tmp_path / "authors.json"),
                 "--text-config", str(tmp_path / "text.json"), "--output", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
