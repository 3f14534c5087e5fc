"""Validation during pretraining: each loss, ETM accuracy and ECG->report retrieval R@1/5/10 (eval.metrics)."""

from __future__ import annotations

import numpy as np
import torch


LOSS_KEYS = ("loss", "mem_loss", "mlm_loss", "etm_loss", "ets_loss", "etm_accuracy")


@torch.no_grad()
def evaluate(accelerator, model, val_rows, collator, batch_size: int, seed: int) -> dict:
    """Figures over every validation row, the rows sharded across processes.

    Eval mode, MEM masks seeded (the same every time), the ECG-text loss per batch (the model gathers across
    processes only in training mode). Retrieval scores the unmasked ECG features against the features of the
    distinct validation reports.
    """
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader

    from eval.metrics import recall_at_k
    from dbeta.processing_dbeta import normalize_report
    from train.collator import MODEL_INPUTS, BatchCollate, EvalBatches, RowsWithBatchId

    unwrapped = accelerator.unwrap_model(model)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    bounds = np.linspace(0, len(val_rows), world + 1).astype(int)
    shard = list(range(bounds[rank], bounds[rank + 1]))
    loader = DataLoader(RowsWithBatchId(val_rows), batch_sampler=EvalBatches(shard, batch_size, rank * 10**6),
                        collate_fn=BatchCollate(collator), num_workers=0)
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
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
            for k in sums:
                sums[k] += float(getattr(out, k)) * b
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
    reports = [normalize_report(r) for r in val_rows.with_format(None)[idx.tolist()]["report"]]
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
