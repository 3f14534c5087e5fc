"""Export a D-BETA model's ECG and text encoders to ONNX, checked against torch through ONNX Runtime.

    python -m train.export_onnx --model DIR --output OUT [--int8] [--tolerance 1e-4]

Writes to OUT:
  * ecg_encoder.onnx       ecg_values [batch, leads, samples] float32 -> ecg_features [batch, hidden]
  * text_encoder.onnx      input_ids, attention_mask [batch, length] int64 -> text_features [batch, hidden]
  * ecg_encoder.int8.onnx  (--int8) the ECG graph for serving: attention, LayerNorm and GELU fused by ONNX
                           Runtime's transformer optimizer, then the positional conv quantized statically (int8,
                           calibrated on synthetic ECGs) and the MatMuls and fused attention dynamically
  * onnx_config.json       each graph's file name and SHA-256, the similarity mode and its constants, and the
                           parity measured at export
  * the model folder's config, processor, prompts and remote code (not its weights), and onnx_dbeta.py, so
    `onnx_dbeta.DBetaOnnxModel.from_pretrained(OUT)` and `AutoProcessor.from_pretrained(OUT)` both load it.

Graphs come from `torch.onnx.export` (the torch.export-based exporter) with a dynamic batch axis (and a dynamic
length for text). Every fp32 graph is run through ONNX Runtime on synthetic ECGs and report texts at batch 1 and
batch 4 and compared with the torch model; a difference above the tolerance stops the export (exit 2) and no
onnx_config.json is written, so a wrong graph is never served. The int8 graph's minimum cosine similarity to the
torch features on the same inputs is recorded (int8 changes the numbers by design; see README).

The int8 graph starts from a second fp32 export made for the optimizer: its attention fusion matches the
MatMul/Softmax pattern of eager attention as the TorchScript exporter writes it (the torch.export graph decomposes
SDPA with the scale split over q and k, and the optimizer's symbolic shape inference fails on it, so nothing
fuses there). That fused fp32 graph is checked against torch with the same tolerance before it is quantized.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch


from dbeta.modeling_dbeta import DBetaModel
from dbeta.onnx_dbeta import FORMAT, FORMAT_VERSION, MANIFEST, DBetaOnnxModel, file_sha256
from dbeta.processing_dbeta import DBetaProcessor
from train.export import ExportTargetError, check_export_target, is_export_file
from train.folders import published_folder
from train.synthetic import DEFAULT_CLASSES, generate_ecg

ROOT = Path(__file__).resolve().parents[1]

ECG_FILE, TEXT_FILE, ECG_INT8_FILE = "ecg_encoder.onnx", "text_encoder.onnx", "ecg_encoder.int8.onnx"
# The optimizer's CLIP fusions: its attention fusion takes self-attention without a mask, which BERT's requires.
OPTIMIZER_MODEL_TYPE = "clip"
# The weights stay behind: the graphs hold them.
SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx.data")
# What the graphs do not compute: left out of the source weights' fingerprint, so a DBetaModel and a pretraining
# model of the same weights fingerprint alike.
NOT_IN_GRAPHS = ("mem_head.", "mlm_head.", "etm_head.", "fusion.", "fused_", "modality_type_embeddings.",
                 "classifier.")


def source_fingerprint(model) -> str:
    """The fingerprint of the weights an ONNX folder's graphs were made from (recorded in its manifest as
    `source_weights`), for checking that a folder is the ONNX form of a given model and not an older one."""
    from eval.linear_probe import weights_fingerprint

    return weights_fingerprint(model, skip_prefixes=NOT_IN_GRAPHS)
SAMPLE_TEXTS = [
    "sinus rhythm. normal ecg.",
    "atrial fibrillation with rapid ventricular response. abnormal ecg.",
    "left bundle branch block",
    "sinus bradycardia. first degree av block. nonspecific st-t changes. borderline ecg.",
]


class ParityError(RuntimeError):
    """An exported graph whose outputs differ from torch's by more than the tolerance."""


class _ECGFeatures(torch.nn.Module):
    def __init__(self, model: DBetaModel):
        super().__init__()
        self.model = model

    def forward(self, ecg_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_ecg_features(ecg_values).pooler_output


class _TextFeatures(torch.nn.Module):
    def __init__(self, model: DBetaModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids, attention_mask).pooler_output


def sample_inputs(processor: DBetaProcessor, n: int = 4, seed: int = 0) -> dict:
    """Processor outputs for `n` synthetic ECGs (different classes) and report texts: what parity is checked on."""
    rng = np.random.default_rng(seed)
    fs = processor.feature_extractor.sampling_rate
    ecgs = [generate_ecg(DEFAULT_CLASSES[i % len(DEFAULT_CLASSES)], rng, sampling_rate=fs) for i in range(n)]
    return dict(processor(ecg=ecgs, sampling_rate=fs, text=[SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(n)]))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_diff(session, feeds: dict, expected: torch.Tensor) -> float:
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    return float(np.abs(got - expected.numpy()).max())


def _min_cosine(session, feeds: dict, expected: torch.Tensor) -> float:
    got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])
    return float(torch.nn.functional.cosine_similarity(got, expected, dim=-1).min())


