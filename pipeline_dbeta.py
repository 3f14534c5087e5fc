"""Zero-shot ECG classification with D-BETA: `pipeline("zero-shot-ecg-classification", model=...)`.

    from transformers import pipeline
    pipe = pipeline("zero-shot-ecg-classification", model="path/or/repo", trust_remote_code=True)
    pipe(ecg, sampling_rate=500, candidate_labels=["NORM", "AFIB", "left bundle branch block"])
    # -> [{"label": "AFIB", "score": 0.71}, {"label": "NORM", "score": 0.2}, ...]   (sorted, highest first)

Inputs (one, or a list of them for a batch; `batch_size=` batches the model calls):
  * an array [leads, samples] (numpy or torch) in millivolts, with `sampling_rate=` (Hz) and optionally
    `lead_names=` (otherwise the leads must be in the order I, II, III, aVR, aVL, aVF, V1-V6);
    a [batch, leads, samples] array is a batch;
  * a dict {"signal" (or "ecg"), "sampling_rate", "lead_names"} (missing keys fall back to the call's keywords);
  * a path to a WFDB record (with or without .hea) or a DICOM ECG (recognised by its content).
Every record goes through the model's processor (lead order, resampling, crop/pad, plausibility, amplitude
policy); an error names the input's position in the list and its file.

Labels and scores come from `prompting_dbeta` (the one module that owns them, shared with `eval.zero_shot`):
`candidate_labels` are class codes or free text; a code of the prompt set shipped with the model
(`prompts_dbeta.json`) becomes its full name and clinical description, or the full name alone with
`prompt_style="name"` (default: the checkpoint's `config.zero_shot_prompt_style`); `dataset=` applies a dataset's
own spellings first (CSN's "AF" is atrial flutter); anything else is used as written (`hypothesis_template`,
default "{}", wraps each text). The logits are the model's own (`DBetaModel.similarity`, what `forward` returns as
`logits_per_ecg`); the scores are a softmax over the labels, or with `multi_label=True` an independent sigmoid per
label. A single candidate label is always scored with the sigmoid: a softmax over one label would be 1 whatever
the ECG. The returned "label" is always the candidate label as given.

The candidate labels travel with each record from `preprocess` through `_forward` to `postprocess`. The label
texts' features are cached between calls, keyed on the model and processor objects, every parameter (object,
storage and in-place version counter) and the texts, so a weight update, a new model (`pipe.model = other`) or
new labels recompute them. In-place writes through `.data`, which PyTorch does not version, are not seen.

Features outside the pipeline: `extract_features(model, processor, ecgs=..., texts=...)` returns the 768-d
(hidden-size) ECG and text features as numpy arrays.

This file is remote code: at module level it imports only torch, transformers, numpy and the standard library.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from transformers import Pipeline

from .processing_dbeta import read_ecg_file
from .prompting_dbeta import (
    PROMPT_STYLES,
    PromptSet,
    label_scores,
    load_prompt_set,
    looks_like_code,
    prompt_style_for,
    prompt_text,
    zero_shot_logits,
)

TASK = "zero-shot-ecg-classification"
CALL_KEYWORDS = ("candidate_labels", "sampling_rate", "lead_names", "hypothesis_template", "multi_label", "dataset",
                 "prompts", "prompt_style", "top_k", "batch_size", "num_workers")

__all__ = [
    "ZeroShotECGClassificationPipeline",
    "PromptSet",
    "load_prompt_set",
    "looks_like_code",
    "prompt_text",
    "as_record",
    "extract_features",
    "ecg_features",
    "text_features",
]


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def as_record(item, sampling_rate=None, lead_names=None) -> dict:
    """One ECG input -> {"signal" [leads, samples] float32, "sampling_rate", "lead_names", "source"}.

    `item`: an array/tensor [leads, samples], a dict {"signal"|"ecg", "sampling_rate", "lead_names"}, or a
    WFDB/DICOM path. Keyword values fill what the item does not carry (a file always uses its own)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not (path.exists() or Path(str(path) + ".hea").exists()):
            raise FileNotFoundError(f"ECG file not found: {item}")
        record = read_ecg_file(path)  # raises ECGReadError naming the file
        return {"signal": record.signal, "sampling_rate": record.sampling_rate, "lead_names": record.lead_names,
                "source": str(item)}
    if isinstance(item, dict):
        signal = item.get("signal", item.get("ecg"))
        if signal is None:
            raise ValueError(f"an ECG dict needs a 'signal' (or 'ecg') entry; got keys {sorted(item)}")
        rate = item.get("sampling_rate", item.get("fs", sampling_rate))
        names = item.get("lead_names", lead_names)
        return {"signal": _as_array(signal), "sampling_rate": rate, "lead_names": names,
                "source": str(item.get("record_id", item.get("path", "dict")))}
    if isinstance(item, (np.ndarray, torch.Tensor, list, tuple)):
        return {"signal": _as_array(item), "sampling_rate": sampling_rate, "lead_names": lead_names,
                "source": "array"}
    raise TypeError(
        f"unsupported ECG input of type {type(item).__name__}: give an array [leads, samples], a dict with "
        "'signal' and 'sampling_rate', or a WFDB/DICOM path"
    )


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected one ECG as [leads, samples], got shape {tuple(x.shape)}")
    return x


