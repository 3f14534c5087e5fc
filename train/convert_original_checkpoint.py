"""Convert the authors' released D-BETA checkpoint (fairseq-style `{"model": state_dict}`) into this package.

    python -m train.convert_original_checkpoint --checkpoint sample.pt --output dbeta-converted \
        [--config their_config.json] [--text-config t5_config.json] [--tokenizer DIR]

Every key is mapped explicitly. The conversion fails, listing the keys, if any source key has no mapping, any
model weight is left unfilled, or a shape disagrees: it never falls back to random weights. Architecture sizes are
read from the weights; head counts, strides and the MEM settings come from the authors' config when given, else
from the released model's values.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

import torch

from dbeta.configuration_dbeta import FLAN_T5_BASE, DBetaConfig, DBetaECGConfig
from dbeta.modeling_dbeta import DBetaForPreTraining, sinusoidal_positions

# Source keys that carry no information for inference or training here.
DROPPED_KEYS = {
    "ecg_encoder.mask_emb",  # wav2vec2 time-masking embedding; unused (apply_mask=False)
    "mim_head.decoder_pos_embed.pe",  # a fixed sinusoid, recomputed on the fly (checked before dropping)
}

_FUSION_PARTS = [
    ("attention.self.query", "self_attn.q_proj"),
    ("attention.self.key", "self_attn.k_proj"),
    ("attention.self.value", "self_attn.v_proj"),
    ("attention.output.dense", "self_attn.out_proj"),
    ("attention.output.LayerNorm", "self_attn_layer_norm"),
    ("crossattention.self.query", "cross_attn.q_proj"),
    ("crossattention.self.key", "cross_attn.k_proj"),
    ("crossattention.self.value", "cross_attn.v_proj"),
    ("crossattention.output.dense", "cross_attn.out_proj"),
    ("crossattention.output.LayerNorm", "cross_attn_layer_norm"),
    ("intermediate.dense", "fc1"),
    ("output.dense", "fc2"),
    ("output.LayerNorm", "final_layer_norm"),
]

_PREFIXES = [
    ("ecg_encoder.feature_extractor.conv_layers.", None),  # handled by regex below
    ("ecg_encoder.layer_norm.", "ecg_model.feature_layer_norm."),
    ("ecg_encoder.post_extract_proj.", "ecg_model.feature_projection."),
    ("ecg_encoder.conv_pos.pos_conv.0.", "ecg_model.pos_conv."),
    ("ecg_encoder.encoder.layer_norm.", "ecg_model.layer_norm."),
    ("ecg_encoder.encoder.layers.", "ecg_model.layers."),
    ("language_encoder.", "text_model."),
    ("multi_modal_ecg_proj.", "ecg_projection."),
    ("multi_modal_language_proj.", "text_projection."),
    ("unimodal_ecg_pooler.", "ecg_pooler."),
    ("unimodal_language_pooler.", "text_pooler."),
    ("multi_modal_ecg_pooler.", "fused_ecg_pooler."),
    ("multi_modal_language_pooler.", "fused_text_pooler."),
    ("modality_type_embeddings.", "modality_type_embeddings."),
    ("itm_head.fc.", "etm_head.fc."),
    ("mlm_head.transform.dense.", "mlm_head.dense."),
    ("mlm_head.transform.LayerNorm.", "mlm_head.layer_norm."),
    ("mlm_head.decoder.", "mlm_head.decoder."),
    ("mim_head.decoder_embed.", "mem_head.embed."),
    ("mim_head.decoder_norm.", "mem_head.norm."),
    ("mim_head.decoder_pred.", "mem_head.pred."),
]


class ConversionError(RuntimeError):
    pass


# The tensors whose shapes give the config (config_from_checkpoint): a checkpoint without one of them (an
# ECG-only fine-tune has no MEM head or fusion layers) is not a pretrained D-BETA.
CONFIG_KEYS = (
    "ecg_encoder.post_extract_proj.weight",
    "ecg_encoder.feature_extractor.conv_layers.0.0.weight",
    "ecg_encoder.conv_pos.pos_conv.0.weight_v",
    "ecg_encoder.encoder.layers.0.fc1.weight",
    "modality_type_embeddings.weight",
    "mim_head.decoder_embed.weight",
    "multi_modal_ecg_layers.0.intermediate.dense.weight",
)


def map_key(key: str, value: torch.Tensor) -> dict:
    """One source key -> {target key: tensor}; {} if the key has no mapping."""
    exact = {
        "class_embedding": "ecg_model.class_embedding",
        # weight norm as torch's parametrization, the form every supported transformers version loads as is
        "ecg_encoder.conv_pos.pos_conv.0.weight_g": "ecg_model.pos_conv.parametrizations.weight.original0",
        "ecg_encoder.conv_pos.pos_conv.0.weight_v": "ecg_model.pos_conv.parametrizations.weight.original1",
        "mlm_head.bias": "mlm_head.bias",
        "mim_head.mask_token": "mem_head.mask_token",
    }
    if key in exact:
        return {exact[key]: value}
    m = re.fullmatch(r"ecg_encoder\.feature_extractor\.conv_layers\.(\d+)\.(\d+)\.(weight|bias)", key)
    if m:
        layer, part, kind = m.groups()
        sub = {"0": "conv", "2": "norm"}.get(part)
        return {f"ecg_model.conv_layers.{layer}.{sub}.{kind}": value} if sub else {}
    m = re.fullmatch(r"multi_modal_(ecg|language)_layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        stream, layer, part, kind = m.groups()
        target = dict(_FUSION_PARTS).get(part)
        stream = "ecg" if stream == "ecg" else "text"
        return {f"fusion.{stream}_layers.{layer}.{target}.{kind}": value} if target else {}
    m = re.fullmatch(r"mim_head\.decoder\.resblocks\.(\d+)\.(.+)", key)
    if m:
        block, rest = m.groups()
        prefix = f"mem_head.blocks.{block}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            q, k, v = value.chunk(3, dim=0)
            return {f"{prefix}attn.{n}_proj.{kind}": t for n, t in zip("qkv", (q, k, v))}
        renames = {"attn.out_proj.": "attn.out_proj.", "ln_1.": "ln_1.", "ln_2.": "ln_2.",
                   "mlp.c_fc.": "fc1.", "mlp.c_proj.": "fc2."}
        for src, dst in renames.items():
            if rest.startswith(src):
                return {prefix + dst + rest[len(src):]: value}
        return {}
    for src, dst in _PREFIXES:
        if dst is not None and key.startswith(src):
            return {dst + key[len(src):]: value}
    return {}


def _parse_conv_layers(spec) -> list:
    """Parse fairseq's conv spec such as "[(256, 2, 2)] * 4" without eval."""
    if isinstance(spec, list):
        return [tuple(x) for x in spec]
    m = re.fullmatch(r"\s*\[\s*(\(.*?\))\s*\]\s*\*\s*(\d+)\s*", spec)
    if m:
        return [tuple(ast.literal_eval(m.group(1)))] * int(m.group(2))
    return [tuple(x) for x in ast.literal_eval(spec)]


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