def _check_parity(path: Path, feeds: dict, expected: torch.Tensor, tolerance: float) -> float:
    """Max |ONNX Runtime - torch| over the whole sample batch and its first record alone (the batch axis is
    dynamic); ParityError above `tolerance`."""
    session = _session(path)
    diff = max(_max_diff(session, feeds, expected), _max_diff(session, {k: v[:1] for k, v in feeds.items()},
                                                              expected[:1]))
    if not diff <= tolerance:
        raise ParityError(f"{path}: ONNX Runtime output differs from torch by {diff:.3g} (tolerance "
                          f"{tolerance:g}); the export is not usable")
    return diff


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: list, output_name: str,
            dynamic: dict) -> None:
    torch.onnx.export(module.eval(), args, str(path), input_names=input_names, output_names=[output_name],
                      dynamic_shapes=dynamic, dynamo=True, external_data=False, verbose=False)


def _export_fused_ecg(model: DBetaModel, ecg: torch.Tensor, path: Path) -> dict:
    """Write the ECG graph with ONNX Runtime's transformer fusions to `path`; returns the fused-op counts."""
    import warnings

    from onnxruntime.transformers.optimizer import optimize_model

    config = model.config.ecg_config
    attn = config._attn_implementation
    config._attn_implementation = "eager"
    raw = path.with_suffix(".raw.onnx")
    try:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of dynamo=True
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
            torch.onnx.export(_ECGFeatures(model).eval(), (ecg,), str(raw), input_names=["ecg_values"],
                              output_names=["ecg_features"], opset_version=17, dynamo=False,
                              dynamic_axes={"ecg_values": {0: "batch"}, "ecg_features": {0: "batch"}})
    finally:
        config._attn_implementation = attn
    fused = optimize_model(str(raw), model_type=OPTIMIZER_MODEL_TYPE, num_heads=config.num_attention_heads,
                           hidden_size=config.hidden_size, opt_level=0)
    fused.save_model_to_file(str(path))
    raw.unlink()
    return {op: n for op, n in fused.get_fused_operator_statistics().items() if n}


