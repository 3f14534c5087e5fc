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
  * a path to a WFDB record (with or without .hea) or a DICOM ECG (.dcm).
Every record goes through the model's processor (lead order, resampling, crop/pad, amplitude policy).

Labels. `candidate_labels` are class codes or free text. A code that is a key of the prompt set shipped with the
model (`prompts_dbeta.json`, e.g. "AFIB", "NORM", "CLBBB") is replaced by its entry: the full name and clinical
description, or the full name alone with `prompt_style="name"` (the default is the checkpoint's
`config.zero_shot_prompt_style`: the style its text tower was trained to match); with
`dataset=` ("ptbxl", "cpsc2018", "code_test", "physionet2021", "csn") the dataset's own spellings are mapped
first (CSN's "AF" is atrial flutter). Short code-like spellings listed in the prompt set's aliases ("1dAVb",
"I-AVB") are mapped too. Anything else is used as written; a label that looks like a code (no spaces, capitals or
digits) but is unknown is used as text with a warning listing close known codes. `hypothesis_template`
(default "{}") wraps each text. The returned "label" is always the candidate label as given.

Scores. The model's ECG-text logits (`DBetaModel.similarity`, what `forward` returns as `logits_per_ecg`)
between the ECG feature and each label's text feature: softmax over the candidate labels (default; the scores
sum to 1) or, with `multi_label=True`, an independent sigmoid of each logit. The text features of the candidate
labels are computed once per call, not once per ECG.

Features outside the pipeline: `extract_features(model, processor, ecgs=..., texts=...)` returns the 768-d
(hidden-size) ECG and text features as numpy arrays.

This file is remote code: at module level it imports only torch, transformers, numpy and the standard library.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from transformers import Pipeline

try:
    from .configuration_dbeta import PROMPT_STYLES
    from .processing_dbeta import read_ecg_file
except ImportError:  # imported as a top-level module (tests, scripts)
    from configuration_dbeta import PROMPT_STYLES
    from processing_dbeta import read_ecg_file

PROMPTS_FILENAME = "prompts_dbeta.json"
TASK = "zero-shot-ecg-classification"
_CODE_RE = re.compile(r"[A-Za-z0-9_/()+\-]{1,20}")

__all__ = [
    "ZeroShotECGClassificationPipeline",
    "PromptSet",
    "load_prompt_set",
    "as_record",
    "extract_features",
    "ecg_features",
    "text_features",
]


# --------------------------------------------------------------------------------------------------------------
# Prompt set
# --------------------------------------------------------------------------------------------------------------


def looks_like_code(label: str) -> bool:
    """No whitespace, only code characters, and at least one capital letter or digit ("AFIB", "1dAVb", "NST_")."""
    label = str(label).strip()
    return bool(_CODE_RE.fullmatch(label)) and any(ch.isupper() or ch.isdigit() for ch in label)


def prompt_text(entry: str, style: str = "description") -> str:
    """What a prompt-set entry ("<full name>. <what the ECG shows>.") is encoded as: all of it ("description")
    or its first sentence, the full class name ("name")."""
    if style == "description":
        return entry
    if style == "name":
        return entry.split(". ", 1)[0].strip().rstrip(".")
    raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {style!r}")


