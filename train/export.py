"""Export a D-BETA model as a self-contained Hub folder.

The folder holds model.safetensors, config.json (with `auto_map` for every class and, in `custom_pipelines`, the
one pipeline that fits the model: "zero-shot-ecg-classification" for a pretrained model, "ecg-classification" for
a fine-tuned `DBetaForECGClassification`, which has no text tower to score labels zero-shot), the remote-code
files, the processor (processor_config.json and the tokenizer files), the prompt set, and README.md: the Hub card,
made with huggingface_hub's `ModelCard` (front matter for this export, its shapes, a table of the run's facts) from
the template model_card.md, or for a classifier from the template's input contract and citation with its own
usage. `AutoModel`, `AutoModelForPreTraining`, `AutoModelForSequenceClassification`, `AutoProcessor` and that
pipeline load it with `trust_remote_code=True`.

Nothing local leaks into the folder: sub-configs drop where they were loaded from, and absolute paths in the
card's facts are cut to their last component. Weights with a NaN or infinite value are refused.

An export replaces its folder as a whole: it is written beside it (`.NAME.partial`) and renamed into place, so a
run stopped midway leaves the previous export intact and no file of an older export (another tokenizer's, say)
stays beside the new weights. Only a new or empty folder or an earlier D-BETA export is replaced
(`check_export_target`); the runs that export call it before their first step too.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

from dbeta.modeling_dbeta import (CLASSIFICATION_PIPELINES, COMPANION_FILES, ZERO_SHOT_PIPELINES,
                                  DBetaForECGClassification)
from dbeta.processing_dbeta import DBetaFeatureExtractor, DBetaProcessor
from train.folders import published_folder

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_TASK = next(iter(ZERO_SHOT_PIPELINES))
CLASSIFICATION_TASK = next(iter(CLASSIFICATION_PIPELINES))
AUTO_MAP = {
    "AutoConfig": "configuration_dbeta.DBetaConfig",
    "AutoModel": "modeling_dbeta.DBetaModel",
    "AutoModelForPreTraining": "modeling_dbeta.DBetaForPreTraining",
    "AutoModelForSequenceClassification": "modeling_dbeta.DBetaForECGClassification",
}
# Shipped beside the weights: the pipeline, its prompt and scoring module and its prompt set (the same files a
# re-save copies).
EXTRA_FILES = COMPANION_FILES


class ExportTargetError(ValueError):
    """The export folder cannot be replaced: it holds something that is not a D-BETA export, or what the run reads."""


# What an export (weights, config, processor, code, card; ONNX graphs) is made of. A D-BETA folder holding anything
# else (a training checkpoint's optimizer state, a git clone's .git, the user's notes) is not replaced.
EXPORT_FILES = ("config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json",
                "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model",
                "*.jinja", "*.safetensors", "model.safetensors.index.json", "*_dbeta.py", "prompts_dbeta.json",
                "README.md", "model_card.md", "*.onnx", "*.onnx.data", "onnx_config.json")


def _is_dbeta_export(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "dbeta"
    except (OSError, ValueError, AttributeError):
        return False


def is_export_file(path: Path) -> bool:
    return path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in EXPORT_FILES)


def _not_export_files(folder: Path) -> list:
    """Entries of `folder` that no export writes (sub-folders included), sorted."""
    return sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir()
                  if not is_export_file(entry))


def check_export_target(output_dir, protect: Sequence = ()) -> Path:
    """Raise ExportTargetError unless `output_dir` is absent, an empty folder or a D-BETA export, and neither is
    nor holds a folder in `protect` (the model a run starts from, its checkpoint folder). Returns it as a Path."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ExportTargetError(f"export folder {out} is a file")
    resolved = out.resolve()
    for path in protect:
        if path is None:
            continue
        other = Path(path).resolve()
        if other == resolved or resolved in other.parents:
            raise ExportTargetError(f"export folder {out} would replace {path}, which this run reads or writes; "
                                    "choose another export folder")
    if out.is_dir() and any(out.iterdir()):
        if not _is_dbeta_export(out):
            raise ExportTargetError(f"export folder {out} is not empty and holds no D-BETA export (config.json with "
                                    "model_type 'dbeta'); an export replaces its folder as a whole, so choose a new "
                                    "or empty folder")
        others = _not_export_files(out)
        if others:  # a checkpoint (optimizer state), a git clone, notes: lost with the folder
            raise ExportTargetError(f"export folder {out} holds a D-BETA model and also {', '.join(others[:5])}"
                                    f"{' ...' if len(others) > 5 else ''}, which no export writes (a training "
                                    "checkpoint? a git clone?); an export replaces its folder as a whole, so choose "
                                    "a new or empty folder")
    return out