def _split_batch(inputs):
    """A [batch, leads, samples] array -> a list of records; nested number lists -> one array."""
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().float().numpy()
    if isinstance(inputs, np.ndarray) and inputs.ndim == 3:
        return list(inputs)
    if isinstance(inputs, tuple):
        inputs = list(inputs)
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], (list, tuple)) and inputs[0] \
            and np.isscalar(inputs[0][0]):
        return np.asarray(inputs, dtype=np.float32)  # one ECG written as nested lists
    return inputs


class _Item:
    """One input of a list, with its position, so an error can name it."""

    __slots__ = ("index", "value")

    def __init__(self, index: int, value):
        self.index, self.value = index, value


def _where(index: Optional[int], source: str) -> str:
    """How an error names an input: its position in the list and its file or record id."""
    named = source not in ("array", "dict")
    if index is None:
        return source if named else "ecg"
    return f"input {index} ({source})" if named else f"input {index}"


def _read_input(item, index: Optional[int], sampling_rate=None, lead_names=None) -> dict:
    try:
        return as_record(item, sampling_rate, lead_names)
    except (OSError, ValueError) as err:
        if index is None:
            raise
        raise type(err)(f"input {index}: {err}") from err


def conditioned_ecg(processor, record: dict, index: Optional[int] = None) -> torch.Tensor:
    """The model input [1, leads, samples] of one record, conditioned by the processor's feature extractor."""
    where = _where(index, record["source"])
    if record["sampling_rate"] is None:
        raise ValueError(f"{where}: sampling_rate is required for an array input: pass sampling_rate=<Hz>")
    values = processor.feature_extractor.condition(record["signal"], record["sampling_rate"], record["lead_names"],
                                                   where=where)
    return torch.from_numpy(values)[None]


# --------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------


def _model_device(model) -> torch.device:
    return model.device  # a PreTrainedModel's, or DBetaOnnxModel's (which has no torch parameters)


