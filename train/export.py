"""Export a D-BETA model as a self-contained Hub folder.

The folder holds model.safetensors, config.json (with `auto_map` for every class and the zero-shot pipeline in
`custom_pipelines`), the remote-code files, the processor (processor_config.json and the tokenizer files), the
prompt set, and model_card.md filled with the facts of the run. `AutoModel`, `AutoModelForPreTraining`,
`AutoModelForSequenceClassification`, `AutoProcessor` and `pipeline("zero-shot-ecg-classification")` load it
with `trust_remote_code=True`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from configuration_dbeta import DBetaConfig
from modeling_dbeta import DBetaForECGClassification, DBetaForPreTraining, DBetaModel
from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_TASK = "zero-shot-ecg-classification"
AUTO_MAP = {
    "AutoConfig": "configuration_dbeta.DBetaConfig",
    "AutoModel": "modeling_dbeta.DBetaModel",
    "AutoModelForPreTraining": "modeling_dbeta.DBetaForPreTraining",
    "AutoModelForSequenceClassification": "modeling_dbeta.DBetaForECGClassification",
}
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_dbeta.ZeroShotECGClassificationPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
}
# Shipped beside the weights: the pipeline (not copied by save_pretrained) and its prompt set.
EXTRA_FILES = ("pipeline_dbeta.py", "prompting_dbeta.py", "prompts_dbeta.json")


def register_auto_classes() -> None:
    """Mark our classes for their Auto classes so save_pretrained copies the code files."""
    DBetaConfig.register_for_auto_class()
    DBetaModel.register_for_auto_class("AutoModel")
    DBetaForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    DBetaForECGClassification.register_for_auto_class("AutoModelForSequenceClassification")
    DBetaFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    DBetaProcessor.register_for_auto_class("AutoProcessor")


def build_processor(tokenizer, **feature_extractor_kwargs) -> DBetaProcessor:
    """A DBetaProcessor from a tokenizer (object, local folder or Hub id) and feature-extractor settings."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    return DBetaProcessor(DBetaFeatureExtractor(**feature_extractor_kwargs), tokenizer)


def render_model_card(facts: Optional[dict] = None, template: Path = ROOT / "model_card.md") -> str:
    """The package's model card with a table of this export's facts appended."""
    card = template.read_text() if template.is_file() else "# D-BETA\n"
    if facts:
        rows = "\n".join(f"| {k} | {v} |" for k, v in facts.items())
        card = card.rstrip() + "\n\n## This export\n\n| fact | value |\n| --- | --- |\n" + rows + "\n"
    return card


def export_model(model, output_dir, processor: Optional[DBetaProcessor] = None, card_facts: Optional[dict] = None,
                 is_main_process: bool = True, save_function=None) -> Path:
    """Write `model` (any D-BETA class), its processor, the pipeline, prompts and model card to `output_dir`."""
    out = Path(output_dir)
    register_auto_classes()
    model.config.auto_map = dict(AUTO_MAP)
    model.config.custom_pipelines = dict(CUSTOM_PIPELINES)
    kwargs = {"is_main_process": is_main_process}
    if save_function is not None:
        kwargs["save_function"] = save_function
    model.save_pretrained(out, **kwargs)
    if not is_main_process:
        return out
    if processor is not None:
        processor.save_pretrained(out)
    for name in EXTRA_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, out / name)
    (out / "model_card.md").write_text(render_model_card(card_facts))
    return out