def check_run_folder(output_dir, reads: Sequence = ()) -> None:
    """Raise ExportTargetError when a run's output folder is, or lies inside, a local folder in `reads` (the model it
    starts from): its checkpoints, lock and settings would be written into that model, and pushed with it."""
    out = Path(output_dir).resolve()
    for path in reads:
        if path is None or not Path(path).expanduser().is_dir():
            continue  # a Hub repo id, or nothing
        other = Path(path).expanduser().resolve()
        if out == other or other in out.parents:
            raise ExportTargetError(f"output folder {output_dir} is inside {path}, the model this run starts from; "
                                    "choose an output folder outside it")


def custom_pipelines_for(model) -> dict:
    """config.json's `custom_pipelines` for `model`: only the pipeline it can serve."""
    return copy.deepcopy(type(model)._pipelines)


def build_processor(tokenizer, **feature_extractor_kwargs) -> DBetaProcessor:
    """A DBetaProcessor from a tokenizer (object, local folder or Hub id) and feature-extractor settings."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    return DBetaProcessor(DBetaFeatureExtractor(**feature_extractor_kwargs), tokenizer)


# An absolute path (POSIX, ~ or a Windows drive) not inside a URL or a relative path: a run's local folders.
_LOCAL_PATH = re.compile(r"(?<![\w/:.~-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\|,;'\"()\[\]]+)+[/\\]?")
# A Hub repo id ("owner/name"), the only form `base_model` may take.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# "[1, 768]"-style shapes in the template: 768 is the full-size feature width.
_FEATURE_SHAPE = re.compile(r"\[(\w+), 768\]")


def record_model_input(model, processor) -> None:
    """The input the model is trained on, in its config (`ecg_config`: length, rate, lead order and a fine-tuning
    cut, from the processor), so that a raw array of another length, or a processor set otherwise, is refused
    where model and processor meet (DBetaFeatureExtractor.check_model_input)."""
    fe, ecg_config = processor.feature_extractor, model.config.ecg_config
    ecg_config.num_samples = int(fe.num_samples)
    ecg_config.sampling_rate = float(fe.sampling_rate)
    ecg_config.lead_names = [str(name) for name in fe.lead_names]
    ecg_config.keep_samples = int(fe.keep_samples) if fe.keep_samples is not None else None


def scrub_local_paths(text: str) -> str:
    """`text` with every absolute local path replaced by its last component ("/home/me/data/mimic" -> "mimic")."""
    return _LOCAL_PATH.sub(lambda m: Path(m.group(0).rstrip("/\\").replace("\\", "/")).name or "/", str(text))


def non_finite_weights(model) -> list:
    """Names of the model's floating-point tensors holding a NaN or an infinity."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all())]


def _hub_base_model(model) -> Optional[str]:
    """The Hub repo the model was loaded from (a fine-tune's base), or None for local folders and fresh models."""
    name = str(getattr(model, "name_or_path", "") or "")
    if _REPO_ID.match(name) and not Path(name).expanduser().exists():
        return name
    return None


