"""Downstream ECG datasets for evaluation: one interface, one factory.

    from eval.datasets import load_downstream
    ds = load_downstream("ptbxl", "/data/ptb-xl-1.0.3", split="test", task="rhythm")
    item = ds[0]          # signal [leads, samples] float32 mV, sampling_rate, lead_names, labels, record_id
    y = ds.labels_matrix()  # [n, n_classes] without reading signals

Class lists come from eval.label_sets. Loaders only read: every item is the record as stored (its own rate,
length and lead order, in millivolts). Condition it with the processor, e.g.
`DBetaFeatureExtractor()(item["signal"], sampling_rate=item["sampling_rate"], lead_names=item["lead_names"])`,
passing `ds.protocol_num_samples` on where the protocol asks for it (CPSC2018: the first 2500 samples).

What each name expects under `root`, and its split:

- ptbxl: ptbxl_database.csv, scp_statements.csv, records500/ (task super, sub, form or rhythm);
  strat_fold 1-8 train, 9 val, 10 test.
- cpsc2018: **/A0001.hea + A0001.mat with a '#Dx:' line (CinC 2020/2021 release), or the original ICBEB
  .mat files + REFERENCE.csv; 20% test, then 10% of the rest val, seed 42.
- csn: ConditionNames_SNOMED-CT.csv and WFDBRecords/**/JS00001.hea + .mat; split as cpsc2018.
- physionet2021: **/<record>.hea + .mat with '#Dx:' (the Challenge 2021 training folders); a split file, or a
  seeded 80/10/10 split by record.
- code-test: ecg_tracings.hdf5 and annotations/gold_standard.csv; test only.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

from eval.code_test import CODE_TEST_LEADS, CODETestDataset
from eval.downstream_base import ECGLabelDataset, ECGReadError, PathLike, check_limb_leads, random_split
from eval.ptbxl import PTBXL_TASKS, PTBXLDataset, ptbxl_class_names, ptbxl_statement_map
from eval.snomed_datasets import (
    CPSC2018_CODES,
    CPSC2018Dataset,
    CSNDataset,
    PhysioNet2021Dataset,
    physionet2021_class_codes,
)

DOWNSTREAM_DATASETS: Dict[str, Type[ECGLabelDataset]] = {
    "ptbxl": PTBXLDataset,
    "cpsc2018": CPSC2018Dataset,
    "csn": CSNDataset,
    "physionet2021": PhysioNet2021Dataset,
    "code-test": CODETestDataset,
}
_ALIASES = {
    "ptb-xl": "ptbxl",
    "icbeb": "cpsc2018",
    "icbeb2018": "cpsc2018",
    "chapman": "csn",
    "cinc2021": "physionet2021",
    "code_test": "code-test",
    "codetest": "code-test",
}

__all__ = [
    "DOWNSTREAM_DATASETS",
    "ECGLabelDataset",
    "ECGReadError",
    "PTBXLDataset",
    "CPSC2018Dataset",
    "CSNDataset",
    "PhysioNet2021Dataset",
    "CODETestDataset",
    "PTBXL_TASKS",
    "CPSC2018_CODES",
    "CODE_TEST_LEADS",
    "check_limb_leads",
    "load_downstream",
    "physionet2021_class_codes",
    "ptbxl_class_names",
    "ptbxl_statement_map",
    "random_split",
]


def load_downstream(
    name: str, root: PathLike, split: str = "test", task: Optional[str] = None, **kwargs
) -> ECGLabelDataset:
    """Open downstream dataset `name` (ptbxl, cpsc2018, csn, physionet2021, code-test) at `root`.

    `task` is required for ptbxl (super, sub, form, rhythm) and must be None for the others. Extra keyword
    arguments go to the dataset class (e.g. seed=42, split_file=..., scale_to_mv=...).
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DOWNSTREAM_DATASETS:
        raise ValueError(f"unknown downstream dataset {name!r}; expected one of {', '.join(DOWNSTREAM_DATASETS)}")
    cls = DOWNSTREAM_DATASETS[key]
    if key == "ptbxl":
        if task is None:
            raise ValueError(f"ptbxl needs a task: one of {', '.join(PTBXL_TASKS)}")
        return cls(root, split=split, task=task, **kwargs)
    if task is not None:
        raise ValueError(f"{key} has no tasks (got task={task!r}); task applies to ptbxl only")
    return cls(root, split=split, **kwargs)
