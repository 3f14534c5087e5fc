"""D-BETA: contrastive masked ECG-text auto-encoder (Pham, Saeed, Ma; arXiv 2410.02131).

Classes:
    DBetaModel                   ECG and text encoders, fusion, `get_ecg_features`, `get_text_features`,
                                 `get_matching_logits`; `forward` gives both embeddings and their similarity logits.
    DBetaForPreTraining          + the MEM decoder, MLM and ETM heads and the four losses.
    DBetaForECGClassification    ECG path + a linear classifier (single- or multi-label), for `Trainer`.

This file is remote code: at module level it imports only torch, transformers and the standard library.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoModel, PreTrainedModel, T5EncoderModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput

# transformers 4.57 (the last 4.x) and 5.x are supported; older 4.x lack the attention interface and the
# gradient-checkpointing layer this file uses, and would load the weights differently.
_TRANSFORMERS_MAJOR_MINOR = tuple(int(x) for x in transformers.__version__.split(".")[:2])
if _TRANSFORMERS_MAJOR_MINOR < (4, 57):
    raise ImportError(f"D-BETA needs transformers>=4.57 (5.x recommended); found {transformers.__version__}. "
                      f"Run: pip install -U 'transformers>=4.57'")

try:
    from transformers import initialization as init
except ImportError:  # transformers 4.x: missing weights are initialised in place, so torch's own init functions do
    from types import SimpleNamespace

    def _copy_(tensor, other):
        with torch.no_grad():
            return tensor.copy_(other)

    init = SimpleNamespace(normal_=nn.init.normal_, zeros_=nn.init.zeros_, uniform_=nn.init.uniform_,
                           constant_=nn.init.constant_, kaiming_normal_=nn.init.kaiming_normal_,
                           xavier_uniform_=nn.init.xavier_uniform_, copy_=_copy_)

from .configuration_dbeta import ECG_POOLINGS, TEXT_POOLINGS, DBetaConfig, DBetaECGConfig


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DBetaOutput(ModelOutput):
    """ECG and text embeddings (the unimodal 768-d features), their similarity logits and, with `return_loss`, the
    ECG-text sigmoid loss over the batch (every pair on the diagonal matched). As CLIP's output, the encoders' own
    outputs (hidden states and attentions when asked for) are in `ecg_model_output` and `text_model_output`."""

    loss: Optional[torch.FloatTensor] = None
    logits_per_ecg: Optional[torch.FloatTensor] = None
    logits_per_text: Optional[torch.FloatTensor] = None
    ecg_embeds: Optional[torch.FloatTensor] = None
    text_embeds: Optional[torch.FloatTensor] = None
    ecg_model_output: Optional[BaseModelOutputWithPooling] = None
    text_model_output: Optional[BaseModelOutputWithPooling] = None

    def to_tuple(self):
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in super().to_tuple())


@dataclass
class DBetaPreTrainingOutput(ModelOutput):
    """The weighted total loss, each objective's loss, the logits behind them, and the encoders' and fusion
    layers' hidden states and attentions when asked for (ECG ones over the visible tokens only)."""

    loss: Optional[torch.FloatTensor] = None
    mem_loss: Optional[torch.FloatTensor] = None
    mlm_loss: Optional[torch.FloatTensor] = None
    etm_loss: Optional[torch.FloatTensor] = None
    ets_loss: Optional[torch.FloatTensor] = None
    etm_logits: Optional[torch.FloatTensor] = None
    etm_accuracy: Optional[torch.FloatTensor] = None
    mlm_logits: Optional[torch.FloatTensor] = None
    mem_pred: Optional[torch.FloatTensor] = None
    mem_mask: Optional[torch.FloatTensor] = None
    ecg_embeds: Optional[torch.FloatTensor] = None
    text_embeds: Optional[torch.FloatTensor] = None
    ecg_model_output: Optional[BaseModelOutput] = None
    text_model_output: Optional[BaseModelOutput] = None
    fusion_hidden_states: Optional[tuple] = None
    fusion_attentions: Optional[tuple] = None

    def to_tuple(self):
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in super().to_tuple())


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention: [B, H, N, d] inputs, an additive mask; returns ([B, N, H, d], weights [B, H, N, M])."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class DBetaAttention(nn.Module):
    """Multi-head attention (self or cross) through transformers' attention interface: `config._attn_implementation`
    picks eager (which can return the weights) or sdpa (the default)."""

    def __init__(self, config, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.is_causal = False
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, context: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        context = hidden_states if context is None else context
        q = self._heads(self.q_proj(hidden_states))
        k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        implementation = self.config._attn_implementation or "eager"
        if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        else:  # transformers 4.57
            attention = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling,
                                 dropout=self.dropout if self.training else 0.0)
        b, n = out.shape[:2]
        return self.out_proj(out.reshape(b, n, -1)), weights