def architecture_facts(model) -> dict:
    cfg = model.config
    ecg, text = cfg.ecg_config, cfg.text_config
    text_layers = getattr(text, "num_layers", None) or getattr(text, "num_hidden_layers", "?")
    ecg_row = (f"{len(ecg.conv_layers)} convs (token {ecg.token_size} samples), {ecg.num_hidden_layers} "
               f"transformer layers x {ecg.hidden_size}")
    parameters = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"
    if isinstance(model, DBetaForECGClassification):  # the ECG path and a head: no text tower, no fusion
        return {"class": type(model).__name__, "ECG encoder": ecg_row,
                "classifier": f"linear, {cfg.hidden_size} -> {cfg.num_labels} ({cfg.problem_type or 'unset'})",
                "parameters": parameters}
    return {
        "class": type(model).__name__,
        "feature size": f"{cfg.hidden_size} (`get_ecg_features` / `get_text_features`: [batch, {cfg.hidden_size}])",
        "ECG encoder": ecg_row,
        "text encoder": f"{text.model_type}, {text_layers} layers x {cfg.text_hidden_size}",
        "fusion layers": f"{cfg.num_fusion_layers} + {cfg.num_fusion_layers}",
        "parameters": parameters,
    }


# A fine-tuned classifier's card text; the warning, the input contract and the citation come from the template.
CLASSIFIER_CARD = '''# D-BETA ECG classifier

The ECG encoder of {origin} (D-BETA: Pham, Saeed, Ma; ICML 2025,
[arXiv 2410.02131](https://arxiv.org/abs/2410.02131)) fine-tuned with a linear head on {n} classes: {classes}.
Scores are {scoring}.

{warning}## How to use

```python
from transformers import pipeline

clf = pipeline("ecg-classification", model=REPO, trust_remote_code=True)
clf("record.dcm")                                 # [{{"label": ..., "score": ...}}, ...], highest first
clf(signal, sampling_rate=500, lead_names=leads)  # an array [leads, samples] in mV
clf(["rec1", "rec2.dcm"], batch_size=16)          # WFDB records and DICOM files, batched
```

`function_to_apply="sigmoid" | "softmax" | "none"` (or `multi_label=True` / `False`) overrides the scoring, `top_k=`
keeps the best classes. `AutoModelForSequenceClassification` and `AutoProcessor` load the model and its processor
with `trust_remote_code=True`. It has no text tower: it scores its own classes, not free-text labels.

{input_contract}{citation}'''
_SCORING = {
    "multi_label_classification": "multi-label: an independent sigmoid per class",
    "single_label_classification": "single-label: a softmax over the classes",
    "regression": "regression outputs, as they are",
    None: "a softmax over the classes (a sigmoid for a single class)",
}


