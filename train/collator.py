"""Pretraining data path: dataset rows -> D-BETA pretraining batches, plus the seeded, resumable batch order.

`PretrainingCollator(processor, negative_sampler)` turns rows of the prepared MIMIC dataset (`report` plus the compact
int16 `signal`, `adc_gain`, `baseline`, `sampling_rate`, `lead_names`; or a float `ecg` [leads, T] column) into

    ecg_values      float32 [B, 12, 5000]  through the processor's feature extractor only (lead reorder from the
                                           row's lead names, NaN repair, resampling, crop "random" (train) or
                                           "start" (validation), pad), then random lead masking (train only)
    input_ids       int64   [B, L]         the text the model sees: the row's report, or its N3S negative
    attention_mask  int64   [B, L]         always given
    mlm_labels      int64   [B, L]         original ids at masked positions, -100 elsewhere
    is_aligned      int64   [B]            1 = the row's own report, 0 = an N3S negative

Design decisions (see dbeta-reference.md §5, §6 and §10):
- Negatives: the batch gets n_neg = int(B * p_neg + U[0, 1)) negatives on rows drawn without replacement (the
  authors' int(B/2 + U) for p_neg = 0.5). The authors' collator threw the sampled negative away when it rebuilt the
  MLM inputs (the model saw the matched text labelled is_aligned=0); here the negative text is tokenized once and
  those ids are exactly what the model receives. A sampler that returns the row's own report (the same token ids
  once cleaned and truncated), or an empty text, is asked again (3 tries); if it still fails the row stays aligned.
- MLM: 25% of the maskable tokens of EVERY row, 80% replaced by the mask token, 10% by a random non-special token,
  10% kept; labels only on ALIGNED rows (reconstructing an unrelated report from a mismatched ECG teaches nothing).
  Negatives are masked too: text masked only on aligned rows would tell the matching head the answer (a measured
  shortcut: ETM accuracy 95% within 80 steps while the ECG-text loss stayed at chance). Special tokens (pad, eos,
  unk, cls, sep, sentinels) and padding are never selected. T5 has no mask token, so its first sentinel
  `<extra_id_0>` is used; a BERT tokenizer uses its [MASK].
- Determinism: every random choice comes from numpy Generators seeded by (seed, batch_id). A batch's content is a
  pure function of (seed, batch_id, rows), whatever the number of DataLoader workers or processes, and a resumed run
  rebuilds identical batches. Four independent child streams (crop, negatives, MLM, lead mask) keep, e.g., the crops
  unchanged when p_neg changes. Without a batch_id the collator draws from its own seeded Generator.

`ShardedBatchSampler` gives the resumable order: an endless stream of per-epoch permutations (seeded by
(seed, epoch)); global micro-batch g covers stream positions [g*B, (g+1)*B) and process r of W takes g = k*W + r.
Starting at k = start continues a run exactly (the equivalent of accelerate's skip_first_batches without
re-walking the skipped index lists). `RowsWithBatchId` + `BatchCollate` carry g to the collator through the
DataLoader, so workers need no shared state.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch


from dbeta.processing_dbeta import MIMIC_LEADS, normalize_report


logger = logging.getLogger(__name__)

T5_MASK_SENTINEL = "<extra_id_0>"
MODEL_INPUTS = ("ecg_values", "input_ids", "attention_mask", "mlm_labels", "is_aligned")
# Columns the collator may read; everything else is left out of the DataLoader's rows.
ROW_COLUMNS = ("report", "signal", "adc_gain", "baseline", "sampling_rate", "lead_names", "ecg", "study_id")


def resolve_mask_token_id(tokenizer, mask_token: Optional[str] = None) -> int:
    """The id used for MLM's 80% replacement: `mask_token` if given, else the tokenizer's mask token (BERT's
    [MASK]), else T5's first sentinel <extra_id_0>."""
    candidates = [mask_token] if mask_token else []
    if not mask_token and getattr(tokenizer, "mask_token", None) is not None:
        candidates.append(tokenizer.mask_token)
    if not mask_token:
        candidates.append(T5_MASK_SENTINEL)
    vocab = tokenizer.get_vocab()
    for token in candidates:
        if token in vocab:
            return int(vocab[token])
    if mask_token:
        raise ValueError(f"mask_token {mask_token!r} is not in the tokenizer's vocabulary "
                         f"({type(tokenizer).__name__}); leave it unset for the tokenizer's own mask token")
    raise ValueError(
        f"the tokenizer ({type(tokenizer).__name__}) has no mask token and no {T5_MASK_SENTINEL} sentinel; "
        "pass mask_token= with a token of its vocabulary"
    )


