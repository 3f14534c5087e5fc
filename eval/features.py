"""D-BETA features for whole datasets: model + processor loading, ECG features through DataLoader workers, text
features for prompts or reports. Used by eval.zero_shot and eval.retrieval; generic enough for any script.

    from eval.features import load_model_and_processor, dataset_ecg_features, text_features
    model, processor = load_model_and_processor("path/or/repo")
    ecg = dataset_ecg_features(model, processor, ds, batch_size=32, num_workers=2)   # float32 [n, hidden]
    txt = text_features(model, processor, ["atrial fibrillation. ..."])               # float32 [m, hidden]

Every record goes through the model's own processor (`DBetaFeatureExtractor.condition`: lead order, NaN repair,
resampling, crop/pad, amplitude policy). Where the dataset names a protocol length (`protocol_num_samples`,
CPSC2018: 2500 samples at the processor's rate) the record is cut to that duration first, and the processor then
zero-pads it to the model length (the MERL protocol).

A record that cannot be read or conditioned raises `RecordError` naming the record and its file, in the main
process (not wrapped in a DataLoader-worker traceback); with `on_error="skip"` it is left out instead and
reported in the returned `failures`. Skipping is refused (RecordError) when it would leave nothing to
evaluate: every record failed, or a class that had both positive and negative records has lost all of one kind
(its AUROC would silently vanish from the macro).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


from dbeta.pipeline_dbeta import text_features as _text_features
from dbeta.processing_dbeta import resolve_leads, standard_lead_name


__all__ = [
    "RecordError",
    "load_model_and_processor",
    "check_json_files",
    "load_processor",
    "ProcessedRecords",
    "check_skipped_records",
    "condition_item",
    "scan_records",
    "dataset_ecg_features",
    "text_features",
    "processor_settings",
]


class RecordError(ValueError):
    """A record could not be read or conditioned; the message names it."""


def _register_local_config() -> None:
    """Let Auto* classes read a D-BETA config.json with this repository's classes (no remote-code prompt)."""
    from transformers import AutoConfig

    from dbeta.configuration_dbeta import DBetaConfig

    try:
        AutoConfig.register("dbeta", DBetaConfig)
    except ValueError:  # already registered
        pass


MODEL_FOLDER_JSON = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json")


def check_json_files(folder) -> None:
    """ValueError naming the first of a model or tokenizer folder's JSON files that does not read: transformers'
    loaders report a damaged one as missing ("no processor found"), or raise a bare JSONDecodeError."""
    for name in MODEL_FOLDER_JSON:
        path = Path(folder) / name
        if path.is_file():
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from None


def load_processor(name_or_path: str):
    """The model's DBetaProcessor (feature extractor + tokenizer) from its folder or Hub repo, built with this
    repository's classes: no code from the model folder is run."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from dbeta.processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    check_json_files(name_or_path)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer peeks at the (remote-code) model config; no code is run
    try:
        feature_extractor = DBetaFeatureExtractor.from_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{name_or_path}: no D-BETA processor (processor_config.json + tokenizer files) found "
            f"({type(err).__name__}: {err}); export the model with train.export.export_model(..., processor=...)"
        ) from err
    finally:
        hf_logging.set_verbosity(level)
    return DBetaProcessor(feature_extractor, tokenizer)


def load_model_and_processor(name_or_path: str, remote_code: bool = False, dtype: torch.dtype = torch.float32,
                             device: str = "cpu") -> Tuple[torch.nn.Module, object]:
    """(DBetaModel in eval mode, DBetaProcessor) from a model folder or Hub repo id.

    By default the classes of this repository are used (no code from the model folder is run); with
    `remote_code=True` the folder's own code is loaded with `trust_remote_code=True`, as the pipeline does."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if remote_code:
            from transformers import AutoModel, AutoProcessor

            model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
            processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
        else:
            from dbeta.modeling_dbeta import DBetaModel

            _register_local_config()
            model = DBetaModel.from_pretrained(name_or_path, dtype=dtype)
            processor = load_processor(name_or_path)
    finally:
        hf_logging.set_verbosity(level)
    processor.feature_extractor.check_model_input(model.config.ecg_config, str(name_or_path))
    model.to(device).eval()
    model.requires_grad_(False)
    return model, processor


def processor_settings(feature_extractor) -> dict:
    """The feature extractor's settings that change its output (for reports)."""
    fe = feature_extractor
    return {"sampling_rate": fe.sampling_rate, "num_samples": fe.num_samples, "lead_names": list(fe.lead_names),
            "normalization": fe.normalization, "crop": fe.crop, "nan_policy": fe.nan_policy,
            "min_duration": fe.min_duration, "keep_samples": getattr(fe, "keep_samples", None)}