# Settings of the authors' code that this package's model does not implement, with the one value it does: a
# checkpoint trained otherwise would convert to a model computing something else.
SUPPORTED_AUTHORS_SETTINGS = {"layer_norm_first": False, "normalize": False, "filter": False,
                              "extractor_mode": "default"}


def config_from_checkpoint(state: dict, authors_config: dict | None, text_config: dict | None) -> DBetaConfig:
    """Build our config from the weights' shapes, completed by the authors' config (or the released defaults)."""
    if authors_config is not None and not isinstance(authors_config, dict):
        raise ConversionError(f"the authors' config must be a JSON object ({{'model': {{...}}}}), got "
                              f"{type(authors_config).__name__}")
    a = dict(authors_config or {})
    unsupported = [f"{k}={a[k]!r} (supported: {v!r})" for k, v in SUPPORTED_AUTHORS_SETTINGS.items()
                   if k in a and a[k] != v]
    if unsupported:
        raise ConversionError("the authors' config sets what this package's model does not implement (post-LN "
                              "encoder, raw millivolt input without the authors' z-score or filter, the default "
                              "conv extractor): " + ", ".join(unsupported))
    conv_shapes = [state[f"ecg_encoder.feature_extractor.conv_layers.{i}.0.weight"].shape
                   for i in range(_count(state, r"ecg_encoder\.feature_extractor\.conv_layers\.(\d+)\."))]
    if "conv_feature_layers" in a:
        conv_layers = _parse_conv_layers(a["conv_feature_layers"])
    else:  # the released model uses stride == kernel
        conv_layers = [(s[0], s[2], s[2]) for s in conv_shapes]
    for (channels, kernel, _), shape in zip(conv_layers, conv_shapes):
        if (channels, kernel) != (shape[0], shape[2]):
            raise ConversionError(f"conv_feature_layers {conv_layers} disagree with the weights {conv_shapes}")
    hidden = state["ecg_encoder.post_extract_proj.weight"].shape[0]
    pos_v = state["ecg_encoder.conv_pos.pos_conv.0.weight_v"]
    ecg = DBetaECGConfig(
        num_leads=conv_shapes[0][1],
        conv_layers=conv_layers,
        conv_bias=bool(a.get("conv_bias", False)),
        hidden_size=hidden,
        num_hidden_layers=_count(state, r"ecg_encoder\.encoder\.layers\.(\d+)\."),
        num_attention_heads=int(a.get("encoder_attention_heads", 12)),
        intermediate_size=state["ecg_encoder.encoder.layers.0.fc1.weight"].shape[0],
        conv_pos_kernel=pos_v.shape[2],
        conv_pos_groups=hidden // pos_v.shape[1],
        hidden_dropout=float(a.get("dropout", 0.1)),
        attention_dropout=float(a.get("attention_dropout", 0.1)),
        activation_dropout=float(a.get("activation_dropout", 0.0)),
        input_dropout=float(a.get("dropout_input", 0.1)),
    )
    text = dict(text_config) if text_config else dict(FLAN_T5_BASE)
    text.setdefault("model_type", "t5")
    width = state["modality_type_embeddings.weight"].shape[1]
    mem_dim = state["mim_head.decoder_embed.weight"].shape[0]
    return DBetaConfig(
        ecg_config=ecg,
        text_config=text,
        hidden_size=width,
        num_fusion_layers=_count(state, r"multi_modal_ecg_layers\.(\d+)\."),
        fusion_num_heads=int(a.get("num_heads", 12)),
        fusion_intermediate_size=state["multi_modal_ecg_layers.0.intermediate.dense.weight"].shape[0],
        fusion_dropout=float(a.get("drop_rate", 0.1)),
        mem_layer=int(a.get("mem_layer", 3)),
        mem_mask_ratio=float(a.get("mem_prob", 0.75)),
        mem_decoder_hidden_size=mem_dim,
        mem_decoder_layers=_count(state, r"mim_head\.decoder\.resblocks\.(\d+)\."),
        mem_decoder_heads=int(a.get("mem_decoder_num_heads", 6)),
        mem_decoder_max_positions=state.get("mim_head.decoder_pos_embed.pe", torch.empty(1, 512)).shape[1],
        mem_positions_see_hidden=True,  # the authors mask after the convolutional positions
        ets_mode="fixed",
    )