def decode_row_signal(row) -> np.ndarray:
    """A row's ECG as float32 [leads, T] millivolts, in the row's stored lead order.

    Prepared MIMIC rows (int16 `signal` + `adc_gain` + `baseline`) go through `train.mimic.decode_signal`; rows with
    a float `ecg` column are taken as they are.
    """
    if "adc_gain" in row and "signal" in row:
        from train.mimic import decode_signal

        return decode_signal(row)
    for key in ("ecg", "signal"):
        if key in row:
            x = row[key]
            if hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            return np.asarray(x, dtype=np.float32)
    raise KeyError(f"row has no ECG column (expected 'signal'+'adc_gain'+'baseline' or 'ecg'); keys: {sorted(row)}")


class RandomReportSampler:
    """A stand-in for N3S: a uniformly drawn report from `reports` that differs from the query (after cleaning).

    Same interface as `train.n3s.N3STable`: `sample_negative(report, rng) -> str`. Used when no N3S table is given,
    and in tests.
    """

    def __init__(self, reports: Sequence[str]):
        unique = sorted({normalize_report(r) for r in reports if r is not None and str(r).strip()})
        if len(unique) < 2:
            raise ValueError("RandomReportSampler needs at least two distinct reports")
        self.reports = unique

    def sample_negative(self, report: str, rng: np.random.Generator) -> str:
        query = normalize_report(report)
        for _ in range(8):
            candidate = self.reports[int(rng.integers(len(self.reports)))]
            if candidate != query:
                return candidate
        return next(r for r in self.reports if r != query)


class FallbackNegativeSampler:
    """`primary.sample_negative`, or `fallback`'s for a report the primary does not know (KeyError), counted in
    `fallback_count`. For validation: an N3S table built from the train split has no row for most validation
    reports unless it was built with them as query rows."""

    def __init__(self, primary, fallback):
        self.primary, self.fallback = primary, fallback
        self.fallback_count = 0

    def sample_negative(self, report: str, rng: np.random.Generator) -> str:
        try:
            return self.primary.sample_negative(report, rng)
        except KeyError:
            self.fallback_count += 1
            return self.fallback.sample_negative(report, rng)


