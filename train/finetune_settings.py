"""Fine-tuning settings (train.finetune): a typed schema on the machinery of train/settings.py, so a run is set the
way pretraining is: defaults, `--config FILE` (YAML/JSON), `--set section.key=value`, then the flags; every value
is checked before any data or model is read. Names follow pretraining's where the meaning is the same (optim.lr,
train.per_device_batch_size, train.mixed_precision, train.log_every, ...). What transformers.TrainingArguments
checks itself (e.g. warmup_steps >= 0) it checks when train.finetune builds it, still before anything is loaded.

    python -m train.finetune --print-config [--config train/configs/finetune_ptbxl.yaml]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from eval.label_sets import PTBXL_TASKS
from train.settings import ConfigError, Settings, _f

FINETUNE_DATASETS = ("ptbxl", "cpsc2018", "csn", "physionet2021")


@dataclass
class FinetuneDataSettings:
    dataset: Optional[str] = _f(None, "REQUIRED: ptbxl | cpsc2018 | csn | physionet2021", choices=FINETUNE_DATASETS,
                                required=True)
    root: Optional[str] = _f(None, "REQUIRED: the dataset's folder (eval.datasets.load_downstream)", required=True)
    task: Optional[str] = _f(None, "PTB-XL task: super | sub | form | rhythm (ptbxl only)", choices=PTBXL_TASKS)
    protocol_num_samples: Optional[int] = _f("auto", "cut records to this many samples before the processor pads: "
                                                     "auto (the dataset's protocol length, CPSC2018: 2500) | null | N",
                                             min=1, also=("auto", "none"))
    random_crop: bool = _f(False, "train on a random window of records longer than the processor's length")
    num_workers: int = _f(min(4, os.cpu_count() or 1), "DataLoader workers (each runs the feature extractor)", min=0)
    check_records: bool = _f(True, "read and condition every record of every split before training, so a bad "
                                   "record stops the run before its first step, not midway")
    on_error: str = _f("raise", "a record that cannot be read or conditioned: raise (stop, naming them all) | skip "
                                "(leave it out, named in a warning and in results.json)", choices=("raise", "skip"))


@dataclass
class FinetuneModelSettings:
    name_or_path: Optional[str] = _f(None, "REQUIRED: exported D-BETA folder or Hub repo id (with its processor)",
                                     required=True)
    classifier_dropout: Optional[float] = _f(None, "dropout before the new head; null = the model config's", min=0,
                                             max_exclusive=1)
    class_weights: str = _f("none", "auto: each class's positive weight is neg/pos over the train labels (clipped); "
                                    "none: all 1", choices=("auto", "none"))
    max_class_weight: float = _f(50.0, "auto class weights are clipped to [1/this, this]", min=1)


@dataclass
class FinetuneOptimSettings:
    lr: float = _f(1.0e-4, "peak learning rate, then linear decay (0 keeps the weights as they are)", min=0)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0)
    warmup_steps: int = _f(0, "linear warmup steps")


@dataclass
class FinetuneTrainSettings:
    epochs: float = _f(10.0, "training epochs (a fraction is allowed)", min_exclusive=0)
    max_steps: int = _f(-1, "stop after this many optimizer steps instead (-1: run the epochs)", min=1, also=(-1,))
    per_device_batch_size: int = _f(16, "micro-batch per device; global = this x devices x accumulation", min=1)
    eval_batch_size: Optional[int] = _f(None, "default: per_device_batch_size", min=1)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step (the loss is averaged)", min=1)
    mixed_precision: str = _f("no", "no | bf16 (autocast; CPU or GPU)", choices=("no", "bf16"))
    early_stopping_patience: int = _f(3, "epochs without a val macro AUROC gain before stopping; 0 = never", min=0)
    checkpoint_total_limit: Optional[int] = _f(2, "checkpoints kept, the best always among them (Trainer's "
                                                  "save_total_limit); null = all", min=1)
    log_every: int = _f(10, "optimizer steps between training-loss logs", min=1)
    log_with: list = _f([], "Trainer report_to integrations besides the console, e.g. [tensorboard]; [all] = "
                            "every installed one", item=str)
    progress: bool = _f(True, "tqdm progress bars")


@dataclass
class FinetuneEvalSettings:
    bootstrap: int = _f(1000, "bootstrap resamples for the test AUROC/AUPRC confidence intervals; 0 = none", min=0)


@dataclass
class FinetuneHubSettings:
    push_to_hub: Optional[str] = _f(None, "Hub repo id to upload the export to")
    private: bool = _f(False, "create the Hub repo private")


@dataclass
class FinetuneSettings(Settings):
    output_dir: Optional[str] = _f(None, "REQUIRED: checkpoints, results.json and (by default) export/",
                                   required=True)
    export_dir: Optional[str] = _f(None, "the fine-tuned model's folder; null = OUTPUT/export")
    seed: int = _f(42, "seed of the new head's initialisation, the data order and dropout", min=0, max=2**32 - 1)
    data: FinetuneDataSettings = field(default_factory=FinetuneDataSettings)
    model: FinetuneModelSettings = field(default_factory=FinetuneModelSettings)
    optim: FinetuneOptimSettings = field(default_factory=FinetuneOptimSettings)
    train: FinetuneTrainSettings = field(default_factory=FinetuneTrainSettings)
    eval: FinetuneEvalSettings = field(default_factory=FinetuneEvalSettings)
    hub: FinetuneHubSettings = field(default_factory=FinetuneHubSettings)

    def validate(self) -> None:
        """Every field's type and range, then the data set and task together; raise ConfigError."""
        super().validate()
        if self.data.protocol_num_samples == "none":
            self.data.protocol_num_samples = None
        if self.data.dataset == "ptbxl" and self.data.task is None:
            raise ConfigError(f"data.task (--task) is required for ptbxl: one of {', '.join(PTBXL_TASKS)}")
        if self.data.on_error == "skip" and not self.data.check_records:
            raise ConfigError("data.on_error=skip needs data.check_records=true: records are left out by the check "
                              "before training (a record failing midway cannot be left out of a running epoch)")
        if self.data.dataset not in (None, "ptbxl") and self.data.task is not None:
            raise ConfigError(f"data.task applies to ptbxl only; {self.data.dataset} has no tasks "
                              f"(got {self.data.task!r})")