def load_authors_state(path: str | Path) -> dict:
    """Read the authors' checkpoint safely (no pickle code execution)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: expected {{'model': state_dict}} or a state_dict of tensors")
    missing = [k for k in CONFIG_KEYS if k not in state]
    if missing:
        raise ConversionError(f"{path}: not a D-BETA pretraining checkpoint (missing {', '.join(missing)}; an "
                              "ECG-only fine-tune has no MEM head or fusion layers to convert)")
    return state


def convert_state_dict(state: dict, model: torch.nn.Module) -> dict:
    """Map every source key onto `model`'s keys; raise listing anything unmapped, unfilled or misshapen."""
    pe = state.get("mim_head.decoder_pos_embed.pe")
    if pe is not None:
        expected = sinusoidal_positions(pe.shape[1], pe.shape[2])
        # a checkpoint saved in half precision holds the sinusoid rounded to its precision (2.4e-4 in fp16)
        tolerance = max(1e-5, 2 * torch.finfo(pe.dtype).eps) if pe.is_floating_point() else 1e-5
        diff = float((pe[0].float() - expected).abs().max())
        if diff > tolerance:
            raise ConversionError(f"mim_head.decoder_pos_embed.pe is not the standard sinusoid (max difference "
                                  f"{diff:.3g} in {pe.dtype}, above {tolerance:.3g}); cannot drop it")
    mapped, unmapped = {}, []
    for key, value in state.items():
        if key in DROPPED_KEYS:
            continue
        out = map_key(key, value)
        if not out:
            unmapped.append(key)
        mapped.update(out)
    target = model.state_dict()
    # The strides and head counts no tensor's shape shows: the model built from the authors' config holds them, and
    # the converted weights record them so that a later edit of config.json is caught at loading.
    mapped.update({k: v.clone() for k, v in target.items() if k.rsplit(".", 1)[-1] == "geometry"})
    # T5's encoder embedding is tied to `shared`; fill it from the shared table if the file stores only one.
    tied = "text_model.encoder.embed_tokens.weight"
    if tied in target and tied not in mapped and "text_model.shared.weight" in mapped:
        mapped[tied] = mapped["text_model.shared.weight"]
    unfilled = sorted(set(target) - set(mapped))
    extra = sorted(set(mapped) - set(target))
    misshapen = [f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
                 for k in mapped if k in target and mapped[k].shape != target[k].shape]
    problems = []
    if unmapped:
        problems.append("source keys with no mapping:\n  " + "\n  ".join(unmapped))
    if extra:
        problems.append("mapped keys the model does not have:\n  " + "\n  ".join(extra))
    if unfilled:
        problems.append("model weights the checkpoint does not fill:\n  " + "\n  ".join(unfilled))
    if misshapen:
        problems.append("shape mismatches:\n  " + "\n  ".join(misshapen))
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        problems.append("non-finite (NaN or infinite) values in:\n  " + "\n  ".join(non_finite))
    if problems:
        raise ConversionError("conversion failed:\n" + "\n".join(problems))
    return mapped