def condition_item(feature_extractor, item: dict, protocol_num_samples: Optional[int] = None,
                   leads=None) -> np.ndarray:
    """A dataset item {signal, sampling_rate, lead_names, record_id} -> model input [leads, num_samples].

    `leads` (a list of lead names or a processing_dbeta.LEAD_SUBSETS name) keeps only those leads; the others are
    zero (the processor's lead-subset handling). A record lacking a lead in use is a ValueError naming it: zeroed,
    it would be scored as a record with a flat lead (the pipeline warns; a benchmark figure would not say)."""
    signal = item["signal"]
    rate = float(item["sampling_rate"])
    if protocol_num_samples:
        keep = int(round(protocol_num_samples * rate / feature_extractor.sampling_rate))
        signal = signal[:, :keep]
    where = f"record {item.get('record_id', '?')}"
    x = feature_extractor.condition(signal, rate, item.get("lead_names"), leads=leads, where=where)
    wanted = set(resolve_leads(leads)) if leads is not None else set(feature_extractor.lead_names)
    # lacking by name: a recorded lead that is flat (lead-off) is a zero row of the benchmark's record, scored
    names = item.get("lead_names")
    named = set(feature_extractor.lead_names) if names is None else _standard_names(names)
    lacking = [lead for lead in feature_extractor.lead_names if lead in wanted and lead not in named]
    if lacking:
        has = ", ".join(str(name) for name in item.get("lead_names") or [])
        raise ValueError(f"{where}: lacks lead(s) {', '.join(lacking)} (it has {has}); every lead in use must be "
                         "recorded, since a zeroed lead would pass for a flat one")
    return x


def _standard_names(lead_names) -> set:
    """The standard leads a record's lead names name (known extra leads and other names left out)."""
    return {lead for lead in map(standard_lead_name, lead_names) if lead is not None}


class ProcessedRecords(torch.utils.data.Dataset):
    """A dataset's records conditioned by the feature extractor (in DataLoader workers).

    Items: {"ecg_values": float32 [leads, samples], "index": int, "error": str}. A failing record yields zeros
    and a non-empty `error` (naming the record and file), so the caller decides to raise or skip."""

    def __init__(self, dataset, feature_extractor, protocol_num_samples: Optional[int] = None, leads=None):
        self.dataset = dataset
        self.feature_extractor = feature_extractor
        self.protocol_num_samples = protocol_num_samples
        self.leads = leads

    def __len__(self) -> int:
        return len(self.dataset)

    def _where(self, index: int) -> Tuple[str, str]:
        """(record id, file) of item `index`, for error messages."""
        rid = record_id(self.dataset, index)
        try:
            source = self.dataset._source(index) if hasattr(self.dataset, "_source") else ""
        except Exception:
            source = ""
        return str(rid), str(source)

    def __getitem__(self, index: int) -> dict:
        fe = self.feature_extractor
        error = ""
        try:
            x = condition_item(fe, self.dataset[int(index)], self.protocol_num_samples, self.leads)
        except Exception as err:  # reported (raised or skipped) by the caller, in the main process
            x = np.zeros((len(fe.lead_names), fe.num_samples), dtype=np.float32)
            rid, source = self._where(int(index))
            message = f"{type(err).__name__}: {err}"
            error = message if source and source in message else f"record {rid}" + (
                f" ({source})" if source else "") + f": {message}"
        return {"ecg_values": torch.from_numpy(np.ascontiguousarray(x)), "index": int(index), "error": error}


def _index_and_error(items: list) -> list:
    """DataLoader collate for `scan_records`: the conditioned signals are not needed, only whether each worked."""
    return [(item["index"], item["error"]) for item in items]