def _quantize_ecg(fused: Path, out: Path, calibration: torch.Tensor) -> None:
    """int8 ECG graph: the positional conv static (its activation range from `calibration`; ConvInteger, the
    dynamic form, is slower than fp32 there), then the MatMuls and fused attention dynamic (per-call activation
    ranges; weights only, MatMulConstBOnly). The strided feature-extractor convs stay fp32."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"ecg_values": x[None].numpy()} for x in calibration)

        def get_next(self):
            return next(self.batches, None)

    graph = onnx.load(str(fused), load_external_data=False).graph
    pos_conv = [n.name for n in graph.node if n.op_type == "Conv" and "pos_conv" in n.name]
    if len(pos_conv) != 1:
        raise RuntimeError(f"{fused}: expected one positional conv node (name containing 'pos_conv'), found {pos_conv}")
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # types the fused contrib ops leave uninferred
    static = out.with_suffix(".static.onnx")
    try:
        quantize_static(str(fused), str(static), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        nodes_to_quantize=pos_conv, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options=options)
        quantize_dynamic(str(static), str(out), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Attention"], extra_options=dict(options, MatMulConstBOnly=True))
    finally:
        static.unlink(missing_ok=True)


def export_onnx(model_dir, output, int8: bool = False, tolerance: float = 1e-4, model: Optional[DBetaModel] = None,
                processor: Optional[DBetaProcessor] = None) -> Path:
    """Write the graphs and manifest for the model in `model_dir` to `output`; returns `output`. A `model` given
    (instead of loading it from `model_dir`) is put in eval mode and float32 in place.

    `output` is refused (ExportTargetError) unless it is new, empty or an earlier export, and is written whole:
    built beside it and renamed into place. Raises ParityError when an fp32 graph differs from torch by more
    than `tolerance` on the sample inputs; nothing is published then (an earlier export in `output` stays)."""
    model_dir = Path(model_dir)
    final = check_export_target(output, protect=(model_dir,))
    with published_folder(final) as staging:
        staging.mkdir(parents=True)
        _write_folder(model_dir, staging, int8, tolerance, model, processor)
    return final


def _write_folder(model_dir: Path, out: Path, int8: bool, tolerance: float, model, processor) -> None:
    if model is None:
        model = DBetaModel.from_pretrained(str(model_dir), dtype=torch.float32)
    if processor is None:
        from eval.features import load_processor

        processor = load_processor(str(model_dir))  # this repository's classes: the folder's code is never run
    model = model.float().eval()

    feeds = sample_inputs(processor)
    ecg, ids, mask = feeds["ecg_values"].float(), feeds["input_ids"], feeds["attention_mask"]
    with torch.no_grad():
        ecg_ref = model.get_ecg_features(ecg).pooler_output
        text_ref = model.get_text_features(ids, mask).pooler_output

    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    parity = {}
    _export(_ECGFeatures(model), (ecg,), out / ECG_FILE, ["ecg_values"], "ecg_features", {"ecg_values": {0: batch}})
    parity["ecg_max_abs_diff"] = _check_parity(out / ECG_FILE, {"ecg_values": ecg}, ecg_ref, tolerance)
    # transformers' SDPA attention does not trace with a symbolic text length; eager attention computes the
    # same function and does (parity is checked against the SDPA model's features).
    text_model = model.text_model
    attn = text_model.config._attn_implementation
    text_model.set_attn_implementation("eager")
    try:
        _export(_TextFeatures(model), (ids, mask), out / TEXT_FILE, ["input_ids", "attention_mask"], "text_features",
                {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}})
    finally:
        text_model.set_attn_implementation(attn)
    parity["text_max_abs_diff"] = _check_parity(out / TEXT_FILE, {"input_ids": ids, "attention_mask": mask},
                                                text_ref, tolerance)

    graphs = {"ecg": ECG_FILE, "text": TEXT_FILE}
    if int8:
        fused = out / "ecg_encoder.fused.onnx"
        try:
            parity["ecg_int8_fused_ops"] = _export_fused_ecg(model, ecg, fused)
            parity["ecg_fused_max_abs_diff"] = _check_parity(fused, {"ecg_values": ecg}, ecg_ref, tolerance)
            calibration = sample_inputs(processor, n=8, seed=1)["ecg_values"].float()
            _quantize_ecg(fused, out / ECG_INT8_FILE, calibration)
        finally:
            fused.unlink(missing_ok=True)
        parity["ecg_int8_min_cosine"] = _min_cosine(_session(out / ECG_INT8_FILE), {"ecg_values": ecg}, ecg_ref)
        graphs["ecg_int8"] = ECG_INT8_FILE

    for src in model_dir.iterdir():  # what the model's export holds, not a download's .gitattributes or LICENSE
        if src.is_file() and not src.name.endswith(SKIPPED_SUFFIXES) and src.name != MANIFEST and is_export_file(src):
            shutil.copy2(src, out / src.name)
    shutil.copy2(ROOT / "onnx_dbeta.py", out / "onnx_dbeta.py")

    import onnxruntime

    config = model.config
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "graphs": {kind: {"file": name, "sha256": file_sha256(out / name)} for kind, name in graphs.items()},
        "num_leads": config.ecg_config.num_leads,
        "num_samples": int(ecg.shape[-1]),
        "hidden_size": config.hidden_size,
        "source_weights": source_fingerprint(model),
        "ets_mode": config.ets_mode,
        "logit_scale": model.logit_scale.item() if config.ets_mode == "learnable" else None,
        "logit_bias": model.logit_bias.item() if config.ets_mode == "learnable" else None,
        "parity": parity,
        "tolerance": tolerance,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    DBetaOnnxModel.from_pretrained(out, int8=int8)  # what a user will do next: fail here, not there


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported D-BETA folder (config.json, model.safetensors, "
                                                       "processor files)")
    parser.add_argument("--output", required=True, help="folder to write the graphs and onnx_config.json to")
    parser.add_argument("--int8", action="store_true", help="also write ecg_encoder.int8.onnx (dynamic int8)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |ONNX - torch| accepted (fp32 graphs)")
    args = parser.parse_args(argv)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(f"error: {model_dir / 'config.json'} not found: --model must be an exported D-BETA folder",
              file=sys.stderr)
        return 2
    try:
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError) as err:
        print(f"error: {model_dir / 'config.json'} is not a readable config ({err})", file=sys.stderr)
        return 2
    if "DBetaForECGClassification" in architectures:  # its encoder has no text tower to export
        print(f"error: {model_dir} is a fine-tuned classifier; the ONNX export holds the zero-shot model's ECG and "
              "text encoders: pass the pretrained export it was fine-tuned from", file=sys.stderr)
        return 2
    try:
        out = export_onnx(model_dir, args.output, int8=args.int8, tolerance=args.tolerance)
    except (ParityError, ExportTargetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = json.loads((out / MANIFEST).read_text())
    print(f"wrote {', '.join(g['file'] for g in manifest['graphs'].values())} to {out}; parity "
          f"{json.dumps(manifest['parity'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
