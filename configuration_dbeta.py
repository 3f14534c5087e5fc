"""D-BETA configuration: an ECG encoder sub-config, a text encoder sub-config, and the fusion/objective settings.

Defaults reproduce the authors' full-size model (arXiv 2410.02131): a wav2vec2-style ECG encoder (4 strided convs,
8 post-LN transformer layers, width 768), Flan-T5-base's encoder for text, 6 + 6 cross-attention fusion layers and a
4-block MEM decoder. `DBetaConfig.small()` gives a ~2.2M-parameter variant (plus its text encoder) for quick experiments and CPU demos.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import numbers
from typing import Optional

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# google/flan-t5-base's encoder settings, written here because the config cannot be downloaded offline.
FLAN_T5_BASE = dict(
    model_type="t5",
    vocab_size=32128,
    d_model=768,
    d_kv=64,
    d_ff=2048,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

ETS_MODES = ("fixed", "learnable")
MEM_TARGET_NORMS = ("lead", "patch", "none")
TEXT_POOLINGS = ("first", "mean")
ECG_POOLINGS = ("cls", "mean")
ETS_ECG_VIEWS = ("masked", "full")
PROMPT_STYLES = ("description", "name")


@functools.lru_cache(maxsize=1)
def _common_config_keys() -> frozenset:
    return frozenset(PretrainedConfig().to_dict())


_KINDS = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"), "bool": (bool, "true or false"),
          "str": (str, "a string")}


def _check_types(cls, values: dict) -> None:
    """Each setting of `cls` against its annotation (a hand-edited config.json's "128" or 2.0 failed deep inside
    the model with a message naming neither the file's field nor what it should be)."""
    for name, param in inspect.signature(cls.__init__).parameters.items():
        annotation = str(param.annotation)
        optional = annotation.startswith("Optional[")
        kind = _KINDS.get(annotation[9:-1] if optional else annotation)
        value = values.get(name)
        if kind is None or name not in values or (optional and value is None):
            continue
        wanted, said = kind
        if isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
            raise ValueError(f"{cls.__name__}: {name} must be {said}, got {value!r}")
    layers = values.get("conv_layers")
    if layers is not None and not (
            isinstance(layers, (list, tuple)) and layers and all(
                isinstance(layer, (list, tuple)) and len(layer) == 3 and all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in layer)
                for layer in layers)):
        raise ValueError(f"{cls.__name__}: conv_layers must be a list of [channels, kernel, stride] lists of "
                         f"positive integers, got {layers!r}")


# A setting written under the name its pipeline keyword has: kept aside as an extra key, zero-shot fell back to
# description prompts. (Not every key that ends a setting's name: transformers itself sets `layer_norm_eps`.)
_SHORT_NAMES = {"prompt_style": "zero_shot_prompt_style"}


def _refuse_misspelt(cls, kwargs: dict) -> None:
    """PretrainedConfig keeps any extra key (config.json carries extras such as `custom_pipelines`), so a misspelt
    setting (`fusion_num_head=4`) would be kept aside and the default used. An extra key that transformers does not
    know and that is close to one of `cls`'s own settings is taken for a misspelling and refused."""
    own = [n for n, p in inspect.signature(cls.__init__).parameters.items()
           if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    common = _common_config_keys()
    for key in kwargs:
        close = [] if key in common else ([_SHORT_NAMES[key]] if key in _SHORT_NAMES and _SHORT_NAMES[key] in own
                                          else difflib.get_close_matches(key, own, n=1, cutoff=0.85))
        if close:
            raise TypeError(f"{cls.__name__}: unknown setting {key!r} (did you mean {close[0]!r}?); "
                            f"its settings: {', '.join(own)}")


def _text_config_from(value) -> PretrainedConfig:
    if value is None:
        value = dict(FLAN_T5_BASE)
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    said = "model_type" in value
    model_type = value.pop("model_type", "t5")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"text_config: unknown model_type {model_type!r}")
    try:
        return CONFIG_MAPPING[model_type](**value)
    except Exception as err:  # transformers' configs raise TypeError, ValueError or huggingface_hub's own errors
        how = f"model_type {model_type!r}" if said else f"no model_type, so read as {model_type!r} (the default)"
        raise ValueError(f"text_config ({how}) is not a valid {CONFIG_MAPPING[model_type].__name__}: {err}") from err


