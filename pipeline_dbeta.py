"""D-BETA's pipelines: zero-shot ECG classification of a pretrained model
(`pipeline("zero-shot-ecg-classification", model=...)`), and a fine-tuned classifier's own classes
(`pipeline("ecg-classification", model=finetuned)`, `ECGClassificationPipeline`). An export's config.json names
the one that fits it; each refuses the other kind of model.

    from transformers import pipeline
    pipe = pipeline("zero-shot-ecg-classification", model="path/or/repo", trust_remote_code=True)
    pipe(ecg, sampling_rate=500, candidate_labels=["NORM", "AFIB", "left bundle branch block"])
    # -> [{"label": "AFIB", "score": 0.71}, {"label": "NORM", "score": 0.2}, ...]   (sorted, highest first)
    clf = pipeline("ecg-classification", model="path/to/finetuned", trust_remote_code=True)
    clf("record.dcm")  # -> [{"label": "AFIB", "score": 0.93}, ...]   (every class of config.id2label)

Inputs, the same for both (one, or a list of them for a batch; `batch_size=` batches the model calls):
  * an array [leads, samples] (numpy or torch) in millivolts, with `sampling_rate=` (Hz) and optionally
    `lead_names=` (otherwise the leads must be in the order I, II, III, aVR, aVL, aVF, V1-V6);
    a [batch, leads, samples] array is a batch;
  * a dict {"signal" (or "ecg"), "sampling_rate", "lead_names"} (missing keys fall back to the call's keywords);
  * a path to a WFDB record (with or without .hea) or a DICOM ECG (recognised by its content).
Every record goes through the model's processor (lead order, resampling, crop/pad, plausibility, amplitude
policy); an error names the input's position in the list and its file.

Zero-shot labels and scores come from `prompting_dbeta` (the one module that owns them, shared with
`eval.zero_shot`): `candidate_labels` are class codes or free text; a code of the prompt set shipped with the model
(`prompts_dbeta.json`) becomes its full name and clinical description, or the full name alone with
`prompt_style="name"` (default: the checkpoint's `config.zero_shot_prompt_style`); `dataset=` applies a dataset's
own spellings first (CSN's "AF" is atrial flutter); anything else is used as written (`hypothesis_template`,
default "{}", wraps each text). `prompt_members=True` with `dataset="ptbxl_sub"` or "ptbxl_super" also encodes
each member of a PTB-XL class ("_AVB": 1AVB, 2AVB, 3AVB); a label with several texts is scored with the mean of
their text features. The logits are the model's own (`DBetaModel.similarity`, what `forward` returns as
`logits_per_ecg`); the scores are a softmax over the labels, or with `multi_label=True` an independent sigmoid per
label. A single candidate label is always scored with the sigmoid: a softmax over one label would be 1 whatever
the ECG. The returned "label" is always the candidate label as given.

The candidate labels travel with each record from `preprocess` through `_forward` to `postprocess`. The label
texts' features are cached between calls, keyed on the model and processor objects, every parameter (object,
storage and in-place version counter) and the texts, so a weight update, a new model (`pipe.model = other`) or
new labels recompute them. In-place writes through `.data`, which PyTorch does not version, are not seen.

Lead subsets: a record with fewer leads (named by its file or `lead_names=`), or `leads=[...]` / "limb", is scored
with the other leads zeroed, as pretraining's lead masking shows an absent lead; `return_leads=True` returns
{"scores", "leads"}. Records of any length: `window_seconds=` / `stride_seconds=` / `aggregate=` (see `windows`).
Where the model looked: `explain=True` (see `explain`; captum's integrated gradients, imported when used).

Features outside the pipeline: `extract_features(model, processor, ecgs=..., texts=...)` returns the 768-d
(hidden-size) ECG and text features as numpy arrays.

This file is remote code: at module level it imports only torch, transformers, numpy and the standard library.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import types
import weakref
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from transformers import Pipeline

from .processing_dbeta import (NAN_POLICIES, check_wfdb_checksums, is_nested_record, normalize_report,
                               read_ecg_file, read_wfdb, resolve_leads, standard_lead_name, table_advice,
                               tensor_to_numpy, wfdb_info, wfdb_reads_in_ranges)
from .prompting_dbeta import (
    PROMPT_STYLES,
    PromptSet,
    check_template,
    label_scores,
    load_prompt_set,
    looks_like_code,
    label_features,
    prompt_style_for,
    prompt_text,
    zero_shot_logits,
)

TASK = "zero-shot-ecg-classification"
CLASSIFICATION_TASK = "ecg-classification"
CALL_KEYWORDS = ("candidate_labels", "sampling_rate", "lead_names", "hypothesis_template", "multi_label", "dataset",
                 "prompts", "prompt_style", "prompt_members", "top_k", "batch_size", "num_workers", "leads",
                 "return_leads", "nan_policy")
WINDOW_KEYWORDS = ("window_seconds", "stride_seconds", "aggregate", "progress", "chunk_seconds")
EXPLAIN_KEYWORDS = ("explain", "explain_label", "n_steps", "segment_seconds")
CLASSIFY_KEYWORDS = ("sampling_rate", "lead_names", "leads", "return_leads", "top_k", "function_to_apply",
                     "multi_label", "batch_size", "num_workers", "nan_policy")
#: `function_to_apply=` of the classification pipeline (transformers' text-classification names).
SCORE_FUNCTIONS = ("sigmoid", "softmax", "none")
#: How per-window scores combine into a record's score (`aggregate=`).
AGGREGATES = {
    "mean": "the mean of the label's window scores",
    "max": "the label's highest window score",
    "fraction": "the fraction of windows where the label is on top (softmax) or scores >= 0.5 (multi_label)",
}

__all__ = [
    "ZeroShotECGClassificationPipeline",
    "ECGClassificationPipeline",
    "default_score_function",
    "PromptSet",
    "load_prompt_set",
    "looks_like_code",
    "prompt_text",
    "as_record",
    "extract_features",
    "ecg_features",
    "text_features",
    "window_spans",
    "aggregate_scores",
    "integrated_gradients",
    "attribute_zero_shot",
    "attribute_classifier",
    "summarize_attributions",
]


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(model):
    """`model` in eval mode (no dropout) inside the block, and as it was after it: a pipeline may be handed a model
    in the middle of training, and its scores must not change from call to call."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


RECORD_KEYS = ("signal", "ecg", "sampling_rate", "fs", "lead_names", "record_id", "path")
# keys other libraries use for what a record dict carries here under another name (other keys, such as a
# dataset row's label columns, are passed over)
_RECORD_KEY_SYNONYMS = {  # compared in lower case, "-" and " " as "_"
    **dict.fromkeys(("sample_rate", "sampling_frequency", "sample_frequency", "samplingfrequency", "frequency",
                     "freq", "sfreq", "srate", "sr", "rate", "hz"), "sampling_rate"),
    **dict.fromkeys(("lead", "leads", "sig_name", "sig_names", "ch_names", "channel_names", "channel_labels",
                     "channels", "lead_order", "lead_labels", "signal_names"), "lead_names"),
    **dict.fromkeys(("units", "unit"), "a signal in mV (convert it before)"),
}