class PretrainingCollator:
    """Rows -> a D-BETA pretraining batch (see the module docstring). No model work happens here."""

    def __init__(
        self,
        processor,
        negative_sampler=None,
        *,
        train: bool = True,
        p_neg: float = 0.5,
        mlm_probability: float = 0.25,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        lead_mask_prob: float = 0.5,
        max_length: int = 256,
        seed: int = 0,
        mask_token: Optional[str] = None,
        default_lead_names: Sequence[str] = MIMIC_LEADS,
        default_sampling_rate: float = 500.0,
        decode_fn: Optional[Callable] = None,
        return_report_tokens: bool = False,
        negative_retries: int = 3,
        sentence_sample_prob: float = 0.0,
    ):
        for name, p in (("p_neg", p_neg), ("mlm_probability", mlm_probability), ("lead_mask_prob", lead_mask_prob),
                        ("sentence_sample_prob", sentence_sample_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0 and sum to at most 1")
        if p_neg > 0 and negative_sampler is None:
            raise ValueError("p_neg > 0 needs a negative_sampler (an N3S table or RandomReportSampler)")
        self.processor = processor
        self.feature_extractor = processor.feature_extractor
        self.tokenizer = processor.tokenizer
        self.negative_sampler = negative_sampler
        self.train = bool(train)
        self.p_neg = float(p_neg)
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.lead_mask_prob = float(lead_mask_prob)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.default_lead_names = list(default_lead_names)
        self.default_sampling_rate = float(default_sampling_rate)
        self.decode_fn = decode_fn or decode_row_signal
        self.return_report_tokens = bool(return_report_tokens)
        self.negative_retries = int(negative_retries)
        self.sentence_sample_prob = float(sentence_sample_prob)
        self.mask_token_id = resolve_mask_token_id(self.tokenizer, mask_token) if self.mlm_probability > 0 else None
        specials = set(int(i) for i in self.tokenizer.all_special_ids)
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "cls_token_id", "sep_token_id", "unk_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if value is not None:
                specials.add(int(value))
        self.special_ids = np.array(sorted(specials), dtype=np.int64)
        vocab_ids = np.array(sorted(set(self.tokenizer.get_vocab().values())), dtype=np.int64)
        self.random_token_ids = vocab_ids[~np.isin(vocab_ids, self.special_ids)]
        self._rng = np.random.default_rng(self.seed)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _generators(self, batch_id: Optional[int]) -> list:
        if batch_id is None:
            seq = np.random.SeedSequence(int(self._rng.integers(2**63)))
        else:
            seq = np.random.SeedSequence([self.seed, int(batch_id)])
        return [np.random.default_rng(s) for s in seq.spawn(5)]  # spawn(5)'s first four are spawn(4)'s

    def _ecg(self, rows, rng: np.random.Generator) -> np.ndarray:
        out = []
        for i, row in enumerate(rows):
            out.append(self.feature_extractor.condition(
                self.decode_fn(row),
                float(row["sampling_rate"]) if "sampling_rate" in row else self.default_sampling_rate,
                [str(n) for n in row["lead_names"]] if "lead_names" in row else self.default_lead_names,
                crop="random" if self.train else "start",
                generator=rng,
                # warnings and errors name the study, which a batch position would not find in a dataset
                where=f"study_id {row['study_id']}" if "study_id" in row else f"batch row {i}",
                # A flat or out-of-range record warns instead of ending a run of days at its batch (the ingest
                # already drops what it can recognise; a dataset built elsewhere may still hold some).
                implausible="warn",
            ))
        return np.stack(out).astype(np.float32, copy=False)

    def _choose_negatives(self, reports: list, rng: np.random.Generator) -> tuple:
        """Returns (texts the model sees, is_aligned [B])."""
        b = len(reports)
        texts, aligned = list(reports), np.ones(b, dtype=np.int64)
        if self.negative_sampler is None or self.p_neg <= 0 or b == 0:
            return texts, aligned
        n_neg = min(b, int(b * self.p_neg + rng.random()))
        for i in sorted(rng.choice(b, size=n_neg, replace=False).tolist()):
            own = None
            for _ in range(self.negative_retries):
                negative = self.negative_sampler.sample_negative(reports[i], rng)
                if negative is None or not normalize_report(negative):
                    continue
                # Compared as the model reads them (processor.text_keys, at this collator's max_length): a
                # negative that differs only in what cleaning or truncation removes is the row's own text.
                own = own or self.processor.text_keys([reports[i]], max_length=self.max_length)[0]
                if self.processor.text_keys([str(negative)], max_length=self.max_length)[0] != own:
                    texts[i], aligned[i] = str(negative), 0
                    break
        return texts, aligned

    def _sample_sentences(self, texts: list, rng: np.random.Generator) -> tuple:
        """Each text, with probability `sentence_sample_prob`, cut to a random non-empty subset of its sentences (in
        order), as medical CLIP models sample report sentences: short texts such as a zero-shot prompt ("first
        degree av block") are then seen beside the whole reports they come from. Returns (texts, which were cut)."""
        out, cut = list(texts), np.zeros(len(texts), dtype=bool)
        if not self.train or self.sentence_sample_prob <= 0:
            return out, cut
        for i, text in enumerate(texts):
            if rng.random() >= self.sentence_sample_prob:
                continue
            sentences = _sentences(text)
            if len(sentences) < 2:
                continue
            keep = rng.random(len(sentences)) < 0.5
            if not keep.any():
                keep[rng.integers(len(sentences))] = True
            out[i] = ". ".join(t for t, k in zip(sentences, keep) if k)
            cut[i] = not keep.all()
        return out, cut

    def _cut_to_own_sentences(self, texts: list, reports: list, aligned: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """A near (N3S) negative shares most of its sentences with the row's report: cut by `_sample_sentences`, it
        may keep only sentences of that report (53 of 320 negatives in a helper's run, 7 the whole report) and still
        be labelled a mismatch. Such a row is aligned: the text describes its ECG. Only cut rows are relabelled: an
        uncut negative keeps the label validation (which cuts nothing) gives the same pair."""
        aligned = aligned.copy()
        for i in np.flatnonzero((aligned == 0) & cut):
            kept = _sentences(texts[i])
            own = set(self.processor.text_keys(_sentences(reports[i]) or [reports[i]], max_length=self.max_length))
            if kept and set(self.processor.text_keys(kept, max_length=self.max_length)) <= own:
                aligned[i] = 1
        return aligned

    def _tokenize(self, texts: list) -> tuple:
        enc = self.processor.tokenize(texts, max_length=self.max_length, padding="longest")
        return np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["attention_mask"], dtype=np.int64)

    def mask_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray, aligned: np.ndarray,
                    rng: np.random.Generator) -> tuple:
        """BERT-style masking of every row; labels (-100 elsewhere) only on the rows with aligned == 1."""
        ids = input_ids.copy()
        labels = np.full_like(ids, -100)
        if self.mlm_probability <= 0:
            return ids, labels
        maskable = (attention_mask == 1) & ~np.isin(ids, self.special_ids)
        selected = (rng.random(ids.shape) < self.mlm_probability) & maskable
        scored = selected & (aligned[:, None] == 1)
        labels[scored] = ids[scored]
        action = rng.random(ids.shape)
        to_mask = selected & (action < self.mask_replace_prob)
        to_random = selected & (action >= self.mask_replace_prob) & (
            action < self.mask_replace_prob + self.random_replace_prob)
        ids[to_mask] = self.mask_token_id
        if to_random.any():
            ids[to_random] = rng.choice(self.random_token_ids, size=int(to_random.sum()))
        return ids, labels

    # -- main ----------------------------------------------------------------------------------------------------

    def __call__(self, rows: Sequence[dict], batch_id: Optional[int] = None) -> dict:
        rows = list(rows)
        if not rows:
            raise ValueError("empty batch")
        crop_rng, neg_rng, mlm_rng, lead_rng, text_rng = self._generators(batch_id)
        ecg = self._ecg(rows, crop_rng)
        if self.train and self.lead_mask_prob > 0:
            keep = lead_rng.random(ecg.shape[:2]) >= self.lead_mask_prob
            ecg = ecg * keep[:, :, None].astype(np.float32)
        reports = [r["report"] for r in rows]
        for r in reports:  # train.pretrain refuses such rows up front; this guards a collator used on its own
            if not isinstance(r, str) or not r.strip():
                raise ValueError(f"a row of the batch has no report ({r!r}); drop rows without one")
        texts, aligned = self._choose_negatives(reports, neg_rng)
        texts, cut = self._sample_sentences(texts, text_rng)  # negatives too, or a short text would mean "aligned"
        aligned = self._cut_to_own_sentences(texts, reports, aligned, cut)
        input_ids, attention_mask = self._tokenize(texts)
        masked_ids, labels = self.mask_tokens(input_ids, attention_mask, aligned, mlm_rng)
        batch = {
            "ecg_values": torch.from_numpy(np.ascontiguousarray(ecg)),
            "input_ids": torch.from_numpy(masked_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "mlm_labels": torch.from_numpy(labels),
            "is_aligned": torch.from_numpy(aligned),
        }
        if self.return_report_tokens:  # the rows' own reports, unmasked (for retrieval metrics)
            ids, mask = self._tokenize(reports)
            batch["report_input_ids"] = torch.from_numpy(ids)
            batch["report_attention_mask"] = torch.from_numpy(mask)
        return batch


def _sentences(text) -> list:
    """A report's sentences (split at full stops followed by space; a run of stops, "..", is one), as the collator's
    sentence sampling cuts it; a sentence of markup alone ("***" between two statements) is left out, since it is
    empty once normalised."""
    return [t for t in re.split(r"\.+\s+", str(text).strip().rstrip(".")) if normalize_report(t)]


# ----------------------------------------------------------------------------------------------------------------
# Batch order
# ----------------------------------------------------------------------------------------------------------------


class ShardedBatchSampler:
    """Endless, seeded, resumable batches of `(global_batch_id, row_index)` pairs for process `rank` of `world`.

    The index stream is the concatenation of per-epoch permutations rng(seed, epoch).permutation(num_rows) (or
    0..n-1 per epoch with shuffle=False); global micro-batch g is stream positions [g*B, (g+1)*B), so a batch may
    straddle an epoch boundary. This process yields g = k * world + rank for k = start, start + 1, ... (`limit`
    batches if given, else forever).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 start: int = 0, limit: Optional[int] = None, shuffle: bool = True):
        if num_rows <= 0:
            raise ValueError("the dataset is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.num_rows, self.batch_size, self.seed = int(num_rows), int(batch_size), int(seed)
        self.rank, self.world, self.start, self.limit, self.shuffle = int(rank), int(world), int(start), limit, shuffle
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            else:
                self._perm = np.arange(self.num_rows)
            self._epoch = epoch
        return self._perm

    def batch(self, global_batch_id: int) -> list:
        first = global_batch_id * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, offset = divmod(pos, self.num_rows)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def epoch_of(self, global_batch_id: int) -> float:
        return global_batch_id * self.batch_size / self.num_rows

    def __iter__(self) -> Iterator[list]:
        k = self.start
        while self.limit is None or k < self.start + self.limit:
            g = k * self.world + self.rank
            yield [(g, i) for i in self.batch(g)]
            k += 1


class EvalBatches:
    """Fixed, unshuffled batches of `(batch_id, row_index)` over `indices` (this process's validation shard)."""

    def __init__(self, indices: Sequence[int], batch_size: int, first_batch_id: int = 0):
        self.indices, self.batch_size, self.first = list(indices), int(batch_size), int(first_batch_id)

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list]:
        for b in range(len(self)):
            chunk = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.first + b, i) for i in chunk]