@torch.no_grad()
def text_features(model, processor, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Text features [len(texts), hidden] (`get_text_features`) of texts cleaned and tokenized by the processor."""
    device = _model_device(model)
    chunks = []
    for start in range(0, len(texts), batch_size):
        enc = processor(text=list(texts[start:start + batch_size]), return_tensors="pt")
        features = model.get_text_features(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        chunks.append(features.pooler_output)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.config.hidden_size)


@torch.no_grad()
def ecg_features(model, processor, ecgs, sampling_rate=None, lead_names=None, batch_size: int = 32) -> torch.Tensor:
    """ECG features [n, hidden] (`get_ecg_features`) of a list of ECG inputs (see `as_record`) via the processor."""
    ecgs = _split_batch(ecgs)
    if not isinstance(ecgs, list):
        ecgs = [ecgs]
    device = _model_device(model)
    chunks = []
    for start in range(0, len(ecgs), batch_size):
        values = [
            conditioned_ecg(processor, _read_input(e, i, sampling_rate, lead_names), i)
            for i, e in enumerate(ecgs[start:start + batch_size], start=start)
        ]
        chunks.append(model.get_ecg_features(torch.cat(values).to(device)).pooler_output)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.config.hidden_size)


def extract_features(model, processor, ecgs=None, texts: Optional[Sequence[str]] = None, sampling_rate=None,
                     lead_names=None, batch_size: int = 32, normalize: bool = False) -> Dict[str, np.ndarray]:
    """{"ecg": float32 [n, hidden], "text": float32 [m, hidden]} for the given ECG inputs and/or texts.

    `ecgs`: one ECG input or a list (arrays with `sampling_rate`, dicts, WFDB/DICOM paths); `texts`: strings
    (cleaned by the processor like training reports). `normalize=True` L2-normalises each feature (cosine
    scoring); the model's own logits use `model.similarity(ecg, text)` on the raw features."""
    was_training = model.training
    model.eval()
    out: Dict[str, np.ndarray] = {}
    try:
        if ecgs is not None:
            out["ecg"] = ecg_features(model, processor, ecgs, sampling_rate, lead_names, batch_size)
        if texts is not None:
            out["text"] = text_features(model, processor, [texts] if isinstance(texts, str) else list(texts),
                                        batch_size)
    finally:
        model.train(was_training)
    for key, value in out.items():
        value = value.float()
        if normalize:
            value = torch.nn.functional.normalize(value, dim=-1)
        out[key] = value.cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------------


def _check_bool(name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def _labels_list(candidate_labels) -> List[str]:
    if candidate_labels is None:
        raise ValueError("candidate_labels is required, e.g. candidate_labels=['NORM', 'AFIB', 'MI']")
    if isinstance(candidate_labels, str):
        candidate_labels = [c.strip() for c in candidate_labels.split(",")]
    labels = [str(c).strip() for c in candidate_labels]
    if not labels or any(not c for c in labels):
        raise ValueError(f"candidate_labels must be non-empty strings, got {candidate_labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"candidate_labels has duplicates: {labels}")
    return labels


class ZeroShotECGClassificationPipeline(Pipeline):
    """Zero-shot ECG classification: scores an ECG against candidate labels (class codes or free text).

    Call keywords: candidate_labels (list or comma-separated string; required), sampling_rate, lead_names,
    hypothesis_template ("{}"), multi_label (False; True or False only), dataset (None; applies that dataset's code
    spellings), prompts (a prompt-set dict or JSON path overriding the model's), prompt_style ("description" |
    "name"; default the model config's zero_shot_prompt_style), top_k (None = all), batch_size, num_workers.
    Any other keyword is refused."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False

    def __init__(self, *args, **kwargs):
        self._prompt_cache = None  # ((model name, revision), PromptSet)
        self._label_cache = None  # (model, processor and parameter identities and versions, texts, features)
        super().__init__(*args, **kwargs)

    # -- parameters -------------------------------------------------------------------------------------------

    def _sanitize_parameters(self, sampling_rate=None, lead_names=None, candidate_labels=None,
                             hypothesis_template=None, multi_label=None, dataset=None, prompts=None, top_k=None,
                             prompt_style=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(kwargs))}; the pipeline takes "
                            f"{', '.join(CALL_KEYWORDS)}")
        preprocess, post = {}, {}
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        if lead_names is not None:
            preprocess["lead_names"] = lead_names
        if candidate_labels is not None:
            preprocess["candidate_labels"] = _labels_list(candidate_labels)
        if hypothesis_template is not None:
            if not isinstance(hypothesis_template, str) or "{}" not in hypothesis_template:
                raise ValueError(f"hypothesis_template must contain '{{}}' for the label, got {hypothesis_template!r}")
            preprocess["hypothesis_template"] = hypothesis_template
        if dataset is not None:
            preprocess["dataset"] = dataset
        if prompts is not None:
            preprocess["prompts"] = load_prompt_set(prompts=prompts)  # read once per call; errors name the file
        if prompt_style is not None:
            if prompt_style not in PROMPT_STYLES:
                raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
            preprocess["prompt_style"] = prompt_style
        if multi_label is not None:
            post["multi_label"] = _check_bool("multi_label", multi_label)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
            post["top_k"] = int(top_k)
        return preprocess, {}, post

    # -- labels -----------------------------------------------------------------------------------------------

    def prompt_set(self, prompts=None) -> PromptSet:
        """The model's prompt set (kept while the model's name and revision stay the same), or `prompts`'."""
        if prompts is not None:
            return load_prompt_set(prompts=prompts)
        config = self.model.config
        name = getattr(self.model, "name_or_path", None) or getattr(config, "_name_or_path", None)
        key = (name, getattr(config, "_commit_hash", None))
        if self._prompt_cache is None or self._prompt_cache[0] != key:
            self._prompt_cache = (key, load_prompt_set(name, revision=key[1]))
        return self._prompt_cache[1]

    def label_texts(self, candidate_labels, hypothesis_template: str = "{}", dataset=None, prompts=None,
                    prompt_style: Optional[str] = None) -> List[str]:
        """The text each candidate label is encoded as (prompting_dbeta.PromptSet.texts with this model's prompt
        set and prompt style)."""
        style = prompt_style_for(self.model.config, prompt_style)
        return self.prompt_set(prompts).texts(_labels_list(candidate_labels), dataset, style, hypothesis_template)

    def _label_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Text features of the label texts, reused while the model, the processor, the weights and the texts stay
        the same (a full-size text encoder takes about a second; one record per call would pay it every time)."""
        model, processor = self.model, self.processor
        params = list(model.parameters())
        state = tuple((p._version, p.data_ptr()) for p in params)
        texts = tuple(texts)
        cached = self._label_cache
        if cached is not None:
            model_ref, processor_ref, param_refs, cached_state, cached_texts, features = cached
            if (model_ref() is model and processor_ref() is processor and cached_texts == texts
                    and cached_state == state and len(param_refs) == len(params)
                    and all(ref() is p for ref, p in zip(param_refs, params))):
                return features
        was_training = model.training
        model.eval()
        try:
            features = text_features(model, processor, list(texts))
        finally:
            model.train(was_training)
        # weak references: a freed model or parameter can never match a new one that reuses its id or memory
        self._label_cache = (weakref.ref(model), weakref.ref(processor), [weakref.ref(p) for p in params], state,
                             texts, features)
        return features

    # -- call -------------------------------------------------------------------------------------------------

    def __call__(self, inputs, candidate_labels=None, **kwargs):
        """Score `inputs` (one ECG or a list; see the module docstring) against `candidate_labels`.

        Returns [{"label", "score"}] sorted by score (highest first), or a list of those for a list input."""
        if candidate_labels is not None:
            kwargs["candidate_labels"] = candidate_labels
        inputs = _split_batch(inputs)
        if isinstance(inputs, list):
            if not inputs:
                return []
            inputs = [_Item(i, x) for i, x in enumerate(inputs)]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs, sampling_rate=None, lead_names=None, candidate_labels=None,
                   hypothesis_template="{}", dataset=None, prompts=None, prompt_style=None):
        index = inputs.index if isinstance(inputs, _Item) else None
        item = inputs.value if isinstance(inputs, _Item) else inputs
        model_inputs = {}
        if candidate_labels is not None:  # the labels travel with the record to _forward and postprocess
            model_inputs["candidate_labels"] = list(candidate_labels)
            model_inputs["label_texts"] = self.label_texts(candidate_labels, hypothesis_template, dataset, prompts,
                                                           prompt_style)
        record = _read_input(item, index, sampling_rate, lead_names)
        model_inputs["ecg_values"] = conditioned_ecg(self.processor, record, index)
        return model_inputs

    def _forward(self, model_inputs):
        if "candidate_labels" not in model_inputs:
            raise ValueError("candidate_labels is required, e.g. candidate_labels=['NORM', 'AFIB', 'MI']")
        labels = model_inputs.pop("candidate_labels")
        texts = model_inputs.pop("label_texts")
        ecg_embeds = self.model.get_ecg_features(model_inputs["ecg_values"]).pooler_output
        rows = texts if isinstance(texts[0], list) else [texts]  # batched: one label list per record
        logits = torch.cat([zero_shot_logits(self.model, ecg_embeds[i:i + 1], self._label_features(row))
                            for i, row in enumerate(rows)])
        return {"logits": logits, "candidate_labels": labels}

    def postprocess(self, model_outputs, multi_label=False, top_k=None):
        labels = model_outputs["candidate_labels"]
        logits = model_outputs["logits"]
        if logits.ndim == 2:
            logits = logits[0]
        scores = label_scores(logits, multi_label).tolist()
        order = sorted(range(len(labels)), key=lambda i: -scores[i])
        if top_k is not None:
            order = order[:top_k]
        return [{"label": labels[i], "score": float(scores[i])} for i in order]
