"""Optimizer and learning-rate schedule for pretraining: AdamW (Adam when weight decay is 0, as in the paper) with
linear warmup and cosine decay."""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger("train.optim")


def build_optimizer(model, lr: float, weight_decay: float, betas, eps: float, fused: bool,
                    text_lr_ratio: float = 1.0) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases and norms never decay. The text encoder's trainable layers
    learn at lr x `text_lr_ratio`: they start pretrained, the rest of the model from scratch."""
    text = {id(p) for p in model.text_model.parameters()}
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
            key = (id(p) in text, no_decay)
            if key not in groups:
                groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                               "lr": lr * text_lr_ratio if key[0] else lr}
            groups[key]["params"].append(p)
    groups = [groups[key] for key in sorted(groups)]  # group 0 is the model's own, the LR the logs report
    adam = dict(lr=lr, betas=tuple(betas), eps=eps)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **adam)
        except RuntimeError as err:  # a device without the fused kernel
            logger.warning("fused AdamW unavailable (%s); using the default implementation", err)
    return torch.optim.AdamW(groups, **adam)


class WarmupCosine:
    """LR factor: linear warmup over `warmup` steps, then cosine from 1 to `min_ratio` at `total` steps.

    A class rather than a closure so the schedule is described by plain numbers (LambdaLR stores the __dict__ of
    callable objects in its state_dict, which checkpoints keep as JSON)."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = int(warmup), int(total), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, max_steps, min_lr_ratio))