class DBetaECGConfig(PretrainedConfig):
    r"""The ECG encoder: strided conv feature extractor, convolutional positional encoding, post-LN transformer.

    `conv_layers` lists (channels, kernel, stride) per conv; the product of strides is the token size in samples
    (16 by default: 5000 samples -> 312 tokens of 32 ms). `num_samples`: the input length the model was trained
    on (an export records its processor's, 5000: 10 s at 500 Hz); an input of another length, such as a raw
    1000 Hz array that bypassed the processor, is refused. None: any length (the layers allow it).
    `sampling_rate` and `lead_names`: the rate and lead order of that input, and `keep_samples` the cut a
    classifier was fine-tuned on (None: none), recorded by an export from its processor; a processor set
    otherwise is refused where model and processor meet (the pipelines, the evaluations). `sampling_rate` None:
    not recorded (exports written before 2026-12-03), not checked.
    """

    model_type = "dbeta_ecg"
    base_config_key = "ecg_config"

    def __init__(
        self,
        num_leads: int = 12,
        conv_layers=((256, 2, 2),) * 4,
        conv_bias: bool = False,
        hidden_size: int = 768,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        conv_pos_kernel: int = 128,
        conv_pos_groups: int = 16,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        input_dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        num_samples: Optional[int] = None,
        sampling_rate: Optional[float] = None,
        lead_names: Optional[list] = None,
        keep_samples: Optional[int] = None,
        **kwargs,
    ):
        _refuse_misspelt(DBetaECGConfig, kwargs)
        _check_types(DBetaECGConfig, locals())
        if lead_names is not None and not (isinstance(lead_names, (list, tuple)) and len(lead_names) == num_leads
                                           and all(isinstance(n, str) for n in lead_names)):
            raise ValueError(f"DBetaECGConfig: lead_names must be a list of {num_leads} lead names or null, got "
                             f"{lead_names!r}")
        if sampling_rate is not None and not sampling_rate > 0:
            raise ValueError(f"DBetaECGConfig: sampling_rate must be a positive number or null, got {sampling_rate!r}")
        self.num_samples = num_samples
        self.sampling_rate = sampling_rate
        self.lead_names = list(lead_names) if lead_names is not None else None
        self.keep_samples = keep_samples
        self.num_leads = num_leads
        self.conv_layers = [list(layer) for layer in conv_layers]
        self.conv_bias = conv_bias
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.conv_pos_kernel = conv_pos_kernel
        self.conv_pos_groups = conv_pos_groups
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.input_dropout = input_dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"ecg_config: hidden_size {hidden_size} is not divisible by {num_attention_heads} heads")

    @property
    def token_size(self) -> int:
        size = 1
        for _, _, stride in self.conv_layers:
            size *= stride
        return size

    def to_dict(self):
        out = super().to_dict()
        out.pop("_name_or_path", None)  # where a sub-config was loaded from is not part of it
        return out

    def num_tokens(self, num_samples: int) -> int:
        n = num_samples
        for _, kernel, stride in self.conv_layers:
            n = (n - kernel) // stride + 1
        return n


