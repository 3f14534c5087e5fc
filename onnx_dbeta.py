"""D-BETA features on ONNX Runtime: the ECG and text encoders written by `python -m train.export_onnx`.

    from onnx_dbeta import DBetaOnnxModel
    model = DBetaOnnxModel.from_pretrained("dbeta-onnx")              # int8=True: the int8 ECG graph
    processor = AutoProcessor.from_pretrained("dbeta-onnx", trust_remote_code=True)
    batch = processor(ecg=signal, sampling_rate=500, text=["atrial fibrillation"])
    logits = model.similarity(model.get_ecg_features(batch["ecg_values"]).pooler_output,
                              model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output)

`get_ecg_features`, `get_text_features` and `similarity` take and return what `DBetaModel`'s do (torch tensors;
numpy arrays are accepted), so code written against the torch model (the zero-shot pipeline included) runs on the
graphs. The folder's `onnx_config.json` names each graph with its SHA-256; a graph that is missing, was replaced
or does not have the inputs and outputs recorded there is refused at load, naming the file.

This file is remote code: at module level it imports only torch, transformers, numpy and the standard library;
onnxruntime is imported when a model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_dbeta import DBetaConfig
from .modeling_dbeta import DBetaOutput

MANIFEST = "onnx_config.json"
FORMAT = "dbeta-onnx"
FORMAT_VERSION = 1
# What each graph must take and give; the manifest records the file names and hashes.
GRAPH_IO = {
    "ecg": (["ecg_values"], "ecg_features"),
    "text": (["input_ids", "attention_mask"], "text_features"),
    "ecg_int8": (["ecg_values"], "ecg_features"),
}

__all__ = ["DBetaOnnxModel", "OnnxFolderError", "file_sha256"]


class OnnxFolderError(ValueError):
    """An ONNX folder that cannot be used as it is: the message names the file and what was expected."""


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _as_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


class DBetaOnnxModel:
    """ECG and text features and their similarity logits from ONNX Runtime sessions (CPU).

    Build it with `from_pretrained(folder)`. It mirrors the inference surface of `DBetaModel`: `config`,
    `device` (cpu), `eval()`, `get_ecg_features`, `get_text_features`, `similarity`, and calling it with
    `ecg_values` / `input_ids` / `attention_mask` gives `logits_per_ecg` and the embeddings."""

    main_input_name = "ecg_values"
    input_modalities = ("ecg", "text")
    training = False

    def __init__(self, config: DBetaConfig, manifest: dict, sessions: dict, name_or_path: str = ""):
        self.config = config
        self.manifest = manifest
        self.sessions = sessions
        self.name_or_path = name_or_path
        self.int8 = "ecg_int8" in sessions
        self._ecg = sessions["ecg_int8"] if self.int8 else sessions["ecg"]
        self._text = sessions["text"]
        if manifest.get("ets_mode", "fixed") == "learnable":
            self._scale = torch.tensor(manifest["logit_scale"], dtype=torch.float32).exp()
            self._bias = torch.tensor(manifest["logit_bias"], dtype=torch.float32)

    # -- loading --------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: Union[str, os.PathLike], int8: bool = False, num_threads: Optional[int] = None,
                        session_options=None, providers=None, verify_hashes: bool = True) -> "DBetaOnnxModel":
        """Open the graphs in `folder` (written by `train.export_onnx`). `int8=True` runs ECGs through
        `ecg_encoder.int8.onnx`. `num_threads` sets ONNX Runtime's intra-op threads (default: its own choice).
        `verify_hashes=False` skips hashing the graphs against the manifest (faster start, no replacement check)."""
        try:
            import onnxruntime as ort
        except ImportError as err:  # optional dependency of the ONNX path only
            raise ImportError("DBetaOnnxModel needs onnxruntime: pip install onnxruntime") from err

        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        config = DBetaConfig.from_pretrained(str(folder))
        kinds = ["ecg_int8" if int8 else "ecg", "text"]
        if session_options is None:
            session_options = ort.SessionOptions()
            if num_threads:
                session_options.intra_op_num_threads = int(num_threads)
        sessions = {}
        for kind in kinds:
            path = cls._graph_path(folder, manifest, kind, verify_hashes)
            try:
                session = ort.InferenceSession(str(path), session_options,
                                               providers=providers or ["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime raises its own exception types
                raise OnnxFolderError(f"{path}: ONNX Runtime cannot load this graph: {err}") from err
            cls._check_io(path, session, kind, manifest)
            sessions[kind] = session
        return cls(config, manifest, sessions, name_or_path=str(folder))

    @staticmethod
    def read_manifest(folder: Path) -> dict:
        path = folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not an ONNX folder written by "
                                    f"`python -m train.export_onnx --model DIR --output {folder}`")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise OnnxFolderError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(manifest, dict):
            raise OnnxFolderError(f"{path}: expected a JSON object, got a {type(manifest).__name__}")
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise OnnxFolderError(f"{path}: expected format {FORMAT!r} version {FORMAT_VERSION}, got "
                                  f"{manifest.get('format')!r} version {manifest.get('format_version')!r}")
        problems = [f"{key} must be a positive integer" for key in ("hidden_size", "num_leads", "num_samples")
                    if not (isinstance(manifest.get(key), int) and not isinstance(manifest.get(key), bool)
                            and manifest[key] > 0)]
        graphs = manifest.get("graphs")
        if not isinstance(graphs, dict):
            problems.append("graphs must be an object of {kind: {file, sha256}}")
        else:
            problems += [f"graphs.{kind} must have a string file and sha256" for kind, entry in graphs.items()
                         if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str)
                                                                 for k in ("file", "sha256")))]
        if problems:
            raise OnnxFolderError(f"{path}: damaged or edited: {'; '.join(problems)}; re-run train.export_onnx")
        return manifest

    @staticmethod
    def _graph_path(folder: Path, manifest: dict, kind: str, verify_hashes: bool) -> Path:
        entry = manifest.get("graphs", {}).get(kind)
        if entry is None:
            hint = " (export with --int8)" if kind == "ecg_int8" else ""
            raise FileNotFoundError(f"{folder / MANIFEST} lists no {kind} graph{hint}")
        name = entry["file"]
        if Path(name).name != name:  # the manifest names files inside the folder, nothing else
            raise OnnxFolderError(f"{folder / MANIFEST}: graph file {name!r} must be a plain file name")
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (listed as the {kind} graph in {folder / MANIFEST})")
        if verify_hashes and file_sha256(path) != entry["sha256"]:
            raise OnnxFolderError(f"{path} is not the graph this folder's {MANIFEST} was written with (SHA-256 "
                                  f"differs): it was replaced or damaged; re-run train.export_onnx")
        return path

    @staticmethod
    def _check_io(path: Path, session, kind: str, manifest: dict) -> None:
        inputs, output = GRAPH_IO[kind]
        got_in = [i.name for i in session.get_inputs()]
        got_out = [o.name for o in session.get_outputs()]
        if got_in != inputs or got_out != [output]:
            raise OnnxFolderError(f"{path}: expected inputs {inputs} and output [{output!r}], got {got_in} -> "
                                  f"{got_out}")
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != manifest["hidden_size"]:
            raise OnnxFolderError(f"{path}: gives {width}-d features, {MANIFEST} says hidden_size "
                                  f"{manifest['hidden_size']}")
        if kind != "text":
            shape = session.get_inputs()[0].shape
            expected = [manifest["num_leads"], manifest["num_samples"]]
            if list(shape[1:]) != expected:
                raise OnnxFolderError(f"{path}: takes ecg_values {shape}, {MANIFEST} says [batch, {expected[0]}, "
                                      f"{expected[1]}]")

    # -- the DBetaModel surface -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, *args, device=None, dtype=None, non_blocking: bool = False) -> "DBetaOnnxModel":
        """As torch's `Module.to` (device and/or dtype, positional or by name), for code written for the torch
        model; anything but the CPU and float32 is refused rather than ignored."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"DBetaOnnxModel runs on the CPU through ONNX Runtime; cannot move it to {device}")
        if dtype is not None and dtype != torch.float32:
            raise ValueError(f"DBetaOnnxModel computes in float32 (int8 ECG graph: from_pretrained(..., int8=True)); "
                             f"cannot cast it to {dtype}")
        return self

    def eval(self) -> "DBetaOnnxModel":
        return self

    def train(self, mode: bool = True) -> "DBetaOnnxModel":
        if mode:
            raise ValueError("DBetaOnnxModel is inference only; train the torch model and export it again")
        return self

    def parameters(self):
        return iter(())

    def can_generate(self) -> bool:
        return False

    def get_ecg_features(self, ecg_values) -> BaseModelOutputWithPooling:
        """`.pooler_output`: the ECG feature [B, hidden] for `ecg_values` [B, leads, samples] (the processor's
        output), as DBetaModel returns it."""
        x = _as_numpy(ecg_values, np.float32)
        expected = (self.manifest["num_leads"], self.manifest["num_samples"])
        if x.ndim != 3 or x.shape[1:] != expected:
            raise ValueError(f"ecg_values must be [batch, {expected[0]}, {expected[1]}] (the processor's "
                             f"output), got {tuple(x.shape)}")
        return BaseModelOutputWithPooling(pooler_output=torch.from_numpy(self._ecg.run(None, {"ecg_values": x})[0]))

    def get_text_features(self, input_ids, attention_mask=None) -> BaseModelOutputWithPooling:
        """`.pooler_output`: the text feature [B, hidden] for token ids and their mask (all ones when omitted)."""
        ids = _as_numpy(input_ids, np.int64)
        mask = np.ones_like(ids) if attention_mask is None else _as_numpy(attention_mask, np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [batch, length], got {ids.shape} and "
                             f"{mask.shape}")
        features = self._text.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return BaseModelOutputWithPooling(pooler_output=torch.from_numpy(features))

    def similarity(self, ecg_embeds, text_embeds) -> torch.Tensor:
        """ECG x text logits as `DBetaModel.similarity`: dot product, or SigLIP's scaled cosine + bias."""
        ecg = torch.as_tensor(ecg_embeds, dtype=torch.float32)
        text = torch.as_tensor(text_embeds, dtype=torch.float32)
        if self.manifest.get("ets_mode", "fixed") == "learnable":
            ecg = torch.nn.functional.normalize(ecg, dim=-1)
            text = torch.nn.functional.normalize(text, dim=-1)
            return ecg @ text.t() * self._scale + self._bias
        return ecg @ text.t()

    def __call__(self, ecg_values=None, input_ids=None, attention_mask=None, return_loss=None,
                 output_attentions=None, output_hidden_states=None, return_dict=None) -> DBetaOutput:
        """DBetaModel's forward on the graphs: a processor's batch in, the embeddings and logits out, as the torch
        model's `DBetaOutput` (`out.logits_per_ecg` or `out["logits_per_ecg"]`). The graphs give no loss,
        attentions or hidden states: asking for them is an error, as is any other keyword."""
        asked = [name for name, value in (("return_loss", return_loss), ("output_attentions", output_attentions),
                                          ("output_hidden_states", output_hidden_states)) if value]
        if asked or return_dict is False:
            raise ValueError(f"DBetaOnnxModel returns the embeddings and logits only; the graphs cannot "
                             f"give {', '.join(asked) or 'return_dict=False'}: use the torch model")
        out = {}
        if ecg_values is not None:
            out["ecg_embeds"] = self.get_ecg_features(ecg_values).pooler_output
        if input_ids is not None:
            out["text_embeds"] = self.get_text_features(input_ids, attention_mask).pooler_output
        if "ecg_embeds" in out and "text_embeds" in out:
            out["logits_per_ecg"] = self.similarity(out["ecg_embeds"], out["text_embeds"])
            out["logits_per_text"] = out["logits_per_ecg"].t()
        return DBetaOutput(**out)
