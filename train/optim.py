"""Optimizer and learning-rate schedule for pretraining: AdamW (Adam when weight decay is 0, as in the paper) with
linear warmup and cosine decay."""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger("train.optim")


def build_optimizer(model, lr: float, weight_decay: float, betas, eps: float, fused: bool) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases and norms never decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
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
