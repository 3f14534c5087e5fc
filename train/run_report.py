"""What a pretraining run tells at its end: the facts for the export's model card, the export (and optional Hub
push), and OUTPUT/metrics.json."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from train.checkpoints import TrainState
from train.model_setup import public_name
from train.settings import PretrainSettings

logger = logging.getLogger("train.run_report")


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def card_facts(s: PretrainSettings, state: TrainState, info: dict) -> dict:
    o = s.optim
    facts = {
        "pretraining data": info.get("data", public_name(s.data.dataset)),
        "negatives": info.get("negatives", ""),
        "text encoder init": info.get("text_init", ""),
        "text encoder": ("trained" if not s.model.freeze_text_encoder
                         else f"frozen but for its top {s.model.text_trainable_layers} layers"
                         if s.model.text_trainable_layers
                         else f"frozen (LiT-style), computed in {info.get('text_compute', 'fp32')}"),
        "config overrides": ", ".join(f"{k}={v}" for k, v in sorted(s.model.overrides.items())) or "none",
        "optimizer steps": state.step,
        "samples seen": state.samples,
        "global batch": info.get("global_batch", ""),
        "optimizer": (f"AdamW lr {o.lr:g}, betas {tuple(o.betas)}, weight decay {o.weight_decay:g}, "
                      f"{o.warmup_steps} warmup steps then cosine to {o.min_lr_ratio:g}x, clip {o.max_grad_norm}"
                      + (f", text encoder at lr x {o.text_lr_ratio:g}" if o.text_lr_ratio != 1 else "")),
        "precision": s.train.mixed_precision,
        "processes": info.get("world_size", 1),
        "seed": s.seed,
    }
    if state.bad_steps:
        facts["skipped steps (non-finite)"] = state.bad_steps
    if state.train_losses:
        facts["final training losses"] = _fmt(state.train_losses)
    if state.validation:
        facts["validation"] = _fmt(state.validation)
    facts["exported"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return facts


def export_dir_of(s: PretrainSettings) -> Path:
    return Path(s.export_dir) if s.export_dir else Path(s.output_dir) / "model"


def export_and_push(model, tokenizer, s: PretrainSettings, state: TrainState, info: dict, accelerator=None,
                    status: str = "finished") -> dict:
    """Export (the main process writes), push if asked, write OUTPUT/metrics.json. Returns its content."""
    from train.checkpoints import non_finite_tensors
    from train.export import build_processor, export_model

    bad = non_finite_tensors(model.named_parameters())
    if bad:
        raise RuntimeError(f"refusing to export non-finite weights ({len(bad)} tensors, e.g. {', '.join(bad[:5])})")
    is_main = accelerator is None or accelerator.is_main_process
    export_dir = export_dir_of(s)
    kwargs = {"is_main_process": is_main}
    if accelerator is not None:
        kwargs["save_function"] = accelerator.save
    export_model(model, export_dir, processor=build_processor(tokenizer), card_facts=card_facts(s, state, info),
                 **kwargs)
    metrics = {
        "status": status,
        "steps": state.step,
        "samples": state.samples,
        "skipped_steps": state.bad_steps,
        "global_batch": info.get("global_batch"),
        "world_size": info.get("world_size", 1),
        "train": state.train_losses,
        "validation": state.validation,
        "export_dir": str(export_dir),
        "push": None,
        "elapsed_s": info.get("elapsed_s"),
        "samples_per_s": info.get("samples_per_s"),
        "distributed_type": info.get("distributed_type"),
        "history": state.history,
    }
    repo = s.hub.push_to_hub
    if repo and is_main:
        from train.hub import push_export

        try:
            url = push_export(export_dir, repo, private=s.hub.private)
            metrics["push"] = {"repo": repo, "ok": True, "commit_url": url}
            logger.info("pushed %s to %s: %s", export_dir, repo, url)
        except Exception as err:  # noqa: BLE001 - report any failure, keep the export
            metrics["push"] = {"repo": repo, "ok": False, "error": f"{type(err).__name__}: {err}"}
            logger.error("push to %s FAILED: %s\nThe export in %s is complete and untouched; retry with:\n"
                         "  python -m train.push_to_hub --folder %s --repo-id %s", repo, err, export_dir,
                         export_dir, repo)
    if is_main:
        write_metrics(s.output_dir, metrics)
        print(json.dumps(metrics), flush=True)
    return metrics


def write_metrics(output_dir, metrics: dict) -> None:
    from train.folders import write_json

    write_json(Path(output_dir) / "metrics.json", metrics)