def scan_records(dataset, feature_extractor, protocol_num_samples: Optional[int] = None, num_workers: int = 0,
                 progress: bool = True, desc: str = "checking records", batch_size: int = 32) -> Tuple[list, list]:
    """Read and condition every record of `dataset` once, without a model, so a long run learns of a bad record
    before its first step. Returns (kept indices, failures [{"index", "error"}]) in item order."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        ProcessedRecords(dataset, feature_extractor, protocol_num_samples), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=_index_and_error)
    kept: List[int] = []
    failures: List[dict] = []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        for index, error in batch:
            if error:
                failures.append({"index": int(index), "error": error})
            else:
                kept.append(int(index))
    return kept, failures


def record_id(dataset, index: int) -> str:
    """The id of item `index` of a downstream dataset, through any torch `Subset`s of it (the item's position
    where the dataset names no records)."""
    index = int(index)
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    ids = getattr(dataset, "record_ids", None)
    return str(ids[index]) if ids is not None else str(index)


def protocol_num_samples_arg(text: str):
    """argparse type of `--protocol-num-samples`: "auto", "none" or a whole number >= 1, refused at parsing
    (not after the model and data are loaded)."""
    if text.lower() in ("auto", "none"):
        return text.lower()
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a whole number of samples >= 1, got {text!r}")
    return int(text)


def resolve_protocol_num_samples(dataset, value="auto", feature_extractor=None) -> Optional[int]:
    """"auto" -> the dataset's `protocol_num_samples` (or None); None/"none" -> None; an int -> that int. With the
    `feature_extractor` of a model fine-tuned on a cut (`keep_samples`), that cut bounds the length: "auto" gives
    the shorter of the two, and an explicit longer length (or none) is refused, since the processor would cut every
    record to `keep_samples` whatever the run says."""
    if value is None or str(value).lower() == "none":
        n = None
    elif str(value).lower() == "auto":
        n = getattr(dataset, "protocol_num_samples", None)
        n = int(n) if n else None
    else:
        n = int(value)
        if n <= 0:
            raise ValueError(f"protocol_num_samples must be positive, got {n}")
    keep = getattr(feature_extractor, "keep_samples", None)
    if keep is None or (n is not None and n <= keep):
        return n
    if str(value).lower() != "auto":
        raise ValueError(f"protocol_num_samples={value}: this model's processor reads only the first {keep} samples "
                         "of a record (keep_samples, the cut it was fine-tuned on); give at most that, or auto")
    return keep


def check_skipped_records(dataset, kept: Sequence[int], failures: Sequence[dict]) -> None:
    """Raise RecordError when skipping `failures` left no record of `dataset`, or turned a class that had both
    a positive and a negative record into one without (labelled datasets: `labels_matrix()`)."""
    if not failures:
        return
    name = " ".join(str(v) for v in (getattr(dataset, "name", ""), getattr(dataset, "task", None),
                                     getattr(dataset, "split", None)) if v) or type(dataset).__name__
    where = f"{name} at {dataset.root}" if getattr(dataset, "root", None) is not None else name
    first = failures[0]["error"]
    if len(kept) == 0:
        raise RecordError(f"{where}: all {len(failures)} record(s) failed and were skipped (--on-error skip); "
                          f"nothing is left to evaluate. First error: {first}")
    if not hasattr(dataset, "labels_matrix"):
        return
    labels = np.asarray(dataset.labels_matrix()) > 0.5
    if labels.ndim != 2 or not labels.size:
        return
    before = labels.sum(axis=0)
    after = labels[np.asarray(kept, dtype=np.int64)].sum(axis=0)
    n_kept = len(kept)
    lost = [(j, "positive" if after[j] == 0 else "negative") for j in range(labels.shape[1])
            if 0 < before[j] < len(labels) and not 0 < after[j] < n_kept]
    if lost:
        names = getattr(dataset, "class_names", None) or [str(j) for j in range(labels.shape[1])]
        raise RecordError(
            f"{where}: skipping {len(failures)} unreadable record(s) of {len(labels)} leaves "
            + ", ".join(f"{names[j]} without a {kind} record" for j, kind in lost)
            + f"; its AUROC would drop out of the macro unnoticed. Fix or remove those records. First error: {first}"
        )


@torch.no_grad()
def dataset_ecg_features(model, processor, dataset, batch_size: int = 32, num_workers: int = 0,
                         protocol_num_samples="auto", on_error: str = "raise", progress: bool = True,
                         desc: str = "ECG features", return_failures: bool = False, leads=None):
    """`get_ecg_features` of every record of `dataset` (items as in eval.datasets), in order; `leads` restricts
    every record to a lead subset (condition_item).

    Returns float32 [n, hidden]; with `return_failures=True`, (features, kept_indices, failures) where failures
    is a list of {"index", "error"} (only non-empty with on_error="skip"). With on_error="skip", skips that
    leave nothing to evaluate raise RecordError (check_skipped_records)."""
    from tqdm.auto import tqdm

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    fe = processor.feature_extractor if hasattr(processor, "feature_extractor") else processor
    pns = resolve_protocol_num_samples(dataset, protocol_num_samples, fe)
    loader = torch.utils.data.DataLoader(
        ProcessedRecords(dataset, fe, pns, leads), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        persistent_workers=False,
    )
    device = next(model.parameters()).device
    feats: List[np.ndarray] = []
    kept: List[int] = []
    failures: List[dict] = []
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            errors = list(batch["error"])
            ok = [i for i, e in enumerate(errors) if not e]
            for i, e in enumerate(errors):
                if e:
                    if on_error == "raise":
                        raise RecordError(e)
                    failures.append({"index": int(batch["index"][i]), "error": e})
            if not ok:
                continue
            x = batch["ecg_values"][ok].to(device)
            feats.append(model.get_ecg_features(x).pooler_output.float().cpu().numpy())
            kept.extend(int(batch["index"][i]) for i in ok)
    finally:
        model.train(was_training)
    check_skipped_records(dataset, kept, failures)
    hidden = model.config.hidden_size
    out = np.concatenate(feats) if feats else np.zeros((0, hidden), dtype=np.float32)
    if return_failures:
        return out, np.asarray(kept, dtype=np.int64), failures
    return out


def text_features(model, processor, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """`get_text_features` of `texts` (cleaned and tokenized by the processor): float32 [len(texts), hidden]."""
    was_training = model.training
    model.eval()
    try:
        return _text_features(model, processor, list(texts), batch_size).float().cpu().numpy()
    finally:
        model.train(was_training)
