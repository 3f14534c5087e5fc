"""Cross-version check (`make test-transformers-4`): an export written under transformers 5 loads under 4.57 with
the same features; an older export (weight-norm keys `weight_g` / `weight_v`) too.

    python -m tests.hf_common.check_transformers4 write DIR   # under transformers 5 (the project's venv)
    python -m tests.hf_common.check_transformers4 check DIR   # under transformers 4.57 (a separate venv)

The 4.57 side has nothing of this project installed: it loads each folder through its own remote code
(`AutoModel.from_pretrained(..., trust_remote_code=True)`), as a user of an older transformers would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def features(model, io):
    with torch.no_grad():
        return {"ecg_features": model.get_ecg_features(io["ecg"]).pooler_output,
                "text_features": model.get_text_features(io["input_ids"], io["attention_mask"]).pooler_output}


def write(out: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from dbeta.configuration_dbeta import DBetaConfig
    from dbeta.modeling_dbeta import DBetaModel
    from tests.tiny import ecg_batch, tiny_config, tiny_t5_text_config

    DBetaConfig.register_for_auto_class()  # config.json's auto_map + the code files in the folder
    DBetaModel.register_for_auto_class("AutoModel")
    torch.manual_seed(0)
    model = DBetaModel(tiny_config(tiny_t5_text_config(64))).eval()
    ids = torch.randint(2, 64, (2, 9))
    io = {"ecg": ecg_batch(2), "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    io["attention_mask"][1, -3:] = 0
    model.save_pretrained(out / "export")
    shutil.copytree(out / "export", out / "old-keys")
    state = load_file(out / "old-keys" / "model.safetensors")
    for new, old in (("original0", "weight_g"), ("original1", "weight_v")):
        state[f"ecg_model.pos_conv.{old}"] = state.pop(f"ecg_model.pos_conv.parametrizations.weight.{new}")
    save_file(state, out / "old-keys" / "model.safetensors", metadata={"format": "pt"})
    save_file({**io, **features(model, io)}, out / "io.safetensors")


def check(out: Path) -> None:
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModel

    io = load_file(out / "io.safetensors")
    worst = 0.0
    for name in ("export", "old-keys"):
        model = AutoModel.from_pretrained(out / name, trust_remote_code=True, dtype=torch.float32)
        got = features(model.eval(), io)
        for key, value in got.items():
            diff = float((value - io[key]).abs().max())
            worst = max(worst, diff)
            print(f"transformers {transformers.__version__}: {name} {key} max |diff| = {diff:.2e}")
    if worst > 1e-5:
        sys.exit(f"features differ from transformers 5's by up to {worst:.2e}")
    print("1 passed, 0 failed")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](Path(sys.argv[2]))