class PromptSet:
    """Class code -> clinical description, from a prompt-set dict {"prompts", "aliases", "dataset_aliases"}.

    `resolve(label, dataset=None)` returns (text, key) where key is the prompt key used, or None when the label
    is taken as free text."""

    def __init__(self, data: Optional[dict] = None, source: Optional[str] = None):
        data = data or {}
        if "prompts" not in data and data and all(isinstance(v, str) for v in data.values()):
            data = {"prompts": data}  # a plain {code: text} mapping
        self.prompts: Dict[str, str] = dict(data.get("prompts", {}))
        self.aliases: Dict[str, str] = {str(k): str(v) for k, v in data.get("aliases", {}).items()}
        self.dataset_aliases: Dict[str, Dict[str, str]] = dict(data.get("dataset_aliases", {}))
        self.source = source
        self._by_fold = {k.casefold(): k for k in self.prompts}

    def __len__(self) -> int:
        return len(self.prompts)

    def __contains__(self, code: str) -> bool:
        return self.key_for(code) is not None

    def _alias_target(self, table: Dict[str, str], name: str) -> Optional[str]:
        if name in table:
            target = table[name]
        else:
            folded = name.casefold()
            target = next((v for k, v in table.items() if k.casefold() == folded), None)
        if target is None:
            return None
        return self._by_fold.get(str(target).casefold())

    def key_for(self, label: str, dataset: Optional[str] = None) -> Optional[str]:
        """The prompt key of `label`: dataset aliases, exact key, then (for code-like labels) a case-insensitive
        key or a code-like alias. None for free text or an unknown code."""
        name = str(label).strip()
        if dataset is not None:
            tables = {k.casefold(): v for k, v in self.dataset_aliases.items()}
            group = str(dataset).casefold().replace("-", "_")
            group = {"ptb_xl": "ptbxl", "ptbxl_super": "ptbxl", "ptbxl_sub": "ptbxl", "ptbxl_form": "ptbxl",
                     "ptbxl_rhythm": "ptbxl", "codetest": "code_test", "icbeb": "cpsc2018",
                     "chapman": "csn", "cinc2021": "physionet2021"}.get(group, group)
            if group in tables:
                key = self._alias_target(tables[group], name)
                if key is not None:
                    return key
        if name in self.prompts:
            return name
        if not looks_like_code(name):
            return None
        if name.casefold() in self._by_fold:
            return self._by_fold[name.casefold()]
        code_aliases = {k: v for k, v in self.aliases.items() if not any(ch.isspace() for ch in k)}
        return self._alias_target(code_aliases, name)

    def close_codes(self, label: str, n: int = 5) -> List[str]:
        """Known codes spelled like `label` (difflib, case-insensitive), for the unknown-code warning."""
        folded = str(label).casefold()
        found = difflib.get_close_matches(folded, list(self._by_fold), n=n, cutoff=0.5)
        out = [self._by_fold[f] for f in found]
        for key in self.prompts:  # codes containing the label or contained in it ("AFIBX" -> AFIB)
            if len(out) >= n:
                break
            k = key.casefold()
            if key not in out and len(folded) >= 2 and (folded in k or (len(k) >= 2 and k in folded)):
                out.append(key)
        return out[:n]

    def resolve(self, label: str, dataset: Optional[str] = None, warn: bool = True, style: str = "description"):
        """(text for the text encoder, prompt key or None); `style` picks the whole entry or the class name."""
        key = self.key_for(label, dataset)
        if key is not None:
            return prompt_text(self.prompts[key], style), key
        name = str(label).strip()
        if warn and looks_like_code(name):
            if self.prompts:
                close = self.close_codes(name)
                hint = f"; close known codes: {', '.join(close)}" if close else ""
                warnings.warn(
                    f"candidate label {name!r} looks like a class code but is not in the prompt set "
                    f"({self.source or 'prompts'}, {len(self.prompts)} codes); using it as free text{hint}",
                    UserWarning,
                    stacklevel=4,
                )
            else:
                warnings.warn(
                    f"no prompt set ({PROMPTS_FILENAME}) was found for this model, so the code {name!r} is used "
                    "as free text; pass prompts=... or describe the class in words",
                    UserWarning,
                    stacklevel=4,
                )
        return name, None


