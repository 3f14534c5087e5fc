"""Validation during pretraining: each loss, ETM accuracy, the MEM loss's two no-learning baselines
(train.mem_baselines) and ECG->report retrieval R@1/5/10 (eval.metrics)."""

from __future__ import annotations

import numpy as np
import torch


LOSS_KEYS = ("loss", "mem_loss", "mlm_loss", "etm_loss", "ets_loss", "etm_accuracy")
MEM_BASELINE_KEYS = ("mem_zero", "mem_interp")


@torch.no_grad()
def evaluate(accelerator, model, val_rows, collator, batch_size: int, seed: int) -> dict:
    """Figures over every validation row, the rows sharded across processes.

    Eval mode, MEM masks seeded (the same every time), the ECG-text loss per batch (the model gathers across
    processes only in training mode). Retrieval scores the unmasked ECG features against the features of the
    distinct validation reports. `mem_zero` and `mem_interp` score predicting zero and straight lines across
    the gaps on the same hidden tokens as `mem_loss`: a mem_loss at or above them means MEM has learned nothing.
    """
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader

    from eval.metrics import recall_at_k
    from dbeta.modeling_dbeta import mem_targets
    from train.collator import MODEL_INPUTS, BatchCollate, EvalBatches, RowsWithBatchId
    from train.mem_baselines import mem_baselines

    unwrapped = accelerator.unwrap_model(model)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    bounds = np.linspace(0, len(val_rows), world + 1).astype(int)
    shard = list(range(bounds[rank], bounds[rank + 1]))
    loader = DataLoader(RowsWithBatchId(val_rows), batch_sampler=EvalBatches(shard, batch_size, rank * 10**6),
                        collate_fn=BatchCollate(collator), num_workers=0)
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(LOSS_KEYS + MEM_BASELINE_KEYS, 0.0)
    ecg_config = unwrapped.config.ecg_config
    rows, ecg_feats, text_feats, indices = 0, [], [], []
    try:
        for batch in loader:
            b = batch["ecg_values"].shape[0]
            inputs = {k: batch[k].to(device) for k in MODEL_INPUTS}
            generator = torch.Generator(device=device).manual_seed(seed + int(batch["batch_id"]))
            with accelerator.autocast():
                out = unwrapped(**inputs, generator=generator)
                ecg = unwrapped.get_ecg_features(inputs["ecg_values"]).pooler_output
                text = unwrapped.get_text_features(batch["report_input_ids"].to(device),
                                                   batch["report_attention_mask"].to(device)).pooler_output
            target = mem_targets(inputs["ecg_values"], out.mem_mask.shape[1], ecg_config.token_size,
                                 unwrapped.config.mem_target_norm)
            baselines = mem_baselines(target, out.mem_mask, ecg_config.num_leads)
            for k in LOSS_KEYS:
                sums[k] += float(getattr(out, k)) * b
            for k in MEM_BASELINE_KEYS:
                sums[k] += baselines[k] * b
            rows += b
            ecg_feats.append(ecg.float().cpu())
            text_feats.append(text.float().cpu())
            indices.append(batch["indices"])
    finally:
        model.train(was_training)

    local = {"sums": sums, "rows": rows,
             "ecg": torch.cat(ecg_feats) if ecg_feats else torch.zeros(0),
             "text": torch.cat(text_feats) if text_feats else torch.zeros(0),
             "indices": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)}
    parts = gather_object([local]) if world > 1 else [local]
    total = sum(p["rows"] for p in parts)
    if total == 0:
        return {}
    metrics = {k: sum(p["sums"][k] for p in parts) / total for k in sums}
    parts = [p for p in parts if p["rows"]]
    ecg = torch.cat([p["ecg"] for p in parts])
    text = torch.cat([p["text"] for p in parts])
    idx = torch.cat([p["indices"] for p in parts])
    # one candidate per report as the model reads it: reports differing only in spacing or case are one report
    reports = collator.processor.text_keys(val_rows.with_format(None)[idx.tolist()]["report"],
                                           max_length=collator.max_length)
    unique, first, targets = {}, [], []
    for i, r in enumerate(reports):
        if r not in unique:
            unique[r] = len(unique)
            first.append(i)
        targets.append(unique[r])
    sim = unwrapped.similarity(ecg.to(device), text[first].to(device)).float().cpu()
    metrics.update(recall_at_k(sim.numpy(), np.asarray(targets)))
    metrics["samples"] = int(total)
    metrics["retrieval_candidates"] = len(unique)
    return metrics
