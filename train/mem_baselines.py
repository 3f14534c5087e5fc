"""Trivial reference points for the masked-ECG loss (MEM), on the same hidden tokens the model is scored on.

A MEM loss means little on its own: with lead-normalised targets 1.0 is what predicting zero scores, and a model
that only smooths across the gaps should at least match straight lines drawn between the visible tokens. Both
baselines use the model's own targets (`mem_targets`), so they follow `mem_target_norm`.
"""

from __future__ import annotations

import numpy as np
import torch


def mem_baselines(target: torch.Tensor, mask: torch.Tensor, num_leads: int) -> dict:
    """Mean squared error over hidden tokens of two predictions that need no learning.

    target: [B, T, leads * token_size] (lead-major within a token, as `mem_targets` returns); mask: [B, T], 1 =
    hidden. Returns {"mem_zero": predicting 0, "mem_interp": each lead linearly interpolated across every hidden
    gap from the nearest visible samples (held flat before the first and after the last visible token)}, each
    averaged like the model's loss: per-token MSE, then the mean over hidden tokens. With "patch" targets the
    interpolation runs through per-token normalised values, so it is only a rough reference there.
    """
    b, t, width = target.shape
    if width % num_leads:
        raise ValueError(f"target width {width} is not a multiple of {num_leads} leads")
    size = width // num_leads
    target = target.detach().float().cpu()
    mask = mask.detach().float().cpu()
    series = target.reshape(b, t, num_leads, size).permute(0, 2, 1, 3).reshape(b, num_leads, t * size).numpy()
    hidden = np.repeat(mask.numpy() > 0, size, axis=1)  # [B, T * size] per sample
    interp = np.zeros_like(series)
    grid = np.arange(t * size)
    for i in range(b):
        seen = ~hidden[i]
        if not seen.any():
            continue
        for lead in range(num_leads):
            interp[i, lead] = np.interp(grid, grid[seen], series[i, lead, seen])
    interp = torch.from_numpy(interp).reshape(b, num_leads, t, size).permute(0, 2, 1, 3).reshape(b, t, width)
    count = mask.sum().clamp(min=1.0)
    return {
        "mem_zero": float((target.pow(2).mean(-1) * mask).sum() / count),
        "mem_interp": float(((interp - target).pow(2).mean(-1) * mask).sum() / count),
    }