def _template_section(text: str, heading: str) -> str:
    """The "## heading" section of a card's Markdown (heading included), or "" if it has none."""
    match = re.search(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(0).rstrip() + "\n\n" if match else ""


def classifier_card_text(model, template_text: str, base_model: Optional[str] = None) -> str:
    """The body of a fine-tuned classifier's card: what it predicts, its own pipeline, and the template's
    not-a-medical-device warning, input contract and citation; nothing about zero-shot, which it cannot do."""
    cfg = model.config
    classes = [str(cfg.id2label.get(i, i)) for i in range(cfg.num_labels)]
    warning = re.search(r"^\*\*Not a medical device\.\*\*.*?(?=\n\n|\Z)", template_text, flags=re.M | re.S)
    return CLASSIFIER_CARD.format(
        origin=f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a pretrained D-BETA",
        n=len(classes), classes=", ".join(classes), scoring=_SCORING.get(cfg.problem_type, _SCORING[None]),
        warning=warning.group(0) + "\n\n" if warning else "",
        input_contract=_template_section(template_text, "Input contract"),
        citation=_template_section(template_text, "Citation"))


def build_model_card(model, facts: Optional[dict] = None, *, base_model: Optional[str] = None,
                     datasets: Optional[Sequence[str]] = None, license: Optional[str] = None,
                     template: Path = ROOT / "model_card.md"):
    """The Hub card (`huggingface_hub.ModelCard`) of this export: the template with metadata made for it.

    Front matter: the template's licence, tags and language, `library_name: transformers`, no `pipeline_tag`
    (the Hub has no tag for ECG classification, zero-shot or not, and its `zero-shot-classification` is text NLI),
    and `base_model` / `datasets` only when given (`base_model` defaults to the Hub repo the model was loaded
    from). A fine-tuned `DBetaForECGClassification` gets its own text (`classifier_card_text`) and the tag
    "ecg-classification". The feature shapes in the text follow the export's hidden size; the facts table gets
    the architecture and `facts`, with local paths cut to their last component.
    """
    from huggingface_hub import ModelCard

    card = ModelCard(template.read_text() if template.is_file() else "---\nlicense: other\n---\n# D-BETA\n")
    data = card.data
    data.library_name = "transformers"
    data.pipeline_tag = None
    data.datasets = list(datasets) if datasets else None
    data.base_model = base_model or _hub_base_model(model)
    if license:
        data.license = license
    text = card.text
    if isinstance(model, DBetaForECGClassification):
        text = classifier_card_text(model, text, data.base_model)
        data.tags = [t for t in data.tags or [] if t != "multimodal"] + [CLASSIFICATION_TASK]
    hidden = model.config.hidden_size
    text = _FEATURE_SHAPE.sub(lambda m: f"[{m.group(1)}, {hidden}]", text)
    rows = {**architecture_facts(model), **(facts or {})}
    table = "\n".join(f"| {scrub_local_paths(k)} | {scrub_local_paths(v)} |" for k, v in rows.items())
    card.text = text.rstrip() + "\n\n## This export\n\n| fact | value |\n| --- | --- |\n" + table + "\n"
    return card


def export_model(model, output_dir, processor: Optional[DBetaProcessor] = None, card_facts: Optional[dict] = None,
                 is_main_process: bool = True, save_function=None, *, base_model: Optional[str] = None,
                 datasets: Optional[Sequence[str]] = None, license: Optional[str] = None) -> Path:
    """Write `model` (any D-BETA class), its processor, the pipeline, prompts and Hub card to `output_dir`.

    Refuses (ValueError naming them, before writing anything) weights with NaN or infinite values.
    `base_model`, `datasets` and `license` go into the card's front matter (see `build_model_card`).
    """
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(f"refusing to export {type(model).__name__} to {output_dir}: non-finite (NaN or infinite) "
                         f"values in {len(bad)} weight(s): {', '.join(bad[:20])}{' ...' if len(bad) > 20 else ''}")
    out = check_export_target(output_dir)
    model.config.auto_map = dict(AUTO_MAP)
    model.config.custom_pipelines = custom_pipelines_for(model)
    if processor is not None:
        record_model_input(model, processor)
    if not is_main_process:  # data-parallel ranks hold the same weights: the main process writes them
        return out
    with published_folder(out) as staging:
        model.save_pretrained(staging, **({"save_function": save_function} if save_function is not None else {}))
        if processor is not None:
            processor.save_pretrained(staging)
        for name in EXTRA_FILES:
            if (ROOT / name).is_file():
                shutil.copyfile(ROOT / name, staging / name)
        card = build_model_card(model, card_facts, base_model=base_model, datasets=datasets, license=license)
        card.save(staging / "README.md")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m train.export` has nothing to run: it says which commands export."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m train.export",
        description="The export library (export_model). A pretraining checkpoint is exported with `python -m "
                    "train.pretrain --config CONFIG --output-dir RUN --export-only RUN/checkpoints/CHECKPOINT "
                    "[--export-dir DIR]`; train.pretrain and train.finetune export at the end of a run.")
    parser.parse_args(argv)
    parser.error("this module is a library; use the commands above to export")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
