"""Where the model looked: integrated-gradients attribution (captum) of one zero-shot score over leads and time,
drawn on the 12-lead grid.

    python -m eval.explain --model M --record records500/00000/00001_hr --labels NORM AFIB SBRAD \
        [--label AFIB] --output where.png [--json where.json] [--segment-seconds 0.5] [--n-steps 32]

The explained label defaults to the top-scoring one. The attribution is against a low-amplitude noise record
(`pipeline_dbeta.attribution_baseline`, 0.05 mV on the leads the record has; absent leads stay zero): the
encoder's first GroupNorm makes it blind to scale, so from an all-zero ECG the gradients integrate to about 0.
Its sum over leads and time is the label's score minus the baseline's (`convergence_delta` is the gap left by the
numerical integral). From Python:
`pipe(record, candidate_labels=[...], explain=True)` (`ZeroShotECGClassificationPipeline.explain`), or
`pipeline_dbeta.attribute_classifier(model, ecg_values, target)` for a fine-tuned classifier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dbeta.processing_dbeta import NAN_POLICIES
from train.folders import write_text

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["explanation_json", "main"]


def explanation_json(result: dict) -> dict:
    """The pipeline's explain result as JSON-ready data (segment attributions as nested lists; the per-sample
    attributions and the signal left out)."""
    e = result["explanation"]
    return {
        "scores": result["scores"],
        "leads": result["leads"],
        "explanation": {
            "label": e["label"], "score": e["score"], "segment_seconds": e["segment_seconds"],
            "start_seconds": e.get("start_seconds"),
            "lead_names": e["lead_names"], "lead_mask": e["lead_mask"], "lead_totals": e["lead_totals"],
            "convergence_delta": e["convergence_delta"],
            "segments": np.round(np.asarray(e["segments"], dtype=np.float64), 8).tolist(),
        },
    }


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--record", required=True, help="WFDB record, DICOM file or .npy [leads, samples]")
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--label", default=None, help="the label to explain (default: the top one)")
    parser.add_argument("--leads", nargs="+", default=None,
                        help="a lead subset: lead names (I II) or limb, I+II, ... (others zeroed)")
    parser.add_argument("--sampling-rate", type=float, default=None, help="for a .npy array")
    parser.add_argument("--lead-names", nargs="+", default=None, help="for a .npy array")
    parser.add_argument("--nan-policy", choices=NAN_POLICIES, default=None,
                        help="NaN/inf samples: the processor's setting by default (interpolate); zero scores a lead "
                             "with no finite sample as absent")
    parser.add_argument("--segment-seconds", type=float, default=0.5)
    parser.add_argument("--n-steps", type=int, default=32, help="integration steps of integrated gradients")
    parser.add_argument("--output", type=Path, required=True, help="PNG: the ECG tinted by attribution")
    parser.add_argument("--json", type=Path, default=None, help="the scores and segment attributions")
    parser.add_argument("--remote-code", action="store_true", help="run the model folder's own code")
    args = parser.parse_args(argv)
    from eval.outputs import IMAGE_SUFFIXES, check_outputs, record_files
    from eval.plots import plot_attribution
    from eval.windows import leads_argument, load_pipeline, record_argument

    try:  # before the attribution runs: never on top of the record, the model or each other
        if args.output.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"--output {args.output} must be an image: {', '.join(IMAGE_SUFFIXES)}")
        if args.json is not None and args.json.suffix.lower() != ".json":
            raise ValueError(f"--json {args.json} must be a .json file")
        check_outputs({"--output": args.output, "--json": args.json}, reads=[args.model, *record_files(args.record)])
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")

    try:
        record = record_argument(args.record, args.sampling_rate, args.lead_names)
        pipe = load_pipeline(args.model, args.remote_code)
        result = pipe(record, candidate_labels=args.labels, explain=True, explain_label=args.label,
                      leads=leads_argument(args.leads), segment_seconds=args.segment_seconds, n_steps=args.n_steps,
                      nan_policy=args.nan_policy)
    except (ValueError, OSError, TypeError, ImportError) as err:
        parser.exit(2, f"error: {err}\n")
    plot_attribution(result["explanation"], args.output)
    data = explanation_json(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(data, indent=1))
    e = data["explanation"]
    top = sorted(e["lead_totals"].items(), key=lambda kv: -abs(kv[1]))[:3]
    print(f"{e['label']}: score {e['score']:.3f}; leads that moved it most: "
          + ", ".join(f"{k} {v:+.3f}" for k, v in top) + f" -> {args.output}")
    return result


if __name__ == "__main__":
    main()