def _check_record_keys(item: dict) -> None:
    """A misspelt key ("sample_rate", "lead_name") would be passed over and the call's keyword, or the default lead
    order, used instead: refused, naming the key meant."""
    for key in item:
        if not isinstance(key, str) or key in RECORD_KEYS:
            continue
        plain = key.strip().lower().replace("-", "_").replace(" ", "_")
        meant = (plain if plain in RECORD_KEYS else _RECORD_KEY_SYNONYMS.get(plain)) or next(
            iter(difflib.get_close_matches(plain, RECORD_KEYS, n=1, cutoff=0.8)), None)
        if meant:
            raise ValueError(f"an ECG dict's key {key!r} is not read: did you mean {meant!r}? (the keys read are "
                             f"{', '.join(RECORD_KEYS)})")


def as_record(item, sampling_rate=None, lead_names=None) -> dict:
    """One ECG input -> {"signal" [leads, samples] float32, "sampling_rate", "lead_names", "source"}.

    `item`: an array/tensor [leads, samples], a dict {"signal"|"ecg", "sampling_rate", "lead_names"}, or a
    WFDB/DICOM path. Keyword values fill what the item does not carry (a file keeps its own rate and lead names;
    `lead_names=` names the leads of a file that has none, and is refused for one naming them otherwise)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not (path.exists() or Path(str(path) + ".hea").exists()):
            raise FileNotFoundError(f"ECG file not found: {item}")
        record = read_ecg_file(path)  # raises ECGReadError naming the file
        rate, names = _file_settings(str(item), record.sampling_rate, record.lead_names, lead_names)
        return {"signal": record.signal, "sampling_rate": rate, "lead_names": names, "source": str(item)}
    if isinstance(item, dict):
        _check_record_keys(item)
        for pair in (("signal", "ecg"), ("sampling_rate", "fs")):  # one would be read, the other passed over
            if all(item.get(k) is not None for k in pair):
                raise ValueError(f"an ECG dict gives both {pair[0]!r} and {pair[1]!r}: keep one")
        signal = item.get("signal", item.get("ecg"))
        if signal is None:
            raise ValueError(f"an ECG dict needs a 'signal' (or 'ecg') entry; got keys {sorted(item)}")
        # an entry holding None carries nothing: the keyword fills it, as it fills an absent one
        rate = next((item[k] for k in ("sampling_rate", "fs") if item.get(k) is not None), sampling_rate)
        names = item["lead_names"] if item.get("lead_names") is not None else lead_names
        return {"signal": _as_array(signal), "sampling_rate": rate, "lead_names": names,
                "source": str(item.get("record_id", item.get("path", "dict")))}
    if isinstance(item, (np.ndarray, torch.Tensor, list, tuple)):
        return {"signal": _as_array(item), "sampling_rate": sampling_rate, "lead_names": lead_names,
                "source": "array"}
    raise TypeError(
        f"unsupported ECG input of type {type(item).__name__}: give an array [leads, samples], a dict with "
        f"'signal' and 'sampling_rate', or a WFDB/DICOM path{table_advice(item)}"
    )


def _file_settings(source: str, file_rate, file_names, lead_names=None) -> tuple:
    """(rate, lead names) of a file: its own, as a dict's own entries win over the keywords. `lead_names=` names
    the leads of a file whose header names none (a WFDB header without signal descriptions, whose error asks for
    them), one per lead; given for a file that names its leads otherwise, it is refused, not passed over."""
    names = list(file_names) if file_names is not None else None
    if lead_names is None:
        return file_rate, names
    given = [str(n) for n in lead_names]
    if names is not None and all(n is not None and str(n).strip() for n in names):
        if [str(n) for n in names] != given:
            raise ValueError(f"{source}: the file names its leads {', '.join(map(str, names))}, so lead_names= "
                             "cannot rename them; to use other names, read it (processor.read(path)) and pass "
                             "its signal and sampling_rate with lead_names=[...]")
        return file_rate, names
    if names is not None and len(given) != len(names):
        raise ValueError(f"{source}: lead_names= gives {len(given)} names for the file's {len(names)} leads")
    return file_rate, given


def _as_array(x) -> np.ndarray:
    """One ECG as an array in its own dtype: the processor checks the values (no float32 cast first, which would
    turn booleans into 1 mV steps and float64 overflow into infinities to repair)."""
    x = tensor_to_numpy(x) if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected one ECG as [leads, samples], got shape {tuple(x.shape)}")
    return x


def _split_batch(inputs):
    """A [batch, leads, samples] array -> a list of records; nested number lists -> one array."""
    if isinstance(inputs, torch.Tensor):
        inputs = tensor_to_numpy(inputs)
    if isinstance(inputs, np.ndarray) and inputs.ndim == 3:
        return list(inputs)
    if isinstance(inputs, tuple):
        inputs = list(inputs)
    if is_nested_record(inputs):
        return np.asarray(inputs)  # one ECG written as nested lists
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


def conditioned_ecg(processor, record: dict, index: Optional[int] = None, leads=None,
                    return_lead_mask: bool = False, nan_policy: Optional[str] = None):
    """The model input [1, leads, samples] of one record, conditioned by the processor's feature extractor
    (with `return_lead_mask=True`: (input, bool lead mask [1, 12]), the leads used; the others are zero). Warns
    when leads in use are absent or flat, or when the record is zero-padded to the model's length."""
    where = _where(index, record["source"])
    if record["sampling_rate"] is None:
        raise ValueError(f"{where}: sampling_rate is required for an array input: pass sampling_rate=<Hz>")
    values, mask = processor.feature_extractor.condition(record["signal"], record["sampling_rate"],
                                                         record["lead_names"], where=where, leads=leads,
                                                         return_lead_mask=True, nan_policy=nan_policy)
    _warn_missing_leads(processor, mask, where, leads)
    _warn_padded(processor, np.shape(record["signal"])[-1] / float(record["sampling_rate"]), where)
    _warn_repaired(processor, record["signal"], record["sampling_rate"], record["lead_names"], mask, where,
                   nan_policy)
    values = torch.from_numpy(values)[None]
    return (values, torch.from_numpy(mask)[None]) if return_lead_mask else values