class DBetaFp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 (keeps bf16/fp16 runs stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.type_as(x)


class DBetaFp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (the MEM decoder's norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.type_as(x)


class DBetaConvLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm = DBetaFp32GroupNorm(out_channels, out_channels, affine=True) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.gelu(x)


class DBetaPositionalConv(nn.Conv1d):
    """Convolutional relative position encoding with weight normalisation over the kernel axis.

    weight = g * v / ||v||, the norm taken over output and input channels for each kernel tap, as in wav2vec 2.0.
    Stored as torch's weight-norm parametrization (`parametrizations.weight.original0` = g [1, 1, K], `original1`
    = v), the form transformers 4.57 and 5.x both load as is; both loaders rename the older `weight_g` /
    `weight_v` keys (earlier exports, the authors' checkpoint) to it.
    """

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.kernel = kernel
        nn.utils.parametrizations.weight_norm(self, name="weight", dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, D]
        y = F.conv1d(x.transpose(1, 2), self.weight.to(x.dtype), self.bias.to(x.dtype),
                     padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:  # "same" padding for an even kernel: the last step is one too many
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class DBetaECGLayer(GradientCheckpointingLayer):
    """Post-LN transformer layer (wav2vec 2.0 with layer_norm_first=False)."""

    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        d = config.hidden_size
        self.self_attn = DBetaAttention(config, d, config.num_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        attn, weights = self.self_attn(hidden_states)
        x = self.self_attn_layer_norm(hidden_states + self.dropout(attn))
        h = self.activation_dropout(F.gelu(self.fc1(x).float()).type_as(x))
        return self.final_layer_norm(x + self.dropout(self.fc2(h))), weights


def _register_geometry(module: nn.Module, fields: dict) -> None:
    """Keep config values that change what `module` computes but no weight's shape (conv strides, head counts) in
    the weights too, as the persistent int64 buffer `geometry` (saved in model.safetensors): loading compares them
    with config.json (`DBetaPreTrainedModel._check_loaded`), which a weight shape check cannot."""
    module._geometry_fields = dict(fields)
    module.register_buffer("geometry", torch.tensor(list(fields.values()), dtype=torch.int64))


class DBetaRecord(nn.Module):
    """Nothing but a `geometry` buffer: settings of a part whose modules are not this package's (the text encoder
    is a transformers model) recorded in the weights beside it."""

    def __init__(self, fields: dict):
        super().__init__()
        _register_geometry(self, fields)


def _eps_code(eps) -> int:
    """A layer-norm epsilon as a `geometry` integer: round(1000 x log10), 1e-12 -> -12000."""
    return round(1000 * math.log10(eps)) if isinstance(eps, (int, float)) and eps > 0 else 0


_BY_NAME = " (as the CRC-32 of its name)"  # ends a `geometry` field stored by `_name_code`


def _name_code(name) -> int:
    """A setting given by name (an activation) as a `geometry` integer: the CRC-32 of the name."""
    return zlib.crc32(str(name).encode())


def _name_from_code(code: int) -> str:
    """The name behind a `_name_code` when it is a model type or an activation transformers knows (for messages)."""
    from transformers import CONFIG_MAPPING
    from transformers.activations import ACT2FN

    return next((repr(name) for name in (*CONFIG_MAPPING.keys(), *ACT2FN.keys()) if _name_code(name) == code),
                str(code))


def _text_geometry(text_config) -> dict:
    """Text-encoder settings that change its output but no weight's shape (a BERT's head count, activation,
    layer-norm epsilon; a T5's relative-attention distance); each under the name config.json gives it."""
    fields = {"text_config.num_attention_heads": text_config.num_attention_heads}
    for key in ("hidden_act", "dense_act_fn"):
        if isinstance(getattr(text_config, key, None), str):
            fields[f"text_config.{key}{_BY_NAME}"] = _name_code(getattr(text_config, key))
    for key in ("layer_norm_eps", "layer_norm_epsilon"):
        if isinstance(getattr(text_config, key, None), (int, float)):
            fields[f"text_config.{key} (as round(1000 x log10))"] = _eps_code(getattr(text_config, key))
    if isinstance(getattr(text_config, "relative_attention_max_distance", None), int):
        fields["text_config.relative_attention_max_distance"] = text_config.relative_attention_max_distance
    return fields


class DBetaECGEncoder(nn.Module):
    """Strided convs -> LayerNorm -> projection -> conv positions -> [CLS] + tokens -> post-LN transformer."""

    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        self.config = config
        _register_geometry(self, {
            "ecg_config.num_attention_heads": config.num_attention_heads,
            **{f"ecg_config.conv_layers[{i}][2] (stride)": stride
               for i, (_, _, stride) in enumerate(config.conv_layers)},
        })
        layers, in_ch = [], config.num_leads
        for i, (out_ch, kernel, stride) in enumerate(config.conv_layers):
            layers.append(DBetaConvLayer(in_ch, out_ch, kernel, stride, config.conv_bias, norm=(i == 0)))
            in_ch = out_ch
        self.conv_layers = nn.ModuleList(layers)
        self.feature_layer_norm = nn.LayerNorm(in_ch, eps=config.layer_norm_eps)
        self.feature_projection = nn.Linear(in_ch, config.hidden_size)
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.pos_conv = DBetaPositionalConv(config.hidden_size, config.conv_pos_kernel, config.conv_pos_groups)
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(DBetaECGLayer(config) for _ in range(config.num_hidden_layers))

    def features(self, ecg_values: torch.Tensor) -> torch.Tensor:
        """[B, leads, samples] -> tokens [B, T, D] before positions (no CLS)."""
        if ecg_values.dim() != 3 or ecg_values.shape[1] != self.config.num_leads:
            raise ValueError(
                f"ecg_values must be [batch, {self.config.num_leads}, samples], got {tuple(ecg_values.shape)}"
            )
        x = ecg_values
        for layer in self.conv_layers:
            x = layer(x)
        x = self.feature_layer_norm(x.transpose(1, 2))
        return self.input_dropout(self.feature_projection(x))

    def add_positions(self, tokens: torch.Tensor, hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens + their convolutional positions. With `hidden` [B, T] (1 = hidden from the encoder) the
        convolution reads zeros in place of the hidden tokens, so no visible token carries their content."""
        if hidden is None:
            return tokens + self.pos_conv(tokens)
        return tokens + self.pos_conv(tokens * (1.0 - hidden).unsqueeze(-1).to(tokens.dtype))

    def embed(self, ecg_values: torch.Tensor) -> torch.Tensor:
        """[B, leads, samples] -> position-encoded tokens [B, T, D] (no CLS)."""
        return self.add_positions(self.features(ecg_values))

    def encode(self, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None, output_attentions: bool = False,
               output_hidden_states: bool = False) -> BaseModelOutput:
        """Prepend CLS to `tokens` (only the `keep` indices [B, K] when given) and run the transformer.
        `hidden_states` holds the transformer's input and every layer's output."""
        if keep is not None:
            tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        x = self.dropout(self.layer_norm(torch.cat([cls, tokens], dim=1)))
        states, attentions = (x,), ()
        for layer in self.layers:
            x, weights = layer(x)
            states, attentions = states + (x,), attentions + (weights,)
        if isinstance(output_hidden_states, (list, tuple)):  # only these indices (negative from the end)
            kept = {i % len(states) for i in output_hidden_states}
            states = tuple(h if i in kept else None for i, h in enumerate(states))
        return BaseModelOutput(last_hidden_state=x, hidden_states=states if output_hidden_states else None,
                               attentions=attentions if output_attentions else None)

    def forward(self, ecg_values: torch.Tensor, output_attentions: bool = False,
                output_hidden_states: bool = False) -> BaseModelOutput:
        return self.encode(self.embed(ecg_values), None, output_attentions, output_hidden_states)


class DBetaPooler(nn.Module):
    """Token 0 -> Linear -> tanh; with `attention_mask`, the mean of the unmasked tokens instead of token 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attention_mask is None:
            pooled = hidden_states[:, 0]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.tanh(self.dense(pooled))


class DBetaFusionLayer(GradientCheckpointingLayer):
    """BERT-style cross layer: self-attention, cross-attention to the other stream, FFN; post-LN."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        d, eps, p = config.hidden_size, config.fusion_layer_norm_eps, config.fusion_dropout
        self.self_attn = DBetaAttention(config, d, config.fusion_num_heads, p)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.cross_attn = DBetaAttention(config, d, config.fusion_num_heads, p)
        self.cross_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.fc1 = nn.Linear(d, config.fusion_intermediate_size)
        self.fc2 = nn.Linear(config.fusion_intermediate_size, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)
        self.dropout = nn.Dropout(p)

    def forward(self, x, context, self_mask=None, context_mask=None):
        """Returns (x, self-attention weights, cross-attention weights); weights are None unless eager."""
        attn, self_weights = self.self_attn(x, attention_mask=self_mask)
        x = self.self_attn_layer_norm(x + self.dropout(attn))
        attn, cross_weights = self.cross_attn(x, context, attention_mask=context_mask)
        x = self.cross_attn_layer_norm(x + self.dropout(attn))
        return self.final_layer_norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x))))), self_weights, cross_weights


@dataclass
class DBetaFusionOutput(ModelOutput):
    text: Optional[torch.FloatTensor] = None
    ecg: Optional[torch.FloatTensor] = None
    captured_ecg: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple] = None  # ((text, ecg) input, then after each layer)
    attentions: Optional[tuple] = None  # per layer: (text self, text->ecg cross, ecg self, ecg->text cross)


class DBetaFusion(nn.Module):
    """Text and ECG streams updated together: each layer reads both streams' previous outputs."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        _register_geometry(self, {"fusion_num_heads": config.fusion_num_heads})
        self.text_layers = nn.ModuleList(DBetaFusionLayer(config) for _ in range(config.num_fusion_layers))
        self.ecg_layers = nn.ModuleList(DBetaFusionLayer(config) for _ in range(config.num_fusion_layers))

    def forward(self, text, ecg, text_mask=None, capture_ecg_after: Optional[int] = None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> DBetaFusionOutput:
        """`text_mask` is additive; `captured_ecg` is the ECG stream after `capture_ecg_after` layers."""
        captured, states, attentions = None, ((text, ecg),), ()
        for i, (text_layer, ecg_layer) in enumerate(zip(self.text_layers, self.ecg_layers)):
            new_text, *text_weights = text_layer(text, ecg, text_mask, None)
            new_ecg, *ecg_weights = ecg_layer(ecg, text, None, text_mask)
            text, ecg = new_text, new_ecg
            states, attentions = states + ((text, ecg),), attentions + (tuple(text_weights + ecg_weights),)
            if capture_ecg_after == i + 1:
                captured = ecg
        return DBetaFusionOutput(text=text, ecg=ecg, captured_ecg=captured,
                                 hidden_states=states if output_hidden_states else None,
                                 attentions=attentions if output_attentions else None)


def _additive_mask(attention_mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if attention_mask is None:
        return None
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def _build_text_encoder(config) -> nn.Module:
    if config.model_type == "t5":
        return T5EncoderModel(config)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option
        return AutoModel.from_config(config)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained model base
# ----------------------------------------------------------------------------------------------------------------


logger = logging.getLogger(__name__)

# Files that travel with every saved copy: config.json's `custom_pipelines` names the pipeline module (which imports
# its prompt and scoring module), and the pipeline reads its prompt set from the model's folder; save_pretrained
# copies none of them by itself.
COMPANION_FILES = ("pipeline_dbeta.py", "prompting_dbeta.py", "prompts_dbeta.json")
MODEL_CARD = "README.md"
# config.json's `custom_pipelines`: the one pipeline each class serves. A model built from another class's config
# (a classifier fine-tuned from a pretrained export) takes its own, or its saved copy would offer a task it lacks.
ZERO_SHOT_PIPELINES = {"zero-shot-ecg-classification": {
    "impl": "pipeline_dbeta.ZeroShotECGClassificationPipeline", "pt": ["AutoModel"], "type": "multimodal"}}
# loaded as what it is (AutoModel would want the text tower a classifier lacks)
CLASSIFICATION_PIPELINES = {"ecg-classification": {
    "impl": "pipeline_dbeta.ECGClassificationPipeline", "pt": ["AutoModelForSequenceClassification"],
    "type": "multimodal"}}


def _head_sample(param: torch.Tensor) -> torch.Tensor:
    """At most 4,096 values spread evenly over a parameter, copied: enough to tell a head trained since it was drawn
    (training moves every value) from one still as drawn, without a copy of a whole vocabulary projection (125 MiB
    at full size). An edit of a few values between the samples goes unseen."""
    flat = param.detach().reshape(-1)
    return flat[:: max(1, -(-flat.numel() // 4096))].clone()


def _weights_file(source, key: str) -> str:
    """The weights file of `source` (a folder or Hub id) that holds `key`, for error messages."""
    index = Path(str(source)) / "model.safetensors.index.json"
    name = "model.safetensors"
    if index.is_file():
        try:
            name = json.loads(index.read_text()).get("weight_map", {}).get(key, name)
        except (OSError, ValueError):
            pass
    return f"{source}/{name}"


def _fetch_companion(source: str, name: str, revision: Optional[str] = None) -> Optional[Path]:
    """`name` from the folder or Hub repo `source` (at `revision`) a model was loaded from, or None if it has none."""
    if not source:
        return None
    local = Path(source)
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, name, revision=revision))
    except Exception:  # noqa: BLE001 - not a repo id, offline without a cached copy, or no such file
        return None


def _file_stamp(path: Path):
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _remove_stale_weights_form(forms: tuple, before: dict) -> None:
    """transformers' save_pretrained removes old shards but not an old single `model.safetensors` beside a new
    sharded save (nor an old index beside a new single file); from_pretrained prefers the single file, so a model
    saved sharded into the folder it came from would reload with its old weights."""
    written = [path for path in forms if path.is_file() and _file_stamp(path) != before[path]]
    if len(written) != 1:
        return
    for path in forms:
        if path not in written and path.is_file():
            logger.info("%s: removed the previous save's %s (this save wrote %s)", path.parent, path.name,
                        written[0].name)
            path.unlink()


def _saved_weight_names(folder: Path) -> set:
    """Tensor names of the safetensors weights saved in `folder` (single file or sharded), empty if none."""
    single, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    from safetensors import SafetensorError, safe_open

    try:
        if single.is_file():
            with safe_open(str(single), framework="pt") as weights:
                return set(weights.keys())
        if index.is_file():
            return set(json.loads(index.read_text())["weight_map"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):  # unreadable: replaced without a word
        return set()
    return set()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DBetaPreTrainedModel(PreTrainedModel):
    """Base class: weight init, and loading/saving rules shared by every D-BETA class.

    Loading (`from_pretrained`) is strict, because a config that disagrees with its weights otherwise gives a
    model that runs on random or ignored weights:
      - every weight of the model body must be in the checkpoint with the shape the config implies;
      - a checkpoint tensor the class does not use is an error, except the other classes' heads
        (`_keys_to_ignore_on_load_unexpected`: a pretraining export loads into `DBetaModel` without its
        pretraining heads, any export into `DBetaForECGClassification` without the text side);
      - a head of the class (`_new_heads`: the classifier, the pretraining heads) absent from the checkpoint as a
        whole is new and initialised; one only partly present is an error; a head tensor of another shape (e.g.
        another number of labels) is re-initialised only with `ignore_mismatched_sizes=True`;
      - a NaN or infinite weight is an error naming the file and the tensors;
      - the conv strides and head counts, which no weight's shape shows, must equal the values the weights were
        trained with, which they record in `geometry` buffers (exports older than those take config.json's).
    Saving (`save_pretrained`) writes the weights with ordinary permissions (the umask's, as for any file) and
    copies the pipeline, its prompt set and the model card of the export the model came from, so a re-saved
    or pushed copy works like the export.
    """

    config_class = DBetaConfig
    base_model_prefix = "dbeta"
    main_input_name = "ecg_values"
    input_modalities = ("ecg", "text")
    supports_gradient_checkpointing = True  # the ECG, fusion and MEM-decoder layers, and the text encoder's
    _no_split_modules = ["DBetaECGLayer", "DBetaFusionLayer", "DBetaDecoderBlock", "T5Block", "BertLayer"]
    _supports_sdpa = True
    # Not flash attention: the ECG stream cross-attends to padded text (queries and keys of different lengths,
    # the mask on the keys), which transformers' flash wrapper unpads as if the mask were the queries'.
    _supports_flash_attn = False
    _new_heads: tuple = ()  # top-level modules a checkpoint may lack as a whole (then initialised)
    _pipelines: dict = ZERO_SHOT_PIPELINES
    # Exports written before the weights carried their geometry lack these buffers: filled from config.json
    # (`_init_weights`), as those versions read it.
    _keys_to_ignore_on_load_missing = [r"(^|\.)geometry$"]

    def __init__(self, config: DBetaConfig, *args, **kwargs):
        # from_pretrained(..., ets_mode=...) sets such keywords on the config after it was built and checked
        config._validate()
        if getattr(config, "custom_pipelines", None) and config.custom_pipelines != self._pipelines:
            # another class's config (a classifier built from a pretrained export's): this model's own copy names
            # the pipeline it serves; the config given, which that other model may share, stays as it is
            config = copy.deepcopy(config)
            config.custom_pipelines = copy.deepcopy(self._pipelines)
        super().__init__(config, *args, **kwargs)
        # The ECG encoder is a plain module, so transformers sets only the top-level attention implementation at
        # init (`set_attn_implementation` later reaches the ECG sub-config too); the ECG layers read their own.
        if getattr(config.ecg_config, "_attn_implementation", None) is None:
            config.ecg_config._attn_implementation_internal = self.config._attn_implementation

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        allow_resize = kwargs.pop("ignore_mismatched_sizes", False)
        folder = Path(str(pretrained_model_name_or_path))
        if (folder / "onnx_config.json").is_file() and not any(folder.glob("model*.safetensors*")):
            raise OSError(f"{folder} holds the ONNX export (no torch weights): serve it with onnx_dbeta.DBetaOnnxModel "
                          "and ZeroShotECGClassificationPipeline(model=..., processor=...), as the README's 'Serving "
                          "on a CPU with ONNX' shows, or load the torch export it was made from")
        # transformers' own refusal of misshapen keys only says "look at the report above"; refuse below instead.
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args,
                                                  output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        except Exception as err:
            from safetensors import SafetensorError  # a dependency of transformers itself

            if not isinstance(err, SafetensorError):  # safetensors' own error names no file
                raise
            raise OSError(f"{_weights_file(pretrained_model_name_or_path, '')}: the weights file is damaged "
                          f"(truncated or not safetensors: {err}); export or download it again") from err
        model._check_loaded(pretrained_model_name_or_path, info, allow_resize)
        # transformers 5 keeps no record of the revision it loaded; the files that travel with the weights (the
        # pipeline's code and prompts, fetched on save and by the pipeline) must come from that one, not from main
        model.hub_revision = kwargs.get("revision")
        return (model, info) if want_info else model

    def _head_of(self, key: str) -> Optional[str]:
        top = key.split(".", 1)[0]
        return top if top in self._new_heads else None

    def _check_loaded(self, source, info: dict, allow_resize: bool) -> None:
        """Raise if the checkpoint `source` does not fill this model exactly (see the class docstring)."""
        missing = set(info.get("missing_keys") or ())
        mismatched = {k[0]: k[1:] for k in info.get("mismatched_keys") or ()}
        own = set(self.state_dict())
        problems = []
        wrong = self._geometry_mismatches()
        if wrong:
            problems.append("settings that change no weight's shape, so the weights record the values they were "
                            "trained with (the config's would give wrong features):\n  " + "\n  ".join(wrong))
        absent_heads = {h for h in self._new_heads if {k for k in own if self._head_of(k) == h} <= missing}
        # Heads the checkpoint lacked start random: keep their parameters as initialised, so a consumer (the
        # classification pipeline) can tell a head still untrained from one trained since loading. A copy saved
        # before training names them in config.json (`untrained_heads`), and they stay untrained when reloaded.
        saved_untrained = set(getattr(self.config, "untrained_heads", None) or ()) & set(self._new_heads)
        resized = {self._head_of(k) for k in mismatched if allow_resize and self._head_of(k)}  # initialised anew
        self._heads_initialised_at_load = {
            h: [_head_sample(p) for p in getattr(self, h).parameters()]
            for h in absent_heads | saved_untrained | resized if hasattr(self, h)
        }
        body_missing = sorted(k for k in missing if self._head_of(k) not in absent_heads)
        if body_missing:
            problems.append("weights the model needs but the checkpoint lacks:\n  " + "\n  ".join(body_missing))
        unexpected = sorted(info.get("unexpected_keys") or ())
        if unexpected:
            problems.append("checkpoint tensors this model has no place for:\n  " + "\n  ".join(unexpected))
        bad_shapes = sorted(k for k in mismatched if not (allow_resize and self._head_of(k)))
        if bad_shapes:
            problems.append("shape mismatches (checkpoint vs model):\n  " + "\n  ".join(
                f"{k}: {tuple(mismatched[k][0])} vs {tuple(mismatched[k][1])}" for k in bad_shapes))
        if problems:
            raise ValueError(
                f"{source}: the checkpoint does not match the model its config describes ({type(self).__name__}; "
                f"an edited config.json, or weights of another architecture):\n" + "\n".join(problems))
        fresh = missing | set(mismatched)
        bad = [k for k, t in self.state_dict().items()
               if k not in fresh and t.is_floating_point() and t.device.type != "meta"
               and not bool(torch.isfinite(t).all())]
        if bad:
            files = sorted({_weights_file(source, k) for k in bad})
            raise ValueError(f"{', '.join(files)}: non-finite (NaN or infinite) values in {len(bad)} weight(s): "
                             f"{', '.join(bad[:20])}{' ...' if len(bad) > 20 else ''}; refusing to load them")

    def _geometry_mismatches(self) -> list:
        """Config values (conv strides, head counts) that differ from those the loaded weights were trained with."""
        wrong = []
        for module in self.modules():
            fields = getattr(module, "_geometry_fields", None)
            if fields is None or module.geometry.device.type == "meta":
                continue
            for (field, configured), trained in zip(fields.items(), module.geometry.tolist()):
                if configured != trained:
                    show = _name_from_code if field.endswith(_BY_NAME) else str
                    wrong.append(f"{field}: config.json has {show(configured)}, the weights were trained with "
                                 f"{show(trained)}")
        return wrong

    def untrained_heads(self) -> list:
        """The heads initialised at random when the model was loaded and unchanged since (their scores mean
        nothing yet)."""
        def unchanged(now: torch.Tensor, first: torch.Tensor) -> bool:
            # `.half()`, `.to(torch.bfloat16)` (or there and back) round the random head: still the same head
            now, first = now.detach().cpu(), first.cpu()
            return any(torch.equal(now, first.to(via).to(now.dtype))
                       for via in (now.dtype, torch.float16, torch.bfloat16))

        drawn = getattr(self, "_heads_initialised_at_load", {})
        return sorted(h for h, first in drawn.items()
                      if all(unchanged(_head_sample(p), was) for p, was in zip(getattr(self, h).parameters(), first)))

    def save_pretrained(self, save_directory, *args, **kwargs):
        untrained = self.untrained_heads()
        if untrained:
            self.config.untrained_heads = untrained
        elif hasattr(self.config, "untrained_heads"):
            del self.config.untrained_heads
        out = Path(save_directory)
        main_process = args[0] if args else kwargs.get("is_main_process", True)
        forms = (out / SAFE_WEIGHTS_NAME, out / SAFE_WEIGHTS_INDEX_NAME)
        before = {path: _file_stamp(path) for path in forms}
        if main_process:
            self._warn_of_dropped_weights(out)
        super().save_pretrained(save_directory, *args, **kwargs)
        if not main_process:
            return
        _remove_stale_weights_form(forms, before)
        mode = 0o666 & ~_current_umask()
        for weights in out.glob("*.safetensors"):  # safetensors creates its files 0600
            weights.chmod(mode)
        self._save_companions(out)

    def _warn_of_dropped_weights(self, out: Path) -> None:
        """Saving over a folder replaces its weights: a `DBetaModel` (AutoModel) saved where a pretraining export
        was drops the ETM, MLM and MEM heads, and a later `AutoModelForPreTraining` load gets them at random."""
        saved = _saved_weight_names(out)
        dropped = sorted(saved - set(self.state_dict())) if saved else []
        if dropped:
            parts = sorted({name.split(".")[0] for name in dropped})
            logger.warning("%s: this %s replaces weights with %d tensors it does not have (%s), which are lost; "
                           "save to another folder, or from the class that holds them (%s), to keep them",
                           out, type(self).__name__, len(dropped), ", ".join(parts),
                           ", ".join(self.config.architectures or []) or "the class that saved them")

    def _save_companions(self, out: Path) -> None:
        pipelines = json.dumps(getattr(self.config, "custom_pipelines", None) or {})
        source = str(self.name_or_path or "")
        revision = getattr(self, "hub_revision", None)
        here = Path(__file__).resolve().parent
        for name in COMPANION_FILES if "pipeline_dbeta" in pipelines else ():
            found = _fetch_companion(source, name, revision) or (here / name if (here / name).is_file() else None)
            if found is None:
                logger.warning("%s: %s not found beside %s or in %r; pipeline(...) will not load this copy",
                               out, name, here, source)
            elif found.resolve() != (out / name).resolve():
                shutil.copyfile(found, out / name)
        card = _fetch_companion(source, MODEL_CARD, revision)
        if card is not None and not (out / MODEL_CARD).exists() and self._same_pipelines_as(source, revision):
            shutil.copyfile(card, out / MODEL_CARD)  # a card describes its model's pipeline: a classifier's is its own

    def _same_pipelines_as(self, source: str, revision: Optional[str]) -> bool:
        config = _fetch_companion(source, "config.json", revision)
        try:
            theirs = json.loads(config.read_text()).get("custom_pipelines") if config else None
        except (OSError, ValueError, AttributeError):
            return False
        return theirs == getattr(self.config, "custom_pipelines", None)

    def _init_weights(self, module):
        std = self.config.initializer_range
        fields = getattr(module, "_geometry_fields", None)
        if fields is not None:
            init.copy_(module.geometry, torch.tensor(list(fields.values()), dtype=torch.int64))
        if isinstance(module, DBetaPositionalConv):
            g, v = module.parametrizations.weight.original0, module.parametrizations.weight.original1
            init.normal_(v, mean=0.0, std=math.sqrt(4.0 / (module.kernel * v.shape[0])))
            init.copy_(g, v.norm(dim=(0, 1), keepdim=True))
            init.zeros_(module.bias)
            return
        if isinstance(module, nn.Conv1d):
            # The ECG feature extractor. Handled here and not on DBetaConvLayer: transformers visits a parent
            # before its children, so the generic normal(std) init would overwrite a parent's Kaiming init and
            # shrink the activations ~5x per layer.
            init.kaiming_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if isinstance(module, DBetaECGEncoder):
            init.uniform_(module.class_embedding)
        elif isinstance(module, DBetaMEMDecoder):
            # Xavier, as MAE's decoder and the PyTorch layers of the authors' CLIP blocks. N(0, 0.02) suits width
            # 768; at the decoder's width (64 in `small()`) it leaves the visible tokens' content far below the
            # sinusoidal positions, and MEM sat at its predict-zero level for thousands of steps.
            # Children are initialised before their parent, so this overrides the generic Linear init.
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    init.xavier_uniform_(layer.weight)
                    init.zeros_(layer.bias)
            init.normal_(module.mask_token, mean=0.0, std=std)
        elif isinstance(module, DBetaMLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, DBetaModel) and module.config.ets_mode == "learnable":
            init.constant_(module.logit_scale, math.log(module.config.ets_scale_init))
            init.constant_(module.logit_bias, module.config.ets_bias_init)


def _flag(value, config, name: str):
    """An output flag, else the config's. `output_hidden_states` may also be a list of indices to keep (5.x)."""
    return value if value is not None else bool(getattr(config, name, False))


def _return(output: ModelOutput, return_dict: Optional[bool], config):
    """`output`, or its tuple (None fields dropped) when `return_dict` (else `config.return_dict`) is False."""
    if return_dict if return_dict is not None else getattr(config, "return_dict", True):
        return output
    return output.to_tuple()


class _ECGPathMixin:
    """The unimodal ECG feature path shared by every class: encoder -> class token or token mean -> projection ->
    tanh pooler."""

    def _build_ecg_path(self, config: DBetaConfig):
        self.ecg_model = DBetaECGEncoder(config.ecg_config)
        self.ecg_projection = nn.Linear(config.ecg_config.hidden_size, config.hidden_size)
        _register_geometry(self.ecg_projection, {
            "ecg_config.layer_norm_eps (as round(1000 x log10))": _eps_code(config.ecg_config.layer_norm_eps),
        })
        self.ecg_pooler = DBetaPooler(config.hidden_size)
        _register_geometry(self.ecg_pooler, {
            f"ecg_pooling (as its index in {list(ECG_POOLINGS)})": ECG_POOLINGS.index(config.ecg_pooling),
        })

    def _ecg_input(self, ecg_values: torch.Tensor) -> torch.Tensor:
        cfg = self.config.ecg_config
        if ecg_values.dim() != 3 or ecg_values.shape[1] != cfg.num_leads or (
                cfg.num_samples and ecg_values.shape[2] != cfg.num_samples):
            raise ValueError(f"ecg_values must be [batch, {cfg.num_leads}, {cfg.num_samples or 'samples'}] (what this "
                             f"model's processor gives), got {tuple(ecg_values.shape)}: pass records through the "
                             "processor, which reorders leads, resamples, and crops or pads to its length")
        return ecg_values.to(self.ecg_projection.weight.dtype)

    def pool_ecg(self, encoder_states: torch.Tensor) -> torch.Tensor:
        """The ECG encoder's tokens [B, 1 + T, ecg hidden] -> the ECG feature [B, hidden]: the class token or the
        mean of the others (`config.ecg_pooling`), projected, then the tanh pooler."""
        if self.config.ecg_pooling == "mean":
            read = encoder_states[:, 1:].mean(1, keepdim=True)
        else:
            read = encoder_states[:, :1]
        return self.ecg_pooler(self.ecg_projection(read))

    def get_ecg_features(self, ecg_values: torch.Tensor, output_attentions: Optional[bool] = None,
                         output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None):
        """The ECG encoder's output as transformers' CLIP/SigLIP `get_image_features`: a
        `BaseModelOutputWithPooling` whose `pooler_output` is the 768-d ECG feature [B, hidden] (CLS token, or the
        mean of the other tokens with `config.ecg_pooling == "mean"` -> projection -> tanh pooler) and
        `last_hidden_state` the encoder's tokens [B, 1 + T, ecg hidden]."""
        out = self.ecg_model(self._ecg_input(ecg_values), _flag(output_attentions, self.config, "output_attentions"),
                             _flag(output_hidden_states, self.config, "output_hidden_states"))
        pooled = self.pool_ecg(out.last_hidden_state)
        return _return(BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=pooled,
                                                  hidden_states=out.hidden_states, attentions=out.attentions),
                       return_dict, self.config)


# ----------------------------------------------------------------------------------------------------------------
# DBetaModel
# ----------------------------------------------------------------------------------------------------------------


class DBetaModel(_ECGPathMixin, DBetaPreTrainedModel):
    _keys_to_ignore_on_load_unexpected = [r"^mem_head\.", r"^mlm_head\.", r"^etm_head\.", r"^classifier\."]
    _text_encoder_frozen = False  # set by freeze_text_encoder()
    _text_compute_dtype = None  # the locked tower's autocast dtype (freeze_text_encoder), never saved

    def __init__(self, config: DBetaConfig):
        super().__init__(config)
        d = config.hidden_size
        self._build_ecg_path(config)
        self.text_model = _build_text_encoder(config.text_config)
        self.text_projection = nn.Linear(config.text_hidden_size, d)
        _register_geometry(self.text_projection, _text_geometry(config.text_config))
        # BERT, RoBERTa and their kin name their weights alike, so a config.json edited from one type to another
        # would load the same tensors into another computation (RoBERTa offsets its positions): the type is kept
        self.text_encoder_type = DBetaRecord({
            f"text_config.model_type{_BY_NAME}": _name_code(config.text_config.model_type),
        })
        self.text_pooler = DBetaPooler(d)
        # which token(s) the pooler reads changes the text feature but no weight: recorded as an index
        _register_geometry(self.text_pooler, {
            f"text_pooling (as its index in {list(TEXT_POOLINGS)})": TEXT_POOLINGS.index(config.text_pooling),
        })
        self.modality_type_embeddings = nn.Embedding(2, d)  # 0 = text, 1 = ECG
        self.fusion = DBetaFusion(config)
        self.fused_text_pooler = DBetaPooler(d)
        self.fused_ecg_pooler = DBetaPooler(d)
        if config.ets_mode == "learnable":
            self.logit_scale = nn.Parameter(torch.empty(()))
            self.logit_bias = nn.Parameter(torch.empty(()))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def freeze_text_encoder(self, compute_dtype: Optional[torch.dtype] = None, trainable_layers: int = 0) -> None:
        """LiT-style locked text tower: its weights stay fixed and it runs in eval mode (no dropout) even while the
        rest of the model trains; the text projection and pooler still train.

        `compute_dtype=torch.bfloat16` runs the locked tower under bf16 autocast (its fp32 weights are kept, so
        saved copies are unchanged): no gradient flows through it, and on CPUs with native bf16 matmuls
        (AVX512-BF16, AMX) its forward, the largest cost of a small model's step, takes about half the time.

        `trainable_layers=N` locks only the embeddings and the lower layers: the top N layers (and a final norm
        after them) keep training, in train mode, as MERL and MELP train the upper half of their text encoders."""
        if compute_dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"compute_dtype must be None, torch.float32 or torch.bfloat16, got {compute_dtype!r}")
        if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or trainable_layers < 0:
            raise ValueError(f"trainable_layers must be an integer >= 0, got {trainable_layers!r}")
        self.text_model.requires_grad_(False)
        if trainable_layers:
            if compute_dtype == torch.bfloat16:
                raise ValueError("a text tower with trainable layers needs its gradients: no bf16 compute_dtype")
            layers = self._text_layers()
            if trainable_layers > len(layers):
                raise ValueError(f"trainable_layers={trainable_layers}, but the text encoder has {len(layers)} layers")
            for layer in layers[len(layers) - trainable_layers:]:
                layer.requires_grad_(True)
            for name, module in self.text_model.named_modules():
                if name.endswith("final_layer_norm"):  # T5's norm after the last block
                    module.requires_grad_(True)
            return
        self._text_encoder_frozen = True
        self._text_compute_dtype = None if compute_dtype == torch.float32 else compute_dtype
        self.text_model.eval()

    def _text_layers(self) -> nn.ModuleList:
        """The text encoder's stack of layers (T5: encoder.block, BERT-like: encoder.layer)."""
        for path in ("encoder.block", "encoder.layer", "encoder.layers", "layers"):
            try:
                stack = self.text_model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(stack, nn.ModuleList):
                return stack
        raise ValueError(f"cannot find the layer stack of the text encoder ({type(self.text_model).__name__})")

    def train(self, mode: bool = True):
        super().train(mode)
        if self._text_encoder_frozen:
            self.text_model.eval()
        return self

    # -- unimodal paths -------------------------------------------------------------------------------------

    def encode_ecg(self, ecg_values: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Projected ECG tokens [B, 1 + T, hidden] (CLS first); only the `keep` token indices when given."""
        tokens = self.ecg_model.embed(self._ecg_input(ecg_values))
        return self.ecg_projection(self.ecg_model.encode(tokens, keep).last_hidden_state)

    def _run_text(self, input_ids, attention_mask, output_attentions=False, output_hidden_states=False):
        dtype = self._text_compute_dtype if self._text_encoder_frozen else None
        # No dtype of its own: the tower runs under whatever autocast the caller set (mixed-precision training);
        # an autocast(enabled=False) here would force it to fp32.
        context = torch.autocast(input_ids.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with context:
            out = self.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                  output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                  return_dict=True)
        if dtype is not None:  # the trainable layers after it stay in fp32
            out.last_hidden_state = out.last_hidden_state.float()
        return out

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Projected text tokens [B, L, hidden]. The attention mask is always passed to the text encoder."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.text_projection(self._run_text(input_ids, attention_mask).last_hidden_state)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                          output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                          return_dict: Optional[bool] = None):
        """The text encoder's output as transformers' CLIP/SigLIP `get_text_features`: a
        `BaseModelOutputWithPooling` whose `pooler_output` is the 768-d text feature [B, hidden] (text encoder
        with its mask -> projection -> tanh pooler on token 0, or on the mean over real tokens when
        `config.text_pooling == "mean"`) and `last_hidden_state` the text encoder's tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self._run_text(input_ids, attention_mask, _flag(output_attentions, self.config, "output_attentions"),
                             _flag(output_hidden_states, self.config, "output_hidden_states"))
        pooled = self.pool_text(self.text_projection(out.last_hidden_state), attention_mask)
        return _return(BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=pooled,
                                                  hidden_states=out.hidden_states, attentions=out.attentions),
                       return_dict, self.config)

    def pool_text(self, text_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_pooler(text_states, attention_mask if self.config.text_pooling == "mean" else None)

    # -- fused path -----------------------------------------------------------------------------------------

    def fuse(self, ecg_states, text_states, attention_mask=None, capture_ecg_after=None, output_attentions=False,
             output_hidden_states=False) -> DBetaFusionOutput:
        text_type = self.modality_type_embeddings.weight[0].to(text_states.dtype)
        ecg_type = self.modality_type_embeddings.weight[1].to(ecg_states.dtype)
        mask = _additive_mask(attention_mask, text_states.dtype)
        return self.fusion(text_states + text_type, ecg_states + ecg_type, mask, capture_ecg_after,
                           output_attentions, output_hidden_states)

    def fused_features(self, fused_text: torch.Tensor, fused_ecg: torch.Tensor) -> torch.Tensor:
        """[text pooled, ECG pooled] -> [B, 2 * hidden], the ECG-text matching head's input."""
        return torch.cat([self.fused_text_pooler(fused_text), self.fused_ecg_pooler(fused_ecg)], dim=-1)

    def get_fused_features(self, ecg_values, input_ids, attention_mask=None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        fused = self.fuse(self.encode_ecg(ecg_values), self.encode_text(input_ids, attention_mask), attention_mask)
        return self.fused_features(fused.text, fused.ecg)

    # -- similarity -----------------------------------------------------------------------------------------

    def similarity(self, ecg_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """ECG x text logits as trained: raw dot product ("fixed"), or SigLIP's scaled cosine ("learnable")."""
        if self.config.ets_mode == "learnable":
            ecg_embeds = F.normalize(ecg_embeds, dim=-1)
            text_embeds = F.normalize(text_embeds, dim=-1)
            return ecg_embeds @ text_embeds.t() * self.logit_scale.exp() + self.logit_bias
        return ecg_embeds @ text_embeds.t()

    def ets_loss(self, ecg_embeds, text_embeds, is_aligned=None) -> torch.Tensor:
        """The ECG-text sigmoid loss over the batch: pair i is matched when `is_aligned[i]` (default: all)."""
        if is_aligned is None:
            is_aligned = torch.ones(ecg_embeds.shape[0], dtype=torch.long, device=ecg_embeds.device)
        # Gathering widens the training signal to every process's texts; evaluation scores each batch on its own
        # (processes may hold different numbers of validation batches, so a collective there could hang).
        gather = self.config.ets_gather and self.training
        texts, offset = (_all_gather_with_grad(text_embeds) if gather else (text_embeds, 0))
        logits = self.similarity(ecg_embeds, texts).float()
        labels = -torch.ones_like(logits)
        rows = torch.arange(logits.shape[0], device=logits.device)
        labels[rows, rows + offset] = is_aligned.float() * 2 - 1
        per_pair = -F.logsigmoid(labels * logits)
        if self.config.ets_mode == "learnable":  # SigLIP's: summed over each ECG's texts, averaged over the ECGs
            return per_pair.sum(-1).mean()
        return per_pair.mean()  # the authors': averaged over all pairs, 1/B of SigLIP's at a batch of B

    def forward(
        self,
        ecg_values: Optional[torch.Tensor] = None,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        return_loss: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> DBetaOutput:
        """Either input or both. With both, `logits_per_ecg` [B_ecg, B_text]; `return_loss=True` (as in CLIP)
        adds the ECG-text sigmoid loss, row i of the ECGs matched with text i."""
        if ecg_values is None and input_ids is None:
            raise ValueError("DBetaModel needs ecg_values, input_ids (with attention_mask), or both")
        ecg_out = text_out = logits_per_ecg = logits_per_text = loss = None
        flags = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                     return_dict=True)
        if ecg_values is not None:
            ecg_out = self.get_ecg_features(ecg_values, **flags)
        if input_ids is not None:
            text_out = self.get_text_features(input_ids, attention_mask, **flags)
        ecg_embeds = ecg_out.pooler_output if ecg_out is not None else None
        text_embeds = text_out.pooler_output if text_out is not None else None
        if ecg_embeds is not None and text_embeds is not None:
            logits_per_ecg = self.similarity(ecg_embeds, text_embeds)
            logits_per_text = logits_per_ecg.t()
            if return_loss:
                if ecg_embeds.shape[0] != text_embeds.shape[0]:
                    raise ValueError(f"return_loss needs one text per ECG; got {ecg_embeds.shape[0]} ECGs and "
                                     f"{text_embeds.shape[0]} texts")
                loss = self.ets_loss(ecg_embeds, text_embeds)
        elif return_loss:
            raise ValueError("return_loss needs both ecg_values and input_ids")
        return _return(DBetaOutput(loss=loss, logits_per_ecg=logits_per_ecg, logits_per_text=logits_per_text,
                                   ecg_embeds=ecg_embeds, text_embeds=text_embeds, ecg_model_output=ecg_out,
                                   text_model_output=text_out), return_dict, self.config)


# ----------------------------------------------------------------------------------------------------------------
# Pretraining heads
# ----------------------------------------------------------------------------------------------------------------


class DBetaMatchingHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(2 * hidden_size, 2)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.fc(fused)


class DBetaMLMHead(nn.Module):
    """BERT prediction head: dense -> GELU -> LayerNorm -> vocabulary (untied) + bias."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.empty(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(x)))) + self.bias


class DBetaDecoderBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block with QuickGELU (the MEM decoder's)."""

    def __init__(self, config: DBetaConfig, dim: int, heads: int):
        super().__init__()
        self.ln_1 = DBetaFp32LayerNorm(dim)
        self.attn = DBetaAttention(config, dim, heads, dropout=0.0)
        self.ln_2 = DBetaFp32LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))[0]
        h = self.fc1(self.ln_2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


class DBetaMEMDecoder(nn.Module):
    """MAE-style decoder: visible tokens + mask tokens, unshuffled, sinusoidal positions -> patch values."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        dim = config.mem_decoder_hidden_size
        self.max_positions = config.mem_decoder_max_positions
        self.embed = nn.Linear(config.hidden_size, dim)
        self.mask_token = nn.Parameter(torch.empty(1, 1, dim))
        self.blocks = nn.ModuleList(
            DBetaDecoderBlock(config, dim, config.mem_decoder_heads) for _ in range(config.mem_decoder_layers)
        )
        self.norm = DBetaFp32LayerNorm(dim)
        self.pred = nn.Linear(dim, config.ecg_config.num_leads * config.ecg_config.token_size)
        kernel = config.mem_decoder_conv_kernel
        self.local_conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim) if kernel else None

    def forward(self, visible: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """visible: [B, 1 + K, hidden] (CLS first); ids_restore: [B, T]. Returns [B, T, leads * token_size]."""
        x = self.embed(visible)
        b, n, d = x.shape
        t = ids_restore.shape[1]
        if t + 1 > self.max_positions:
            raise ValueError(f"{t} ECG tokens exceed the MEM decoder's {self.max_positions - 1} positions")
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(b, t + 1 - n, d)], dim=1)
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        if self.local_conv is not None:
            tokens = tokens + self.local_conv(tokens.transpose(1, 2)).transpose(1, 2)
        x = torch.cat([x[:, :1], tokens], dim=1)
        x = x + sinusoidal_positions(t + 1, d, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


def random_token_mask(batch: int, length: int, mask_ratio: float, device, generator=None, noise=None):
    """Per-sample random subset of tokens to keep (MAE): the tokens with the lowest `noise` [B, T] (drawn uniform
    from `generator` when not given). Returns keep [B, K], ids_restore [B, T], mask [B, T] (1 = hidden)."""
    num_keep = max(1, int(length * (1.0 - mask_ratio)))
    if noise is None:
        noise = torch.rand(batch, length, device=device, generator=generator)
    elif tuple(noise.shape) != (batch, length):
        raise ValueError(f"noise must be [batch, ECG tokens] = [{batch}, {length}], got {tuple(noise.shape)}")
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :num_keep] = 0
    return ids_shuffle[:, :num_keep], ids_restore, mask.gather(1, ids_restore)


def mem_targets(ecg_values: torch.Tensor, num_tokens: int, token_size: int, norm: str) -> torch.Tensor:
    """ECG [B, leads, samples] -> per-token targets [B, T, leads * token_size] (lead-major within a token)."""
    b, leads, _ = ecg_values.shape
    x = ecg_values[:, :, : num_tokens * token_size].float()
    if norm == "lead":  # each lead of each record over the whole (trimmed) signal
        x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    x = x.reshape(b, leads, num_tokens, token_size).permute(0, 2, 1, 3).reshape(b, num_tokens, -1)
    if norm == "patch":
        x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    return x


def _all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate `x` from every process (gradients flow back); returns (global, this rank's offset)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x, 0
    world = torch.distributed.get_world_size()
    if world == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), torch.distributed.get_rank() * x.shape[0]


class DBetaForPreTraining(DBetaModel):
    r"""D-BETA with its four pretraining objectives, computed on one forward over the masked ECG:

    - MEM: the MAE decoder reconstructs the hidden ECG tokens from the fused ECG stream after `mem_layer`;
      mean squared error over hidden tokens only.
    - MLM: masked text tokens predicted from the fused text stream (the collator masks every row, so masking
      says nothing about matching, and labels only aligned rows); the vocabulary projection runs only on the
      labelled positions.
    - ETM: matched / mismatched classification of the fused pair (`is_aligned`; N3S supplies the mismatches).
    - ETS: sigmoid loss over the batch's ECG x text scores (all-gathered across processes when `ets_gather`);
      a row whose text is a sampled negative has no positive. With `ets_ecg_view="full"` the ECG features come
      from a second, unmasked encoder pass.

    MLM and ETM need labels (`mlm_labels`, `is_aligned`; the pretraining collator gives both): an objective whose
    labels are not given is left out of `loss` and its own loss is None. Without `is_aligned` the ECG-text loss
    takes every pair as matched, as `DBetaModel(return_loss=True)` does.
    """

    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]
    _new_heads = ("mem_head", "mlm_head", "etm_head")
    accepts_loss_kwargs = False

    def __init__(self, config: DBetaConfig):
        super().__init__(config)
        self.mem_head = DBetaMEMDecoder(config)
        self.mlm_head = DBetaMLMHead(config.hidden_size, config.text_config.vocab_size, config.fusion_layer_norm_eps)
        self.etm_head = DBetaMatchingHead(config.hidden_size)
        self.post_init()

    def get_matching_logits(self, ecg_values, input_ids, attention_mask=None) -> torch.Tensor:
        """ECG-text matching logits [B, 2] (index 1 = matched) for the fused, unmasked pair."""
        if "etm_head" in self.untrained_heads():
            raise ValueError(
                f"{self.name_or_path or type(self).__name__}: its matching head is untrained (drawn at random at load: "
                "the checkpoint had none, as a DBetaModel export has none, or it was saved before the head was "
                "trained), so its logits would mean nothing. Load a pretrained DBetaForPreTraining checkpoint, or "
                "pretrain")
        return self.etm_head(self.get_fused_features(ecg_values, input_ids, attention_mask))

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_head.decoder

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.mlm_head.decoder = value

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resizes the text encoder's embeddings and the MLM decoder, and the MLM head's separate bias with it
        (new entries 0, the head's init)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size, old = embeddings.weight.shape[0], self.mlm_head.bias
        if old.shape[0] != size:
            bias = torch.zeros(size, dtype=old.dtype, device=old.device)
            keep = min(size, old.shape[0])
            bias[:keep] = old.data[:keep]
            self.mlm_head.bias = nn.Parameter(bias)
        return embeddings

    def forward(
        self,
        ecg_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        mlm_labels: Optional[torch.Tensor] = None,
        is_aligned: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> DBetaPreTrainingOutput:
        """`noise` [B, T] (as ViTMAE's) picks the ECG tokens the encoder sees: the lowest (1 - mem_mask_ratio)
        share of each row; without it the noise is drawn uniform from `generator` (or torch's global RNG)."""
        cfg = self.config
        attentions = _flag(output_attentions, cfg, "output_attentions")
        hidden = _flag(output_hidden_states, cfg, "output_hidden_states")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoder = self.ecg_model
        features = encoder.features(self._ecg_input(ecg_values))
        b, t, _ = features.shape
        keep, ids_restore, mem_mask = random_token_mask(b, t, cfg.mem_mask_ratio, features.device, generator, noise)
        positions_from = None if cfg.mem_positions_see_hidden else mem_mask
        ecg_out = encoder.encode(encoder.add_positions(features, positions_from), keep, attentions, hidden)
        ecg_states = self.ecg_projection(ecg_out.last_hidden_state)
        text_out = self._run_text(input_ids, attention_mask, attentions, hidden)
        text_states = self.text_projection(text_out.last_hidden_state)
        text_embeds = self.pool_text(text_states, attention_mask)
        if cfg.ets_ecg_view == "full":
            ecg_embeds = self.pool_ecg(encoder.encode(encoder.add_positions(features)).last_hidden_state)
        else:
            ecg_embeds = self.pool_ecg(ecg_out.last_hidden_state)

        fused = self.fuse(ecg_states, text_states, attention_mask, cfg.mem_layer, attentions, hidden)

        # An objective whose labels were not given is left out of `loss` (its loss is None), as BertForPreTraining
        # does: defaulting `is_aligned` to all matched would train the matching head to call every pair matched.
        etm_logits = self.etm_head(self.fused_features(fused.text, fused.ecg))
        etm_loss = etm_accuracy = None
        if is_aligned is not None:
            etm_loss = F.cross_entropy(etm_logits.float(), is_aligned)
            etm_accuracy = (etm_logits.argmax(-1) == is_aligned).float().mean()

        mlm_logits, mlm_loss = None, None
        if mlm_labels is not None:
            mlm_loss = etm_logits.new_zeros((), dtype=torch.float32)
            selected = mlm_labels != -100
            if selected.any():
                mlm_logits = self.mlm_head(fused.text[selected])
                mlm_loss = F.cross_entropy(mlm_logits.float(), mlm_labels[selected])

        mem_pred = self.mem_head(fused.captured_ecg, ids_restore)
        target = mem_targets(ecg_values, t, cfg.ecg_config.token_size, cfg.mem_target_norm)
        per_token = (mem_pred.float() - target).pow(2).mean(-1)
        mem_loss = (per_token * mem_mask).sum() / mem_mask.sum().clamp(min=1.0)

        ets_loss = self.ets_loss(ecg_embeds, text_embeds, is_aligned)  # without is_aligned: every pair matched
        loss = cfg.mem_weight * mem_loss + cfg.ets_weight * ets_loss
        if mlm_loss is not None:
            loss = loss + cfg.mlm_weight * mlm_loss
        if etm_loss is not None:
            loss = loss + cfg.etm_weight * etm_loss
        return _return(DBetaPreTrainingOutput(
            loss=loss,
            mem_loss=mem_loss.detach(),
            mlm_loss=None if mlm_loss is None else mlm_loss.detach(),
            etm_loss=None if etm_loss is None else etm_loss.detach(),
            ets_loss=ets_loss.detach(),
            etm_logits=etm_logits,
            etm_accuracy=etm_accuracy,
            mlm_logits=mlm_logits,
            mem_pred=mem_pred,
            mem_mask=mem_mask,
            ecg_embeds=ecg_embeds,
            text_embeds=text_embeds,
            ecg_model_output=ecg_out if (attentions or hidden) else None,
            text_model_output=text_out if (attentions or hidden) else None,
            fusion_hidden_states=fused.hidden_states,
            fusion_attentions=fused.attentions,
        ), return_dict, cfg)


# ----------------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------------


class DBetaForECGClassification(_ECGPathMixin, DBetaPreTrainedModel):
    r"""The ECG path with a linear classifier on the 768-d feature.

    `config.problem_type` is "single_label_classification" (cross-entropy on class indices),
    "multi_label_classification" (BCE on multi-hot float labels; with one class, a label per record may be
    given as [batch]) or "regression"; if unset it is inferred as transformers' heads infer it (one output:
    regression; integer labels: single-label; otherwise multi-label) and written to the config.
    `config.class_weights` (one per class) weights the positive term of the BCE loss.
    """

    _keys_to_ignore_on_load_unexpected = [
        r"^text_model\.", r"^text_projection\.", r"^text_pooler\.", r"^text_encoder_type\.",
        r"^modality_type_embeddings\.", r"^fusion\.", r"^fused_", r"^mem_head\.", r"^mlm_head\.", r"^etm_head\.",
        r"^logit_",
    ]
    _new_heads = ("classifier",)
    _pipelines = CLASSIFICATION_PIPELINES
    accepts_loss_kwargs = False

    def __init__(self, config: DBetaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._build_ecg_path(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)
        hub = {k: kwargs[k] for k in ("subfolder", "revision", "cache_dir", "token", "local_files_only",
                                      "force_download", "proxies") if k in kwargs}
        if pretrained_model_name_or_path is not None:  # None: weights from a state_dict, no saved names
            model._head_follows_its_classes(str(pretrained_model_name_or_path), hub)
        return (model, info) if want_info else model

    def _head_follows_its_classes(self, source: str, hub: dict) -> None:
        """A saved head's rows belong to its own classes in its own order; loaded under other `id2label` names
        (a `config=` or `id2label=` given to from_pretrained), transformers keeps them row for row, so the row
        trained for one class would be served under another's name. Same classes in another order: the rows
        follow their names. Other classes: a new head, counted untrained (`untrained_heads`) until trained."""
        labels = self.config.id2label
        if labels and all(isinstance(k, str) and k.isdigit() for k in labels):  # as a JSON file gives them
            self.config.id2label = {int(k): v for k, v in labels.items()}
        if "classifier" in getattr(self, "_heads_initialised_at_load", {}):
            return  # a new head already
        # the names the head was saved under: the config of the very folder loaded (subfolder, revision)
        saved = type(self.config).from_pretrained(source, **hub)
        labels = saved.id2label
        saved_names = [str(labels[i]) for i in range(len(labels))] if all(i in labels for i in range(len(labels))) \
            else None
        keys = sorted(self.config.id2label)
        if keys != list(range(self.config.num_labels)):
            raise ValueError(f"{source}: id2label has keys {keys}; a head of {self.config.num_labels} classes needs "
                             f"exactly 0..{self.config.num_labels - 1} (one per output row)")
        names = [str(self.config.id2label[i]) for i in range(self.config.num_labels)]
        if saved_names is None or saved_names == names:
            return
        head = self.classifier
        # class weights still as saved belong to the saved classes and their order (weights given at load are
        # taken as given for the new names)
        weights = getattr(self.config, "class_weights", None)
        saved_weights = weights is not None and weights == getattr(saved, "class_weights", None)
        if sorted(saved_names) == sorted(names):
            order = [saved_names.index(c) for c in names]
            with torch.no_grad():
                head.weight.copy_(head.weight[order].clone())
                head.bias.copy_(head.bias[order].clone())
            if saved_weights:
                self.config.class_weights = [weights[i] for i in order]
            logger.info("%s: the saved head's rows put in the order of id2label (%s)", source, ", ".join(names))
        else:  # a new module: transformers' init skips parameters it has already loaded
            if saved_weights:
                self.config.class_weights = None
                logger.warning("%s: the saved class_weights were for the saved classes; dropped", source)
            self.classifier = nn.Linear(head.in_features, head.out_features).to(head.weight.device,
                                                                                 head.weight.dtype)
            self._init_weights(self.classifier)
            self._heads_initialised_at_load = {**getattr(self, "_heads_initialised_at_load", {}),
                                               "classifier": [_head_sample(p) for p in self.classifier.parameters()]}
            logger.warning("%s: the saved head was trained for other classes (%s); a new head for %s, untrained",
                           source, ", ".join(saved_names), ", ".join(names))

    def forward(self, ecg_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None) -> SequenceClassifierOutput:
        """`hidden_states` / `attentions` are the ECG encoder's (input + one per layer / one per layer)."""
        out = self.get_ecg_features(ecg_values, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            problem = self.config.problem_type
            if problem is None:  # transformers' rule (any integer width is a class index; bool is multi-hot)
                problem = ("regression" if self.num_labels == 1 else "single_label_classification"
                           if not labels.is_floating_point() and labels.dtype != torch.bool
                           else "multi_label_classification")
            if problem == "multi_label_classification":
                weights = getattr(self.config, "class_weights", None)
                if weights and len(weights) != self.num_labels:
                    raise ValueError(f"config.class_weights holds {len(weights)} weights for {self.num_labels} "
                                     "classes: give one per class, in id2label's order (or None)")
                pos_weight = torch.tensor(weights, device=logits.device) if weights else None
                if self.num_labels == 1 and labels.dim() == 1:  # one class: a label per record
                    labels = labels[:, None]
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=pos_weight)
            elif problem == "single_label_classification":
                if self.num_labels == 1:
                    raise ValueError("single_label_classification over one class: its cross-entropy is 0 whatever "
                                     "the model; for a yes/no label use problem_type='multi_label_classification' "
                                     "(a sigmoid) or num_labels=2")
                if labels.numel() != logits.shape[0]:
                    raise ValueError(f"single_label_classification takes one class index per record; got labels "
                                     f"of shape {tuple(labels.shape)} for {logits.shape[0]} records (multi-hot or "
                                     "soft labels: problem_type='multi_label_classification')")
                if labels.is_floating_point() and not bool((labels == labels.round()).all()):
                    raise ValueError("single_label_classification takes class indices; got labels that are not "
                                     "whole numbers (they were truncated to indices)")
                loss = F.cross_entropy(logits.float(), labels.long().view(-1))
            elif problem == "regression":  # mean squared error on one or `num_labels` real targets
                target = labels.float()
                loss = F.mse_loss(logits.float().squeeze(-1) if self.num_labels == 1 else logits.float(),
                                  target.squeeze(-1) if self.num_labels == 1 else target)
            else:
                raise ValueError(f"unsupported problem_type {problem!r} for ECG classification")
            # written back once a loss was computed, as transformers' heads do, so that a saved model tells the
            # pipeline how to score (a sigmoid per class, a softmax, or the raw value)
            self.config.problem_type = problem
        return _return(SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                                attentions=out.attentions), return_dict, self.config)


__all__ = [
    "DBetaPreTrainedModel",
    "DBetaModel",
    "DBetaForPreTraining",
    "DBetaForECGClassification",
    "DBetaOutput",
    "DBetaPreTrainingOutput",
]


# Saved copies carry this code and name it in config.json's auto_map, however the class was imported (transformers
# does this for classes it loaded as remote code; one imported from the installed package needs it said).
DBetaModel.register_for_auto_class("AutoModel")
DBetaForPreTraining.register_for_auto_class("AutoModelForPreTraining")
DBetaForECGClassification.register_for_auto_class("AutoModelForSequenceClassification")
