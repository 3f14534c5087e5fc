"""The README's Python snippets run as written, in a fresh interpreter that sees only a Hub-style download (the
export folder at the snippet's "path/or/repo") and the input files the snippets name."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dbeta.modeling_dbeta import DBetaForECGClassification, DBetaModel
from tests.tiny import tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import build_processor, export_model
from train.synthetic import generate_ecg

ROOT = Path(__file__).resolve().parents[1]

# Inputs the snippets refer to without defining them (a notebook would have them).
PRELUDE = """
import numpy as np
rng = np.random.default_rng(0)
t = np.arange(4000) / 400.0
signal = 0.1 * rng.standard_normal((12, 4000)) + np.sin(2 * np.pi * 1.2 * t)
names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
"""


def readme_snippet(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no Python block under '## {heading}'"
    return blocks[0]


@pytest.fixture(scope="module")
def hub_download(tmp_path_factory):
    """A working folder laid out as the snippets expect: path/or/repo (an export), runs/ft/export (a fine-tuned
    classifier's export), WFDB records and DICOM files."""
    from pydicom.data import get_testdata_file

    work = tmp_path_factory.mktemp("readme")
    tok = train_t5_tokenizer()
    export_model(DBetaModel(tiny_config(tiny_t5_text_config(len(tok)))).eval(), work / "path" / "or" / "repo",
                 processor=build_processor(tok))
    classes = ["AFIB", "NORM", "STACH"]
    classifier = DBetaForECGClassification(tiny_config(
        tiny_t5_text_config(len(tok)), num_labels=3, problem_type="multi_label_classification",
        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})).eval()
    export_model(classifier, work / "runs" / "ft" / "export", processor=build_processor(tok))
    import wfdb

    signal = generate_ecg("AFIB", np.random.default_rng(1)).astype(np.float64).T  # [samples, 12] mV
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    (work / "records500" / "00000").mkdir(parents=True)
    for folder, name in ((work / "records500" / "00000", "00001_hr"), (work, "rec1")):
        wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signal, fmt=["16"] * 12,
                    write_dir=str(folder))
    dicom = get_testdata_file("waveform_ecg.dcm")
    shutil.copy(dicom, work / "ecg.dcm")
    shutil.copy(dicom, work / "rec2.dcm")
    return work


@pytest.mark.parametrize("heading", ["Use in a notebook", "Zero-shot pipeline", "Fine-tuning with `Trainer`"])
def test_readme_snippet_runs_as_written(hub_download, tmp_path, heading):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    script = PRELUDE + textwrap.dedent(readme_snippet(heading)) + "\nprint('snippet ok')\n"
    # -I: isolated mode, so neither this checkout nor the editable install can stand in for the download.
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=hub_download, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "snippet ok" in proc.stdout