def _read_json(path: Union[str, os.PathLike]) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_prompt_set(name_or_path: Optional[str] = None, revision: Optional[str] = None,
                    prompts: Union[None, str, os.PathLike, dict, PromptSet] = None) -> PromptSet:
    """The prompt set of a model: `prompts` if given (a PromptSet, a dict or a JSON path); else
    `prompts_dbeta.json` in the model folder `name_or_path`; else, for a Hub repo id, that file downloaded with
    huggingface_hub (cache/offline rules apply); else the copy beside this module; else an empty set."""
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, dict):
        return PromptSet(prompts, source="prompts argument")
    if prompts is not None:
        return PromptSet(_read_json(prompts), source=str(prompts))
    if name_or_path:
        local = Path(str(name_or_path))
        if local.is_dir():
            if (local / PROMPTS_FILENAME).is_file():
                return PromptSet(_read_json(local / PROMPTS_FILENAME), source=str(local / PROMPTS_FILENAME))
        else:
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(str(name_or_path), PROMPTS_FILENAME, revision=revision)
                return PromptSet(_read_json(path), source=f"{name_or_path}/{PROMPTS_FILENAME}")
            except ImportError:
                pass
            except Exception:  # not on the Hub, offline and uncached, no such file: fall through
                pass
    beside = Path(__file__).resolve().parent / PROMPTS_FILENAME
    if beside.is_file():
        return PromptSet(_read_json(beside), source=str(beside))
    return PromptSet({}, source=None)


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


def _processor_inputs(processor, record: dict) -> dict:
    if record["sampling_rate"] is None:
        raise ValueError(
            f"{record['source']}: sampling_rate is required for an array input: pass sampling_rate=<Hz>"
        )
    try:
        return processor(ecg=record["signal"], sampling_rate=float(record["sampling_rate"]),
                         lead_names=record["lead_names"], return_tensors="pt")
    except ValueError as err:
        if record["source"] not in ("array", "dict"):
            raise ValueError(f"{record['source']}: {err}") from err
        raise


# --------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def text_features(model, processor, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Text features [len(texts), hidden] (`get_text_features`) of texts cleaned and tokenized by the processor."""
    device = _model_device(model)
    chunks = []
    for start in range(0, len(texts), batch_size):
        enc = processor(text=list(texts[start:start + batch_size]), return_tensors="pt")
        chunks.append(model.get_text_features(enc["input_ids"].to(device), enc["attention_mask"].to(device)))
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
            _processor_inputs(processor, as_record(e, sampling_rate, lead_names))["ecg_values"]
            for e in ecgs[start:start + batch_size]
        ]
        chunks.append(model.get_ecg_features(torch.cat(values).to(device)))
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