def used_lead_names(processor, mask) -> List[str]:
    """The names of the leads a lead mask [12] (or [1, 12]) marks as used."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    return [name for name, used in zip(processor.feature_extractor.lead_names, mask) if used]


#: Padding shorter than this is not warned about (a record of 9.95 s, or one resampled a few samples short).
PAD_WARNING_SECONDS = 0.1


def _warn_padded(processor, seconds: float, where: str, what: str = "signal") -> None:
    """Warn when the processor will zero-pad the input to the model's length: the model was pretrained on full
    10 s records, and reads a flat stretch as beats that never came (neurokit2 ECGs at 110 bpm: STACH on 10 s,
    SBRAD on their first 3 s)."""
    import warnings

    fe = processor.feature_extractor
    wanted, model_seconds = kept_seconds(fe), fe.num_samples / fe.sampling_rate
    if seconds < wanted - PAD_WARNING_SECONDS:  # a few samples short (rounding at odd rates) is nothing
        warnings.warn(f"{where}: {seconds:.2f} s of {what}, zero-padded to the model's {model_seconds:g} s input: "
                      "the flat rest reads as missing beats, so rate-dependent scores shift (towards bradycardia); "
                      f"give {wanted:g} s where the record has them", UserWarning, stacklevel=3)


#: A lead in use with a larger share of NaN/inf samples is warned about once repaired (up to the processor's
#: MAX_REPAIRED_SHARE, above which the record is refused).
REPAIR_WARNING_SHARE = 0.1


def _warn_repaired(processor, signal, sampling_rate, lead_names, mask, where: str,
                   nan_policy: Optional[str] = None) -> None:
    """Warn when a lead in use had a long NaN/inf stretch in the part the model reads: `nan_policy` bridges it
    with a line (or zeros), which the model reads as beats that never came, as it reads padding (a 4 s gap: SBRAD
    0.007 -> 0.53, helper)."""
    import warnings

    x = np.asarray(signal)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        return
    fe = processor.feature_extractor
    names = list(lead_names) if lead_names is not None else list(fe.lead_names)
    used = {name for name, u in zip(fe.lead_names, np.asarray(mask).reshape(-1)) if u}
    if fe.crop != "random":  # the share among the samples read (a gap in minute 5 of a long record is not read)
        lo, hi = fe.read_window(x.shape[-1], float(sampling_rate))
        x = x[:, lo:hi]
    share = (~np.isfinite(x)).mean(axis=-1)
    bridged = [f"{standard_lead_name(name)} ({100 * part:.0f}%)" for name, part in zip(names, share)
               if REPAIR_WARNING_SHARE < part < 1 and standard_lead_name(name) in used]
    if bridged:
        warnings.warn(f"{where}: lead(s) {', '.join(bridged)} of NaN/inf samples, bridged (nan_policy="
                      f"{nan_policy or fe.nan_policy!r}): the bridged stretch has no beats, so rate-dependent scores shift; leave "
                      "such leads out (leads=[...]) or score the finite part", UserWarning, stacklevel=3)


def kept_seconds(feature_extractor) -> float:
    """Seconds of a record the model reads: its input (10 s), or the cut a classifier was fine-tuned on
    (`keep_samples`, e.g. CPSC2018's 5 s)."""
    fe = feature_extractor
    return (getattr(fe, "keep_samples", None) or fe.num_samples) / fe.sampling_rate


def _warn_missing_leads(processor, mask, where: str, leads=None) -> None:
    """Warn when the record lacks a lead in use: any standard lead, or with `leads=` one it asked for (`leads="limb"`
    on a record of I and II alone would otherwise be scored on two leads without a word)."""
    import warnings

    wanted = set(leads) if leads is not None else None
    missing = [name for name, used in zip(processor.feature_extractor.lead_names, np.asarray(mask).reshape(-1))
               if not used and (wanted is None or name in wanted)]
    if missing:
        hint = ("pass leads=[...] to choose the subset explicitly, " if wanted is None else "")
        warnings.warn(f"{where}: lead(s) {', '.join(missing)} absent from the record or flat (constant): scored "
                      f"as zeros, as in pretraining's lead masking ({hint}return_leads=True to get the leads used)",
                      UserWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------


def _model_device(model) -> torch.device:
    return model.device  # a PreTrainedModel's, or DBetaOnnxModel's (which has no torch parameters)


def _check_token_ids(input_ids: torch.Tensor, model) -> None:
    """Token ids past the text encoder's vocabulary mean a tokenizer of another model (a folder saved over one that
    held another tokenizer's files keeps them): an error saying so, not an IndexError inside the embedding."""
    vocab = getattr(getattr(model.config, "text_config", None), "vocab_size", None)
    if vocab and input_ids.numel() and int(input_ids.max()) >= vocab:
        raise ValueError(f"the tokenizer gives token id {int(input_ids.max())}, past the text encoder's vocabulary "
                         f"of {vocab}: it is not this model's tokenizer (files of another model's tokenizer in the "
                         "folder, such as special_tokens_map.json or added_tokens.json?)")


@torch.no_grad()
def text_features(model, processor, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Text features [len(texts), hidden] (`get_text_features`) of texts cleaned and tokenized by the processor.
    Each distinct text as the model reads it (`processor.text_keys`: its token ids) is encoded once, so copies get
    bitwise-equal features whichever batch they fall in: padded beside a longer text they differed by ~4e-9, and
    retrieval's tie rule then depended on the batch size."""
    device = _model_device(model)
    texts = list(texts)
    if not texts:
        return torch.zeros(0, model.config.hidden_size)
    # an export's own processor from before text_keys existed (eval's --remote-code): copies by their text
    keys = processor.text_keys(texts) if hasattr(processor, "text_keys") else texts
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    unique = [texts[i] for i in first.values()]
    chunks = []
    for start in range(0, len(unique), batch_size):
        enc = processor(text=unique[start:start + batch_size], return_tensors="pt")
        _check_token_ids(enc["input_ids"], model)
        features = model.get_text_features(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        chunks.append(features.pooler_output)
    row = {key: j for j, key in enumerate(first)}
    return torch.cat(chunks)[[row[key] for key in keys]]


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
    out: Dict[str, np.ndarray] = {}
    with eval_mode(model):
        if ecgs is not None:
            processor.feature_extractor.check_model_input(model.config.ecg_config, _model_name(model))
            out["ecg"] = ecg_features(model, processor, ecgs, sampling_rate, lead_names, batch_size)
        if texts is not None:
            out["text"] = text_features(model, processor, [texts] if isinstance(texts, str) else list(texts),
                                        batch_size)
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
    for i, c in enumerate(candidate_labels):
        if not isinstance(c, str):  # str(None) or str(nan) would be scored as the text "None" / "nan"
            raise TypeError(f"candidate_labels[{i}] must be a string, got {type(c).__name__} {c!r}")
    labels = [c.strip() for c in candidate_labels]
    if not labels or any(not c for c in labels):
        raise ValueError(f"candidate_labels must be non-empty strings, got {candidate_labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"candidate_labels has duplicates: {labels}")
    return labels


class _ECGPipeline(Pipeline):
    """What the two D-BETA pipelines share: the inputs (one ECG or a list; each read and conditioned by the
    model's processor, errors naming the input's position and file), the lead keywords (sampling_rate,
    lead_names, leads, return_leads), `top_k`, and the ranked [{"label", "score"}] output."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False

    @staticmethod
    def _input_parameters(sampling_rate=None, lead_names=None, leads=None, return_leads=None, top_k=None,
                          nan_policy=None):
        """(preprocess, postprocess) options of the keywords both pipelines take, checked."""
        preprocess, post = {}, {}
        if nan_policy is not None:  # the processor's per-call option, for this call only
            if not isinstance(nan_policy, str) or nan_policy not in NAN_POLICIES:
                raise ValueError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}")
            preprocess["nan_policy"] = nan_policy
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        if lead_names is not None:
            preprocess["lead_names"] = lead_names
        if leads is not None:
            preprocess["leads"] = resolve_leads(leads)
        if return_leads is not None:
            post["return_leads"] = _check_bool("return_leads", return_leads)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
            post["top_k"] = int(top_k)
        return preprocess, post

    def __call__(self, inputs, **kwargs):
        inputs = _split_batch(inputs)
        if isinstance(inputs, list):
            if not inputs:
                return []
            inputs = [_Item(i, x) for i, x in enumerate(inputs)]
        elif isinstance(inputs, types.GeneratorType):  # streamed: numbered as they come, as a list's items are
            inputs = (_Item(i, x) for i, x in enumerate(inputs))
        return super().__call__(inputs, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """transformers' Pipeline saves the feature extractor alone (preprocessor_config.json), while AutoProcessor
        reads processor_config.json first: saved into an export folder, the old processor settings came back on
        reload. The processor is saved too, so both files hold the settings this pipeline scores with."""
        super().save_pretrained(save_directory, **kwargs)
        if self.processor is not None:
            self.processor.save_pretrained(save_directory, **kwargs)

    def _ecg_inputs(self, inputs, sampling_rate=None, lead_names=None, leads=None, nan_policy=None) -> dict:
        """{"ecg_values" [1, leads, samples], "lead_mask" [1, 12]} of one input (an `_Item` of a list, or bare)."""
        index = inputs.index if isinstance(inputs, _Item) else None
        item = inputs.value if isinstance(inputs, _Item) else inputs
        self._check_processor()
        record = _read_input(item, index, sampling_rate, lead_names)
        values, mask = conditioned_ecg(self.processor, record, index, leads=leads, return_lead_mask=True,
                                       nan_policy=nan_policy)
        return {"ecg_values": values, "lead_mask": mask}

    def _check_processor(self) -> None:
        """Every scoring path (plain, windows, explain) first: the processor conditions records as the model
        was trained (DBetaFeatureExtractor.check_model_input)."""
        self.processor.feature_extractor.check_model_input(self.model.config.ecg_config, _model_name(self.model))

    def _ranked(self, labels: Sequence[str], scores: Sequence[float], top_k=None, return_leads=False,
                lead_mask=None):
        """[{"label", "score"}] highest first (the first `top_k`), or with `return_leads` {"scores", "leads"}."""
        order = sorted(range(len(labels)), key=lambda i: -scores[i])[:top_k]
        result = [{"label": labels[i], "score": float(scores[i])} for i in order]
        if return_leads:
            return {"scores": result, "leads": used_lead_names(self.processor, lead_mask)}
        return result


def _model_name(model) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or "this model")


class ZeroShotECGClassificationPipeline(_ECGPipeline):
    """Zero-shot ECG classification: scores an ECG against candidate labels (class codes or free text).

    Call keywords: candidate_labels (list or comma-separated string; required), sampling_rate, lead_names,
    hypothesis_template ("{}"), multi_label (False; True or False only), dataset (None; applies that dataset's code
    spellings), prompts (a prompt-set dict or JSON path overriding the model's), prompt_style ("description" |
    "name"; default the model config's zero_shot_prompt_style), prompt_members (False; True adds each member's
    texts, with dataset="ptbxl_sub" or "ptbxl_super"), top_k (None = all), batch_size, num_workers, nan_policy
    (the processor's, for this call: "zero" scores a lead with no finite sample as absent). Any other keyword is
    refused. A fine-tuned classifier (no text tower) is refused: it has
    `ECGClassificationPipeline`."""

    def __init__(self, *args, **kwargs):
        self._prompt_cache = None  # ((model name, revision), PromptSet)
        self._label_cache = None  # (model, processor and parameter identities and versions, texts, features)
        super().__init__(*args, **kwargs)
        if not callable(getattr(self.model, "get_text_features", None)):
            name = _model_name(self.model)
            kind = ", ".join(getattr(self.model.config, "architectures", None) or [type(self.model).__name__])
            raise ValueError(
                f"{name} is a fine-tuned ECG classifier ({kind}) with no text tower: zero-shot scores would come "
                f"from a random text encoder. Use its own classes: pipeline(\"{CLASSIFICATION_TASK}\", "
                f"model={name!r}, trust_remote_code=True)")

    # -- parameters -------------------------------------------------------------------------------------------

    def _sanitize_parameters(self, sampling_rate=None, lead_names=None, candidate_labels=None,
                             hypothesis_template=None, multi_label=None, dataset=None, prompts=None, top_k=None,
                             prompt_style=None, prompt_members=None, leads=None, return_leads=None, nan_policy=None,
                             **kwargs):
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(kwargs))}; the pipeline takes "
                            f"{', '.join(CALL_KEYWORDS + WINDOW_KEYWORDS + EXPLAIN_KEYWORDS)}")
        preprocess, post = self._input_parameters(sampling_rate, lead_names, leads, return_leads, top_k, nan_policy)
        if candidate_labels is not None:
            preprocess["candidate_labels"] = _labels_list(candidate_labels)
        if hypothesis_template is not None:
            check_template(hypothesis_template)
            preprocess["hypothesis_template"] = hypothesis_template
        if dataset is not None:
            preprocess["dataset"] = dataset
        if prompts is not None:
            preprocess["prompts"] = load_prompt_set(prompts=prompts)  # read once per call; errors name the file
        if prompt_style is not None:
            if prompt_style not in PROMPT_STYLES:
                raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
            preprocess["prompt_style"] = prompt_style
        if prompt_members is not None:
            preprocess["prompt_members"] = _check_bool("prompt_members", prompt_members)
        if multi_label is not None:
            post["multi_label"] = _check_bool("multi_label", multi_label)
        return preprocess, {}, post

    # -- labels -----------------------------------------------------------------------------------------------

    def prompt_set(self, prompts=None) -> PromptSet:
        """The model's prompt set (kept while the model's name and revision stay the same), or `prompts`'."""
        if prompts is not None:
            return load_prompt_set(prompts=prompts)
        config = self.model.config
        name = getattr(self.model, "name_or_path", None) or getattr(config, "_name_or_path", None)
        key = (name, getattr(self.model, "hub_revision", None))  # the revision the weights were loaded at
        if self._prompt_cache is None or self._prompt_cache[0] != key:
            self._prompt_cache = (key, load_prompt_set(name, revision=key[1]))
        return self._prompt_cache[1]

    def label_texts(self, candidate_labels, hypothesis_template: str = "{}", dataset=None, prompts=None,
                    prompt_style: Optional[str] = None, prompt_members: bool = False) -> List[tuple]:
        """The texts each candidate label is encoded as, one tuple per label (prompting_dbeta.PromptSet.texts with
        this model's prompt set and prompt style)."""
        style = prompt_style_for(self.model.config, prompt_style)
        labels = _labels_list(candidate_labels)
        prompt_set = self.prompt_set(prompts)
        texts = prompt_set.texts(labels, dataset, style, hypothesis_template, members=prompt_members)
        # One class twice would split its share of the softmax between two labels. Compared as the model reads
        # them ("normal ECG", "normal  ecg" and "nórmal ecg" may all be the same token ids), and by the class's
        # name too: with descriptions, "AFIB" (name + description) and "atrial fibrillation" differ as texts.
        # Trailing punctuation is not compared: "sinus rhythm." is "sinus rhythm" (a different token id or two).
        names = prompt_set.texts(labels, dataset, "name", warn=False)
        typed = [(label.strip().casefold(),) for label in labels]  # "AFIB" and "afib": one class typed twice
        for compared in (typed, texts, names):
            first = {}
            for label, text in zip(labels, compared):
                seen = tuple(self.processor.text_keys([normalize_report(text[0]).rstrip(" .,;:!?")]))
                if seen in first:
                    raise ValueError(f"candidate_labels {first[seen]!r} and {label!r} are the same class (both "
                                     f"name {normalize_report(text[0])!r}); give each class once")
                first[seen] = label
        return texts

    def _label_features(self, texts: Sequence[tuple]) -> torch.Tensor:
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
        with eval_mode(model):
            features = label_features(lambda batch: text_features(model, processor, batch), texts)
        # weak references: a freed model or parameter can never match a new one that reuses its id or memory
        self._label_cache = (weakref.ref(model), weakref.ref(processor), [weakref.ref(p) for p in params], state,
                             texts, features)
        return features

    # -- call -------------------------------------------------------------------------------------------------

    def __call__(self, inputs, candidate_labels=None, **kwargs):
        """Score `inputs` (one ECG or a list; see the module docstring) against `candidate_labels`.

        Returns [{"label", "score"}] sorted by score (highest first), or a list of those for a list input; with
        `return_leads=True`, {"scores": [...], "leads": [the leads used]}. `window_seconds=` (with
        `stride_seconds=`, `aggregate=`) scores a record of any length window by window (see `windows`);
        `explain=True` adds where the model looked (see `explain`)."""
        if candidate_labels is not None:
            kwargs["candidate_labels"] = candidate_labels
        explain = _check_bool("explain", kwargs.pop("explain")) if "explain" in kwargs else False
        if any(k in kwargs for k in WINDOW_KEYWORDS):
            if explain:
                raise TypeError("explain=True and window_seconds= cannot be combined: explain one window's record")
            return self._each(inputs, self.windows, kwargs)
        if explain:
            return self._each(inputs, self.explain, kwargs)
        return super().__call__(inputs, **kwargs)

    def _each(self, inputs, method, kwargs):
        """`method` on one input, or on each of a list (errors name the position)."""
        inputs = _split_batch(inputs)
        if not isinstance(inputs, list):
            return method(inputs, **kwargs)
        out = []
        for i, item in enumerate(inputs):
            try:
                out.append(method(item, **kwargs))
            except (OSError, ValueError) as err:
                raise type(err)(f"input {i}: {err}") from err
        return out

    def preprocess(self, inputs, sampling_rate=None, lead_names=None, candidate_labels=None,
                   hypothesis_template="{}", dataset=None, prompts=None, prompt_style=None, prompt_members=False,
                   leads=None, nan_policy=None):
        model_inputs = {}
        if candidate_labels is not None:  # the labels travel with the record to _forward and postprocess
            model_inputs["candidate_labels"] = list(candidate_labels)
            model_inputs["label_texts"] = self.label_texts(candidate_labels, hypothesis_template, dataset, prompts,
                                                           prompt_style, prompt_members)
        model_inputs.update(self._ecg_inputs(inputs, sampling_rate, lead_names, leads, nan_policy))
        return model_inputs

    def _forward(self, model_inputs):
        if "candidate_labels" not in model_inputs:
            raise ValueError("candidate_labels is required, e.g. candidate_labels=['NORM', 'AFIB', 'MI']")
        labels = model_inputs.pop("candidate_labels")
        texts = model_inputs.pop("label_texts")
        with eval_mode(self.model):
            ecg_embeds = self.model.get_ecg_features(model_inputs["ecg_values"]).pooler_output
            rows = texts if isinstance(texts[0], list) else [texts]  # batched: label-text tuples per record
            logits = torch.cat([zero_shot_logits(self.model, ecg_embeds[i:i + 1], self._label_features(row))
                                for i, row in enumerate(rows)])
        return {"logits": logits, "candidate_labels": labels, "lead_mask": model_inputs["lead_mask"]}

    def postprocess(self, model_outputs, multi_label=False, top_k=None, return_leads=False):
        labels = model_outputs["candidate_labels"]
        logits = model_outputs["logits"]
        if logits.ndim == 2:
            logits = logits[0]
        scores = label_scores(logits, multi_label).tolist()
        return self._ranked(labels, scores, top_k, return_leads, model_outputs["lead_mask"])

    # -- records of any length ------------------------------------------------------------------------------------

    def _labels_and_options(self, kwargs: dict) -> tuple:
        """(candidate labels, their texts, preprocess options, postprocess options) of a call's keywords."""
        pre, _, post = self._sanitize_parameters(**kwargs)
        labels = pre.get("candidate_labels")
        if labels is None:
            raise ValueError("candidate_labels is required, e.g. candidate_labels=['NORM', 'AFIB', 'MI']")
        texts = self.label_texts(labels, pre.get("hypothesis_template", "{}"), pre.get("dataset"),
                                 pre.get("prompts"), pre.get("prompt_style"), pre.get("prompt_members", False))
        return labels, texts, pre, post

    def windows(self, inputs, window_seconds=None, stride_seconds=None, aggregate: str = "mean", progress=None,
                chunk_seconds: float = 300.0, batch_size: int = 32, num_workers=None, **kwargs) -> dict:
        """Score one record of any length window by window, and combine the windows' scores.

        `window_seconds` (default: the model's input, 10 s; at most that) and `stride_seconds` (default: the
        window; smaller overlaps the windows) are in seconds of the record. Windows start at 0, stride, 2 x stride,
        ...; when the record's last samples are in none of them, one more window ends at the record's end (a full
        window, overlapping the one before, not a zero-padded tail); a record shorter than one window is one
        window (zero-padded by the processor, with a warning, as are windows shorter than the model's input). A
        WFDB record is read a chunk (`chunk_seconds`) at a time, so memory does not grow with its length; a DICOM
        file or an array is sliced. A window the processor refuses (a flat stretch where the electrodes came off,
        say) keeps its place with an "error" and no scores, and is left out of the aggregate. `aggregate`: "mean", "max" or
        "fraction" (see AGGREGATES). Other keywords are the pipeline's (candidate_labels, sampling_rate,
        lead_names, leads, multi_label, dataset, prompts, prompt_style, prompt_members, hypothesis_template,
        top_k: applies to the aggregate).

        Returns {"windows": [{"start", "end", "scores": [{"label", "score"}, ...], "leads"}, ...] (seconds, scores in
        the order of candidate_labels, the leads that window used), "aggregate": [{"label", "score"}, ...] (highest
        first), "aggregate_rule", "leads" (the leads used in any window: a lead lost in some windows is warned
        about), "duration" (s), "window_seconds", "stride_seconds", "n_windows_scored",
        "unscored_seconds" (seconds in no window: gaps when the stride is longer than the window)}."""
        self._check_processor()
        fe = self.processor.feature_extractor
        model_seconds = kept_seconds(fe)
        window_seconds = model_seconds if window_seconds is None else _seconds("window_seconds", window_seconds)
        if window_seconds > model_seconds + 1e-9:
            raise ValueError(f"window_seconds={window_seconds:g} is longer than the model's input "
                             f"({model_seconds:g} s); the processor would crop each window to {model_seconds:g} s "
                             "and drop the rest. Use window_seconds <= that and a stride to cover the record")
        stride_seconds = window_seconds if stride_seconds is None else _seconds("stride_seconds", stride_seconds)
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        labels, texts, pre, post = self._labels_and_options(kwargs)
        multi_label, top_k = post.get("multi_label", False), post.get("top_k")
        source = _RecordSource(inputs, pre.get("sampling_rate"), pre.get("lead_names"))
        if source.path is None:  # an array's layout before its length: [samples, leads] is no 0.02 s record
            fe.check_layout(source.signal.shape, source.lead_names, source.name)
        rate = source.sampling_rate
        win, step = max(1, int(round(window_seconds * rate))), max(1, int(round(stride_seconds * rate)))
        spans = window_spans(source.num_samples, win, step, int(np.ceil(fe.min_duration * rate)))
        if not spans:
            raise ValueError(f"{source.name}: {source.num_samples / rate:.2f} s of signal is shorter than the "
                             f"processor's minimum {fe.min_duration:g} s (min_duration): nothing to score")
        _warn_padded(self.processor, (spans[0][1] - spans[0][0]) / rate, source.name,
                     "signal per window" if len(spans) > 1 else "signal")
        label_feats = self._label_features(texts)
        device = _model_device(self.model)
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm comes with huggingface_hub
            tqdm = None
        bar = tqdm(total=len(spans), unit="window", desc="windows",
                   disable=None if progress is None else not progress) if tqdm else None
        rows, batch, lead_mask = [], [], None
        per_chunk = max(1, int(chunk_seconds // stride_seconds))

        def flush():
            with torch.no_grad():
                values = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
                logits = zero_shot_logits(self.model, self.model.get_ecg_features(values).pooler_output, label_feats)
                scores = label_scores(logits, multi_label).cpu().numpy()
            for (row, _), row_scores in zip(batch, scores):
                row["scores"] = [{"label": label, "score": float(v)} for label, v in zip(labels, row_scores)]
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

        try:
            with eval_mode(self.model):
                for first in range(0, len(spans), per_chunk):
                    group = spans[first:first + per_chunk]
                    chunk = source.read(group[0][0], group[-1][1])
                    for start, end in group:
                        row = {"start": start / rate, "end": end / rate}
                        rows.append(row)
                        where = f"{source.name} window {start / rate:g}-{end / rate:g} s"
                        try:
                            values, mask = fe.condition(chunk[:, start - group[0][0]:end - group[0][0]], rate,
                                                        source.lead_names, where=where, leads=pre.get("leads"),
                                                        return_lead_mask=True, nan_policy=pre.get("nan_policy"))
                        except ValueError as err:
                            row["scores"], row["error"] = None, str(err)
                            if bar is not None:
                                bar.update(1)
                            continue
                        lead_mask = mask if lead_mask is None else lead_mask | mask
                        row["leads"] = used_lead_names(self.processor, mask)
                        batch.append((row, values))
                        if len(batch) >= batch_size:
                            flush()
                if batch:
                    flush()
        finally:
            if bar is not None:
                bar.close()
        scored = [r for r in rows if r["scores"] is not None]
        if not scored:
            raise ValueError(f"{source.name}: no window could be scored; the first window's error: "
                             f"{rows[0]['error']}")
        _warn_missing_leads(self.processor, lead_mask, source.name, pre.get("leads"))
        _warn_leads_lost_in_windows(scored, used_lead_names(self.processor, lead_mask), source.name)
        combined = aggregate_scores(np.array([[d["score"] for d in r["scores"]] for r in scored]), aggregate,
                                    multi_label)
        order = sorted(range(len(labels)), key=lambda i: -combined[i])[:top_k]
        return {
            "windows": rows,
            "aggregate": [{"label": labels[i], "score": float(combined[i])} for i in order],
            "aggregate_rule": aggregate,
            "leads": used_lead_names(self.processor, lead_mask),
            "duration": source.num_samples / rate,
            "window_seconds": window_seconds,
            "stride_seconds": stride_seconds,
            "n_windows_scored": len(scored),
            "unscored_seconds": uncovered_samples(source.num_samples, spans) / rate,
        }

    # -- where the model looked ----------------------------------------------------------------------------------

    def explain(self, inputs, explain_label=None, n_steps: int = 32, segment_seconds: float = 0.5,
                batch_size=None, num_workers=None, **kwargs) -> dict:
        """Score one record and attribute one label's score to its leads and time (integrated gradients, captum).

        `explain_label`: the candidate label to explain (default: the top-scoring one). Attributions are against
        `attribution_baseline`, low-amplitude noise on the leads the record has (absent leads stay zero): the
        encoder's first GroupNorm normalises each channel over the whole record, so from an all-zero ECG the score
        would jump at the start of the path and the gradients integrate to about 0. They rank leads and segments
        (`convergence_delta` is the gap left by the numerical integral). Returns
        {"scores": [...] (as the pipeline), "leads": [the leads used], "explanation": see
        `attribute_zero_shot`, with "start_seconds": where in the record the explained input begins, None for
        a random crop}. `batch_size` and `num_workers` are accepted as in any call and unused: one record is
        explained at a time."""
        self._check_processor()
        if not isinstance(self.model, torch.nn.Module):  # an ONNX Runtime graph has no gradients to integrate
            raise TypeError(f"explain=True needs the torch model (DBetaModel), not {type(self.model).__name__}: "
                            "load the folder with AutoModel.from_pretrained for attributions")
        labels, texts, pre, post = self._labels_and_options(kwargs)
        multi_label = post.get("multi_label", False)
        record = _read_input(inputs, None, pre.get("sampling_rate"), pre.get("lead_names"))
        values, mask = conditioned_ecg(self.processor, record, None, leads=pre.get("leads"), return_lead_mask=True,
                                       nan_policy=pre.get("nan_policy"))
        device = _model_device(self.model)
        values = values.to(device)
        label_feats = self._label_features(texts)
        with torch.no_grad():
            logits = zero_shot_logits(self.model, self.model.get_ecg_features(values).pooler_output, label_feats)[0]
        scores = label_scores(logits, multi_label).cpu().numpy()
        if explain_label is None:
            target = int(np.argmax(scores))
        elif str(explain_label) in labels:
            target = labels.index(str(explain_label))
        else:
            raise ValueError(f"explain_label={explain_label!r} is not one of the candidate labels {labels}")
        explanation = attribute_zero_shot(self.model, values, label_feats, target, multi_label=multi_label,
                                          n_steps=n_steps, segment_seconds=segment_seconds,
                                          sampling_rate=self.processor.feature_extractor.sampling_rate,
                                          lead_names=self.processor.feature_extractor.lead_names,
                                          lead_mask=mask[0].numpy())
        explanation["label"] = labels[target]
        # the part of the record the model read (crop="center" reads the middle of a longer one)
        rate = float(record["sampling_rate"])
        try:
            start, _ = self.processor.feature_extractor.read_window(np.shape(record["signal"])[-1], rate)
        except ValueError:  # a random crop has no fixed window
            start = None
        explanation["start_seconds"] = None if start is None else start / rate
        result = self._ranked(labels, scores, post.get("top_k"))
        return {"scores": result, "leads": used_lead_names(self.processor, mask), "explanation": explanation}


class ECGClassificationPipeline(_ECGPipeline):
    """A fine-tuned classifier's own classes: `pipeline("ecg-classification", model=finetuned, ...)`.

    Returns [{"label", "score"}] over the model's `id2label`, highest first (a list of those for a list input).
    Scores follow `config.problem_type` as transformers' text-classification pipeline does: a sigmoid per class
    for "multi_label_classification" (or a single class), a softmax over the classes for
    "single_label_classification", the raw outputs for "regression". Call keywords: sampling_rate, lead_names,
    leads, return_leads, top_k (None = every class), batch_size, num_workers, nan_policy, and one override:
    function_to_apply ("sigmoid" | "softmax" | "none") or multi_label (True = sigmoid, False = softmax).
    The inputs are the zero-shot pipeline's (see the module docstring). Any other keyword is refused; a model
    without a classification head is refused (it has `ZeroShotECGClassificationPipeline`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        head = getattr(self.model, "classifier", None)
        name = _model_name(self.model)
        if not isinstance(head, torch.nn.Module):
            raise ValueError(
                f"{name} has no classification head (a pretrained D-BETA): fine-tune it (python -m train.finetune) "
                f"for its own classes, or score labels zero-shot: pipeline(\"{TASK}\", model={name!r}, "
                "trust_remote_code=True)")
        if "classifier" in getattr(self.model, "untrained_heads", list)():
            raise ValueError(
                f"{name}: its classification head was initialised at random when it was loaded (its checkpoint had "
                "none, or was saved before the head was trained) and has not been trained since; its scores would "
                "mean nothing. Fine-tune it "
                f"(python -m train.finetune), or score labels zero-shot: pipeline(\"{TASK}\", model={name!r}, "
                "trust_remote_code=True)")

    def _sanitize_parameters(self, sampling_rate=None, lead_names=None, leads=None, return_leads=None, top_k=None,
                             function_to_apply=None, multi_label=None, nan_policy=None, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(kwargs))}; the pipeline takes "
                            f"{', '.join(CLASSIFY_KEYWORDS)}")
        preprocess, post = self._input_parameters(sampling_rate, lead_names, leads, return_leads, top_k, nan_policy)
        if function_to_apply is not None and multi_label is not None:
            raise TypeError("give function_to_apply or multi_label, not both")
        if function_to_apply is not None:
            if not isinstance(function_to_apply, str) or function_to_apply not in SCORE_FUNCTIONS:
                raise ValueError(f"function_to_apply must be one of {', '.join(SCORE_FUNCTIONS)}, "
                                 f"got {function_to_apply!r}")
            post["function_to_apply"] = function_to_apply
        if multi_label is not None:
            post["function_to_apply"] = "sigmoid" if _check_bool("multi_label", multi_label) else "softmax"
        return preprocess, {}, post

    def class_labels(self) -> List[str]:
        """The model's class names, in the order of its logits (`config.id2label`)."""
        config = self.model.config
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        missing = [i for i in range(config.num_labels) if i not in id2label]
        if missing:
            raise ValueError(f"{_model_name(self.model)}: config.id2label has no name for class(es) {missing} of "
                             f"{config.num_labels}")
        labels = [id2label[i] for i in range(config.num_labels)]
        repeated = sorted({name for name in labels if labels.count(name) > 1})
        if repeated:  # two outputs under one name: a reader cannot tell which score is which class
            raise ValueError(f"{_model_name(self.model)}: config.id2label gives the name(s) {', '.join(repeated)} "
                             "to more than one class")
        label2id = getattr(config, "label2id", None) or {}
        wrong = [name for name in labels if name in label2id and int(label2id[name]) != labels.index(name)]
        if wrong:
            raise ValueError(f"{_model_name(self.model)}: config.label2id and config.id2label disagree about "
                             f"{', '.join(wrong)}")
        return labels

    def preprocess(self, inputs, sampling_rate=None, lead_names=None, leads=None, nan_policy=None):
        model_inputs = self._ecg_inputs(inputs, sampling_rate, lead_names, leads, nan_policy)
        model_inputs["class_labels"] = self.class_labels()  # travels with the record to postprocess
        return model_inputs

    def _forward(self, model_inputs):
        with eval_mode(self.model):
            logits = self.model(ecg_values=model_inputs["ecg_values"]).logits
        return {"logits": logits, "class_labels": model_inputs["class_labels"],
                "lead_mask": model_inputs["lead_mask"]}

    def postprocess(self, model_outputs, function_to_apply=None, top_k=None, return_leads=False):
        labels = model_outputs["class_labels"]
        logits = model_outputs["logits"].float()
        if logits.ndim == 2:
            logits = logits[0]
        if logits.shape[-1] != len(labels):
            raise ValueError(f"{_model_name(self.model)}: the model gives {logits.shape[-1]} scores but "
                             f"config.id2label names {len(labels)} classes")
        function = function_to_apply or default_score_function(self.model.config)
        if function == "softmax" and len(labels) == 1:
            raise ValueError("function_to_apply='softmax' over a single class is 1 whatever the ECG: use 'sigmoid'")
        if function == "sigmoid":
            scores = torch.sigmoid(logits)
        elif function == "softmax":
            scores = logits.softmax(-1)
        else:
            scores = logits
        return self._ranked(labels, scores.tolist(), top_k, return_leads, model_outputs["lead_mask"])


def default_score_function(config) -> str:
    """How `ECGClassificationPipeline` turns logits into scores by default (transformers' text-classification
    rule): "none" for regression, "sigmoid" for multi-label or a single class, otherwise "softmax"."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


# --------------------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------------------


def _seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if value > 1e7:  # no recording lasts 116 days; beyond this, seconds x rate stops being a sample count
        raise ValueError(f"{name} must be at most 1e7 seconds, got {value!r}")
    return float(value)


def window_spans(num_samples: int, window: int, stride: int, min_length: int) -> List[tuple]:
    """[(start, end)] sample spans, each a full window: at 0, stride, 2 x stride, ...; then, when the record's
    last samples are in none of them, one more window ending at the record's end (overlapping the one before:
    a shorter tail would be zero-padded, and padding reads as beats that never came). A record shorter than one
    window is one span, if it is at least `min_length`."""
    if num_samples < window:
        return [(0, num_samples)] if num_samples >= min_length else []
    spans = [(start, start + window) for start in range(0, num_samples - window + 1, stride)]
    if spans[-1][1] < num_samples:
        spans.append((num_samples - window, num_samples))
    return spans


def _warn_leads_lost_in_windows(rows: list, leads: List[str], where: str) -> None:
    """A lead used in some windows but absent or flat in others (an electrode that came off) is a zero row there;
    the record's `leads` (the union) would not show it."""
    import warnings

    lost = {lead: [r for r in rows if lead not in r["leads"]] for lead in leads}
    lost = {lead: found for lead, found in lost.items() if found}
    if lost:
        parts = [f"{lead} in {len(found)} of {len(rows)} (from {found[0]['start']:g} s)"
                 for lead, found in lost.items()]
        warnings.warn(f"{where}: lead(s) absent or flat (constant) in some windows, scored as zeros there: "
                      f"{'; '.join(parts)}; each window's `leads` lists the leads it used", UserWarning, stacklevel=3)


def uncovered_samples(num_samples: int, spans: Sequence[tuple]) -> int:
    """Samples of the record in no span (gaps between windows when the stride is longer than the window)."""
    covered, reach = 0, 0
    for start, end in sorted(spans):
        covered += max(0, end - max(start, reach))
        reach = max(reach, end)
    return num_samples - covered


def aggregate_scores(scores: np.ndarray, rule: str, multi_label: bool = False) -> np.ndarray:
    """Per-label record scores from per-window scores [windows, labels] by `rule` (AGGREGATES)."""
    scores = np.asarray(scores, dtype=np.float64)
    if rule == "mean":
        return scores.mean(axis=0)
    if rule == "max":
        return scores.max(axis=0)
    if rule == "fraction":
        if multi_label or scores.shape[1] == 1:
            return (scores >= 0.5).mean(axis=0)
        return np.bincount(scores.argmax(axis=1), minlength=scores.shape[1]) / len(scores)
    raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {rule!r}")


class _RecordSource:
    """One record to read in pieces: a WFDB record through its header and sample ranges, anything else
    (an array, a dict, a DICOM file) read once and sliced."""

    def __init__(self, item, sampling_rate=None, lead_names=None):
        self.path = None
        base = str(item)[:-4] if isinstance(item, (str, os.PathLike)) and str(item).endswith(
            (".hea", ".dat", ".mat")) else str(item)
        # (a format-8 record is read whole: wfdb's range reads restart its first differences; see below)
        if isinstance(item, (str, os.PathLike)) and Path(base + ".hea").is_file() and wfdb_reads_in_ranges(base):
            info = wfdb_info(base)
            if info["num_samples"]:
                self.path, self.name = info["path"], str(item)
                self.sampling_rate, self.lead_names = _file_settings(str(item), info["sampling_rate"],
                                                                     info["lead_names"], lead_names)
                self.num_samples = int(info["num_samples"])
                # read() takes sample ranges, which cannot be checked one by one against the header's checksums
                check_wfdb_checksums(self.path, chunk_samples=int(300 * self.sampling_rate))
                return
        record = as_record(item, sampling_rate, lead_names)
        self.name = _where(None, record["source"])
        if record["sampling_rate"] is None:
            raise ValueError(f"{self.name}: sampling_rate is required for an array input: pass sampling_rate=<Hz>")
        self.signal = record["signal"]
        rate = record["sampling_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
                or not np.isfinite(rate) or rate <= 0:
            raise ValueError(f"{self.name}: sampling_rate must be a positive number of Hz, got {rate!r}")
        self.sampling_rate = float(rate)
        self.num_samples = int(self.signal.shape[1])
        self.lead_names = record["lead_names"]

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.path is None:
            return self.signal[:, start:stop]
        return read_wfdb(self.path, sampfrom=start, sampto=stop).signal


# --------------------------------------------------------------------------------------------------------------
# Where the model looked
# --------------------------------------------------------------------------------------------------------------


# The encoder's first GroupNorm makes it blind to the input's scale, so on the straight path from an all-zero ECG
# (or any flat one) to the record the score is constant except at the very start, and the gradients integrate to
# ~0. A low-amplitude noise record, which the path turns into the record, has no such degeneracy.
BASELINE_NOISE_MV = 0.05


def attribution_baseline(ecg_values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The integrated-gradients baseline: seeded Gaussian noise of BASELINE_NOISE_MV where the record has signal.
    Absent (all-zero) leads stay zero, and the padding after a short record (the run of samples at the end where
    every lead holds its last value: zeros, or minmax's constant) equals the input, so neither takes attribution
    (with noise there, 40-49% of a 4-5 s record's attribution fell after its end)."""
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(ecg_values.shape, generator=generator) * BASELINE_NOISE_MV
    present = (ecg_values.abs().amax(dim=-1, keepdim=True) > 0).to(noise.dtype)
    baseline = noise * present
    moving = (ecg_values != ecg_values[..., -1:]).reshape(-1, ecg_values.shape[-1]).any(dim=0)
    length = int(moving.nonzero().max()) + 1 if moving.any() else 0
    baseline[..., length:] = ecg_values[..., length:].to(baseline.dtype)
    return baseline


def integrated_gradients(score_fn, ecg_values: torch.Tensor, target: int, n_steps: int = 32,
                         internal_batch_size: int = 8) -> tuple:
    """Integrated gradients (captum) of `score_fn(x)[:, target]` at `ecg_values` [1, leads, samples] against
    `attribution_baseline` (low-amplitude noise). Returns (attributions [leads, samples] float32, convergence
    delta: the completeness gap score(x) - score(baseline) - sum(attributions), small when n_steps suffices)."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError as err:
        raise ImportError("attributions need captum: pip install captum (requirements.txt pins the version the "
                          "project tests)") from err
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}")
    x = ecg_values.detach().float().clone()
    with torch.enable_grad():
        attributions, delta = IntegratedGradients(score_fn).attribute(
            x, baselines=attribution_baseline(x).to(x.device), target=int(target), n_steps=int(n_steps),
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return attributions[0].detach().cpu().numpy().astype(np.float32), float(delta.abs().max())


def summarize_attributions(attributions: np.ndarray, sampling_rate: float, segment_seconds: float = 0.5,
                           lead_names: Sequence[str] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3",
                                                        "V4", "V5", "V6"),
                           lead_mask=None) -> dict:
    """Attributions [leads, samples] summed over time segments of `segment_seconds`: {"segments" [leads, n]
    (float32), "segment_seconds", "lead_totals" {lead: sum}, "lead_names", "lead_mask"}. A lead the record
    lacks has zero input and so zero attribution."""
    segment = max(1, int(round(_seconds("segment_seconds", segment_seconds) * sampling_rate)))
    leads, samples = attributions.shape
    n = int(np.ceil(samples / segment))
    padded = np.zeros((leads, n * segment), dtype=np.float64)
    padded[:, :samples] = attributions
    segments = padded.reshape(leads, n, segment).sum(axis=2).astype(np.float32)
    mask = np.ones(leads, dtype=bool) if lead_mask is None else np.asarray(lead_mask, dtype=bool).reshape(-1)
    return {"segments": segments, "segment_seconds": segment / sampling_rate, "lead_names": list(lead_names),
            "lead_totals": {name: float(segments[i].sum()) for i, name in enumerate(lead_names)},
            "lead_mask": mask.tolist()}


def attribute_zero_shot(model, ecg_values: torch.Tensor, text_feats: torch.Tensor, target: int,
                        multi_label: bool = False, n_steps: int = 32, segment_seconds: float = 0.5,
                        sampling_rate: float = 500.0, lead_names: Sequence[str] = None, lead_mask=None) -> dict:
    """Where the model looked for the zero-shot score of label `target` (the score the pipeline reports:
    softmax over the labels, or the sigmoid with `multi_label`): integrated gradients over leads and time.

    Returns summarize_attributions' dict plus "target", "score", "attributions" [leads, samples],
    "convergence_delta", "ecg_values" [leads, samples] (the conditioned input) and "sampling_rate"."""
    text_feats = text_feats.detach()

    def score_fn(x):
        return label_scores(zero_shot_logits(model, model.get_ecg_features(x).pooler_output, text_feats), multi_label)

    return _explanation(model, score_fn, ecg_values, target, n_steps, segment_seconds, sampling_rate, lead_names,
                        lead_mask)


def attribute_classifier(model, ecg_values: torch.Tensor, target: int, n_steps: int = 32,
                         segment_seconds: float = 0.5, sampling_rate: float = 500.0, lead_names=None,
                         lead_mask=None, multi_label: bool = True) -> dict:
    """As `attribute_zero_shot`, for a fine-tuned `DBetaForECGClassification`: class `target`'s sigmoid (or
    softmax with `multi_label=False`) probability."""

    def score_fn(x):
        logits = model(ecg_values=x).logits
        return torch.sigmoid(logits) if multi_label else logits.softmax(-1)

    return _explanation(model, score_fn, ecg_values, target, n_steps, segment_seconds, sampling_rate, lead_names,
                        lead_mask)


def _explanation(model, score_fn, ecg_values, target, n_steps, segment_seconds, sampling_rate, lead_names,
                 lead_mask) -> dict:
    with eval_mode(model):
        with torch.no_grad():
            score = float(score_fn(ecg_values)[0, int(target)])
        attributions, delta = integrated_gradients(score_fn, ecg_values, target, n_steps)
    names = list(lead_names) if lead_names is not None else [str(i) for i in range(attributions.shape[0])]
    out = summarize_attributions(attributions, sampling_rate, segment_seconds, names, lead_mask)
    out.update({"target": int(target), "score": score, "attributions": attributions, "convergence_delta": delta,
                "ecg_values": ecg_values[0].detach().cpu().numpy(), "sampling_rate": float(sampling_rate)})
    return out