class DBetaConfig(PretrainedConfig):
    r"""Configuration of a D-BETA model.

    Args:
        ecg_config: a `DBetaECGConfig` (or its dict).
        text_config: any Hugging Face encoder config or its dict with `model_type`; T5 configs use T5's encoder,
            others `AutoModel`. Default: google/flan-t5-base.
        hidden_size: width of the projections, the fusion layers and the 768-d features.
        num_fusion_layers: cross-attention layers per stream (6 text + 6 ECG by default).
        mem_layer: the fused ECG stream after this many fusion layers feeds the MEM decoder.
        mem_mask_ratio: fraction of ECG tokens hidden from the encoder during pretraining (CLS is never hidden).
        mem_decoder_conv_kernel: a depthwise convolution of this odd width over the decoder's unshuffled token
            sequence (visible and mask tokens) before its transformer blocks, so each hidden token reads its
            neighbours directly; 0 = none (the authors' decoder). With 200 ms tokens and 75% hidden, the authors'
            decoder stays at its predict-zero level for thousands of steps; with a width-5 convolution MEM learns
            within hundreds (`small()` uses 5).
        mem_positions_see_hidden: whether the encoder's convolutional positions are computed before masking, over
            every token (the authors' order). That convolution mixes each token with its neighbours' content, so
            the visible tokens then carry part of the hidden tokens' signal and MEM partly reads the answer from
            its input. False (default) computes them on the sequence with hidden tokens zeroed. Inference, which
            masks nothing, is the same either way.
        mem_target_norm: "lead" z-scores each lead of each record over the whole signal (the authors' choice),
            "patch" z-scores each patch (MAE's), "none" regresses raw values.
        ets_mode: "fixed" is the authors' ECG-text sigmoid loss (raw dot product of tanh features, scale 1, no
            bias, averaged over all B x B pairs); "learnable" is SigLIP's (L2-normalised features, learnable
            temperature and bias, summed over each ECG's texts and averaged over the ECGs). At the paper's equal
            loss weights the authors' average is B times smaller and MLM's gradients swamp it.
        ets_scale_init, ets_bias_init: the learnable temperature and bias at initialisation (SigLIP: 10 and -10,
            tuned for batches of thousands; with a batch of B the no-information optimum of the bias is about
            -log(B - 1), which a bias of -10 reaches only after thousands of Adam steps).
        loss weights: `mem_weight`, `mlm_weight`, `etm_weight`, `ets_weight` (the authors sum them unweighted).
        ets_gather: in training mode, all-gather features across processes so the ECG-text loss sees the global
            batch (evaluation scores each batch on its own).
        text_pooling: how the unimodal text feature reads the text encoder: "first" takes token 0 (the authors';
            T5's first word piece, BERT's [CLS]); "mean" averages the non-padding tokens, which is how
            sentence-embedding encoders such as all-MiniLM-L6-v2 were trained to be read.
        ecg_pooling: how the ECG feature reads the ECG encoder: "cls" takes the class token (the authors'); "mean"
            averages the signal tokens, as MERL and MAE-style linear probes do.
        ets_ecg_view: the ECG the contrastive loss sees: "masked" reuses the MEM forward with 75% of the tokens
            hidden (the authors'; no extra cost); "full" runs the ECG encoder a second time on every token, so
            training matches inference, where the feature always sees the whole record.
        zero_shot_prompt_style: how a class code becomes text for zero-shot use (the pipeline, eval.zero_shot):
            "description" encodes the prompt set's whole entry, "<full name>. <what the ECG shows>." (the
            authors' style: LLM-written descriptions); "name" encodes the full name alone, which suits a text
            tower that only ever saw short reports (it stays a property of the checkpoint, set at pretraining).
    """

    model_type = "dbeta"
    # Both sub-configs are declared so that attention implementation and dtype settings reach both encoders.
    sub_configs = {"ecg_config": DBetaECGConfig, "text_config": AutoConfig}

    def __init__(
        self,
        ecg_config=None,
        text_config=None,
        hidden_size: int = 768,
        num_fusion_layers: int = 6,
        fusion_num_heads: int = 12,
        fusion_intermediate_size: int = 3072,
        fusion_dropout: float = 0.1,
        fusion_layer_norm_eps: float = 1e-12,
        mem_layer: int = 3,
        mem_mask_ratio: float = 0.75,
        mem_decoder_hidden_size: int = 384,
        mem_decoder_layers: int = 4,
        mem_decoder_heads: int = 6,
        mem_decoder_max_positions: int = 512,
        mem_target_norm: str = "lead",
        mem_decoder_conv_kernel: int = 0,
        mem_positions_see_hidden: bool = False,
        mlm_probability: float = 0.25,
        ets_mode: str = "fixed",
        ets_gather: bool = True,
        ets_scale_init: float = 10.0,
        ets_bias_init: float = -10.0,
        text_pooling: str = "first",
        ecg_pooling: str = "cls",
        ets_ecg_view: str = "masked",
        zero_shot_prompt_style: str = "description",
        mem_weight: float = 1.0,
        mlm_weight: float = 1.0,
        etm_weight: float = 1.0,
        ets_weight: float = 1.0,
        classifier_dropout: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        _refuse_misspelt(DBetaConfig, kwargs)
        _check_types(DBetaConfig, locals())
        if isinstance(ecg_config, dict):
            ecg_config = DBetaECGConfig(**ecg_config)
        self.ecg_config = ecg_config if ecg_config is not None else DBetaECGConfig()
        self.text_config = _text_config_from(text_config)
        self.hidden_size = hidden_size
        self.num_fusion_layers = num_fusion_layers
        self.fusion_num_heads = fusion_num_heads
        self.fusion_intermediate_size = fusion_intermediate_size
        self.fusion_dropout = fusion_dropout
        self.fusion_layer_norm_eps = fusion_layer_norm_eps
        self.mem_layer = mem_layer
        self.mem_mask_ratio = mem_mask_ratio
        self.mem_decoder_hidden_size = mem_decoder_hidden_size
        self.mem_decoder_layers = mem_decoder_layers
        self.mem_decoder_heads = mem_decoder_heads
        self.mem_decoder_max_positions = mem_decoder_max_positions
        self.mem_target_norm = mem_target_norm
        self.mem_decoder_conv_kernel = mem_decoder_conv_kernel
        self.mem_positions_see_hidden = mem_positions_see_hidden
        self.mlm_probability = mlm_probability
        self.ets_mode = ets_mode
        self.ets_gather = ets_gather
        self.ets_scale_init = ets_scale_init
        self.ets_bias_init = ets_bias_init
        self.text_pooling = text_pooling
        self.ecg_pooling = ecg_pooling
        self.ets_ecg_view = ets_ecg_view
        self.zero_shot_prompt_style = zero_shot_prompt_style
        self.mem_weight = mem_weight
        self.mlm_weight = mlm_weight
        self.etm_weight = etm_weight
        self.ets_weight = ets_weight
        self.classifier_dropout = classifier_dropout
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self._validate()

    def _validate(self):
        if self.ets_mode not in ETS_MODES:
            raise ValueError(f"ets_mode must be one of {ETS_MODES}, got {self.ets_mode!r}")
        if self.ets_scale_init <= 0:
            raise ValueError(f"ets_scale_init must be > 0, got {self.ets_scale_init}")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")
        if self.ecg_pooling not in ECG_POOLINGS:
            raise ValueError(f"ecg_pooling must be one of {ECG_POOLINGS}, got {self.ecg_pooling!r}")
        if self.ets_ecg_view not in ETS_ECG_VIEWS:
            raise ValueError(f"ets_ecg_view must be one of {ETS_ECG_VIEWS}, got {self.ets_ecg_view!r}")
        if self.zero_shot_prompt_style not in PROMPT_STYLES:
            raise ValueError(f"zero_shot_prompt_style must be one of {PROMPT_STYLES}, "
                             f"got {self.zero_shot_prompt_style!r}")
        if self.mem_target_norm not in MEM_TARGET_NORMS:
            raise ValueError(f"mem_target_norm must be one of {MEM_TARGET_NORMS}, got {self.mem_target_norm!r}")
        if not 1 <= self.mem_layer <= self.num_fusion_layers:
            raise ValueError(f"mem_layer must be in [1, {self.num_fusion_layers}], got {self.mem_layer}")
        if self.hidden_size % self.fusion_num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.fusion_num_heads} heads")
        kernel = self.mem_decoder_conv_kernel
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 0 or (kernel and kernel % 2 == 0):
            raise ValueError(f"mem_decoder_conv_kernel must be 0 or an odd positive integer, got {kernel!r}")
        if not isinstance(self.mem_positions_see_hidden, bool):
            raise ValueError(f"mem_positions_see_hidden must be true or false, got {self.mem_positions_see_hidden!r}")
        if not 0.0 <= self.mem_mask_ratio < 1.0:
            raise ValueError(f"mem_mask_ratio must be in [0, 1), got {self.mem_mask_ratio}")

    @property
    def text_hidden_size(self) -> int:
        text = self.text_config
        return getattr(text, "d_model", None) or text.hidden_size

    def to_dict(self):
        out = super().to_dict()
        out["ecg_config"] = self.ecg_config.to_dict()
        out["text_config"] = self.text_config.to_dict()
        # Where the text config was loaded from may be a local path: not part of the model (kept empty, as the
        # text config class itself writes it when loaded on its own).
        if "_name_or_path" in out["text_config"]:
            out["text_config"]["_name_or_path"] = ""
        return out

    @classmethod
    def small(cls, text_config=None, **overrides) -> "DBetaConfig":
        """A ~2.2M-parameter D-BETA (not counting the text encoder) for tests, CPU demos and quick experiments.

        Width 128, 4 ECG layers, 2 + 2 fusion layers, 2 MEM decoder blocks. Pass `text_config` (e.g. a small
        T5 or BERT config) to match the text encoder you have.
        """
        # Overlapping strided convs make 200 ms tokens (49 per 10 s instead of 312): on a CPU this learns rhythm
        # and morphology in hundreds of steps where 32 ms tokens need thousands, at a fifth of the step time.
        # No attention dropout, so scaled_dot_product_attention takes its fused CPU kernel.
        ecg = DBetaECGConfig(
            conv_layers=[(128, 10, 5), (128, 5, 5), (128, 4, 4)],
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            conv_pos_kernel=32,
            conv_pos_groups=8,
            attention_dropout=0.0,
        )
        values = dict(
            ecg_config=ecg,
            text_config=text_config,
            hidden_size=128,
            num_fusion_layers=2,
            fusion_num_heads=4,
            fusion_intermediate_size=512,
            mem_layer=1,
            mem_decoder_hidden_size=64,
            mem_decoder_layers=2,
            mem_decoder_heads=2,
            mem_decoder_conv_kernel=5,
        )
        values.update(overrides)
        return cls(**values)


# Saved copies name this file in config.json's auto_map and carry it, however the class was imported (transformers
# does this for classes it loaded as remote code; a class imported from the installed package needs it said).
DBetaConfig.register_for_auto_class()