class ZeroShotECGClassificationPipeline(Pipeline):
    """Zero-shot ECG classification: scores an ECG against candidate labels (class codes or free text).

    Call keywords: candidate_labels (list or comma-separated string; required), sampling_rate, lead_names,
    hypothesis_template ("{}"), multi_label (False), dataset (None; applies that dataset's code spellings),
    prompts (a prompt-set dict or JSON path overriding the model's), prompt_style ("description" | "name";
    default the model config's zero_shot_prompt_style), top_k (None = all), batch_size."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prompt_sets: Dict[str, PromptSet] = {}
        self._label_cache: Optional[tuple] = None  # (key, features) of the last label texts
        self.text_feature_calls = 0  # how many times candidate-label features were computed (tests read it)

    # -- parameters -------------------------------------------------------------------------------------------

    def _sanitize_parameters(self, sampling_rate=None, lead_names=None, candidate_labels=None,
                             hypothesis_template=None, multi_label=None, dataset=None, prompts=None, top_k=None,
                             prompt_style=None, _text_embeds=None, _labels=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        preprocess, forward, post = {}, {}, {}
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        if lead_names is not None:
            preprocess["lead_names"] = lead_names
        if _text_embeds is not None:
            forward["text_embeds"] = _text_embeds
        if _labels is not None:
            post["labels"] = _labels
        if multi_label is not None:
            post["multi_label"] = bool(multi_label)
        if top_k is not None:
            post["top_k"] = int(top_k)
        # candidate_labels / template / dataset / prompts / style are consumed by __call__; kept for pipeline(...)
        for name, value in (("candidate_labels", candidate_labels), ("hypothesis_template", hypothesis_template),
                            ("dataset", dataset), ("prompts", prompts), ("prompt_style", prompt_style)):
            if value is not None:
                post["_" + name] = value
        return preprocess, forward, post

    # -- labels -----------------------------------------------------------------------------------------------

    def prompt_set(self, prompts=None) -> PromptSet:
        """The prompt set for this model (cached), or one built from `prompts`."""
        if prompts is not None:
            return load_prompt_set(prompts=prompts)
        key = "model"
        if key not in self._prompt_sets:
            config = self.model.config
            name = getattr(self.model, "name_or_path", None) or getattr(config, "_name_or_path", None)
            self._prompt_sets[key] = load_prompt_set(name, revision=getattr(config, "_commit_hash", None))
        return self._prompt_sets[key]

    def label_texts(self, candidate_labels, hypothesis_template: str = "{}", dataset=None, prompts=None,
                    prompt_style: Optional[str] = None) -> list:
        """The text each candidate label is encoded as (its prompt-set entry in `prompt_style`, default the
        model config's `zero_shot_prompt_style`, or the free text as given; in the template)."""
        labels = self._labels_list(candidate_labels)
        if "{}" not in hypothesis_template:
            raise ValueError(f"hypothesis_template must contain '{{}}' for the label, got {hypothesis_template!r}")
        style = prompt_style or getattr(self.model.config, "zero_shot_prompt_style", "description")
        prompt_text("", style)  # validates the style before any work
        prompt_set = self.prompt_set(prompts)
        return [hypothesis_template.format(prompt_set.resolve(label, dataset, style=style)[0]) for label in labels]

    @staticmethod
    def _labels_list(candidate_labels) -> list:
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

    # -- call -------------------------------------------------------------------------------------------------

    def __call__(self, inputs, candidate_labels=None, **kwargs):
        """Score `inputs` (one ECG or a list; see the module docstring) against `candidate_labels`.

        Returns [{"label", "score"}] sorted by score (highest first), or a list of those for a list input."""
        init_post = self._postprocess_params
        candidate_labels = candidate_labels if candidate_labels is not None else init_post.get("_candidate_labels")
        template = kwargs.pop("hypothesis_template", None) or init_post.get("_hypothesis_template", "{}")
        dataset = kwargs.pop("dataset", None) or init_post.get("_dataset")
        prompts = kwargs.pop("prompts", None) or init_post.get("_prompts")
        style = kwargs.pop("prompt_style", None) or init_post.get("_prompt_style")
        labels = self._labels_list(candidate_labels)
        texts = self.label_texts(labels, template, dataset, prompts, style)
        text_embeds = self._label_features(texts)
        self._last_texts = texts
        inputs = _split_batch(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, _text_embeds=text_embeds, _labels=labels, **kwargs)

    def _label_features(self, texts: list) -> torch.Tensor:
        """Text features of the label texts, reused while the texts and the weights stay the same (a full-size
        text encoder takes about a second per call; classifying one record per call would pay it every time).
        Parameter versions change with any in-place update, so training between calls is noticed."""
        key = (tuple(texts), tuple(p._version for p in self.model.parameters()))
        if self._label_cache is not None and self._label_cache[0] == key:
            return self._label_cache[1]
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            features = text_features(self.model, self.processor, texts)
            self.model.train(was_training)
        self.text_feature_calls += 1
        self._label_cache = (key, features)
        return features

    def preprocess(self, inputs, sampling_rate=None, lead_names=None):
        record = as_record(inputs, sampling_rate, lead_names)
        return {"ecg_values": _processor_inputs(self.processor, record)["ecg_values"]}

    def _forward(self, model_inputs, text_embeds=None):
        if text_embeds is None:
            raise ValueError("call the pipeline with candidate_labels")
        ecg_embeds = self.model.get_ecg_features(model_inputs["ecg_values"])
        text_embeds = text_embeds.to(device=ecg_embeds.device, dtype=ecg_embeds.dtype)
        return {"logits": self.model.similarity(ecg_embeds, text_embeds)}

    def postprocess(self, model_outputs, labels=None, multi_label=False, top_k=None, **_unused):
        logits = model_outputs["logits"].float()
        if logits.ndim == 2:
            logits = logits[0]
        scores = torch.sigmoid(logits) if multi_label else logits.softmax(dim=-1)
        scores = scores.tolist()
        order = sorted(range(len(labels)), key=lambda i: -scores[i])
        if top_k is not None:
            order = order[:top_k]
        return [{"label": labels[i], "score": float(scores[i])} for i in order]