def convert(checkpoint, authors_config=None, text_config=None) -> DBetaForPreTraining:
    state = load_authors_state(checkpoint)
    try:
        config = config_from_checkpoint(state, authors_config, text_config)
    except ValueError as err:  # a geometry the defaults do not fit (the released model's 12 heads on width 64)
        hint = "" if authors_config else " (no --config given: the released model's defaults were assumed; pass " \
                                         "the authors' config.json of this checkpoint)"
        raise ConversionError(f"{checkpoint}: {err}{hint}") from None
    model = DBetaForPreTraining(config)
    try:
        mapped = convert_state_dict(state, model)
    except ConversionError as err:
        raise ConversionError(f"{checkpoint}: {err}") from None
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _read_json(path, what):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path}: cannot read the {what} ({err})") from err


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the authors' .pt file")
    parser.add_argument("--output", required=True, help="folder to write the converted model into")
    parser.add_argument("--config", help="the authors' config.json ({'model': {...}}); optional")
    parser.add_argument("--text-config", help="JSON config of the text encoder (default: google/flan-t5-base)")
    parser.add_argument("--tokenizer", help="tokenizer folder (e.g. google/flan-t5-base) to save as the processor")
    args = parser.parse_args(argv)

    from train.export import ExportTargetError, check_export_target, export_model

    try:
        check_export_target(args.output, protect=(args.checkpoint, args.config, args.text_config, args.tokenizer))
        processor = None
        if args.tokenizer:  # before the conversion: a wrong folder is named at once, not after the work
            from train.export import build_processor

            try:
                processor = build_processor(args.tokenizer)
            except (OSError, ValueError) as err:  # neither a folder nor a reachable Hub repo id
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConversionError(f"--tokenizer {args.tokenizer}: cannot load a tokenizer from this folder or "
                                      f"Hub repo id ({first})") from None
        authors = _read_json(args.config, "authors' config")
        if isinstance(authors, dict):
            authors = authors.get("model", authors)
        model = convert(args.checkpoint, authors, _read_json(args.text_config, "text config"))
    except (ConversionError, ExportTargetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2  # bad input, as for every other tool of the package
    export_model(model, args.output, processor=processor, card_facts={"source": f"converted from {args.checkpoint}"})
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.checkpoint} -> {args.output} ({n / 1e6:.1f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