class RowsWithBatchId(torch.utils.data.Dataset):
    """Wraps a (numpy-formatted) `datasets.Dataset`: fetching a list of (batch_id, index) pairs returns
    {"batch_id", "indices", "rows"} in one Arrow read, for `BatchCollate`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        return self.__getitems__([item])

    def __getitems__(self, items) -> dict:
        ids = [int(g) for g, _ in items]
        indices = [int(i) for _, i in items]
        columns = self.dataset[indices]
        n = len(indices)
        rows = [{k: v[j] for k, v in columns.items()} for j in range(n)]
        return {"batch_id": ids[0], "indices": indices, "rows": rows}


class BatchCollate:
    """DataLoader collate_fn: {"batch_id", "indices", "rows"} -> collator(rows, batch_id) + "indices" [B]."""

    def __init__(self, collator: PretrainingCollator):
        self.collator = collator

    def __call__(self, data: dict) -> dict:
        batch = self.collator(data["rows"], batch_id=data["batch_id"])
        batch["indices"] = torch.tensor(data["indices"], dtype=torch.int64)
        batch["batch_id"] = torch.tensor(data["batch_id"], dtype=torch.int64)
        return batch


__all__ = [
    "BatchCollate",
    "EvalBatches",
    "FallbackNegativeSampler",
    "MODEL_INPUTS",
    "PretrainingCollator",
    "RandomReportSampler",
    "RowsWithBatchId",
    "ShardedBatchSampler",
    "decode_row_signal",
    "resolve_mask_token_id",
]
