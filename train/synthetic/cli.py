"""`python -m train.synthetic`: write synthetic ECG-report pairs in the MIMIC-IV-ECG or PTB-XL layout."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from .classes import CLASS_SPECS, DEFAULT_CLASSES
from .layouts import SYNTHETIC_NOTICE, write_mimic_layout, write_ptbxl_layout
from .measurements import MEASUREMENT_DETAILS


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.synthetic",
        description="Write SYNTHETIC 12-lead ECGs with reports in the MIMIC-IV-ECG or PTB-XL layout.",
    )
    parser.add_argument("--layout", choices=("mimic", "ptbxl"), required=True)
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--n", type=int, default=1000, help="number of records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_CLASSES)}; "
                        f"supported: {' '.join(CLASS_SPECS)}")
    parser.add_argument("--use-wfdb-writer", action="store_true",
                        help="write records with wfdb.wrsamp (byte-identical output, about 30x slower)")
    parser.add_argument("--template-reports", action="store_true",
                        help="compose template reports even if the PTB-XL metadata package is installed")
    parser.add_argument("--measurements", choices=MEASUREMENT_DETAILS, default="none",
                        help="append each record's measurements in words to its report: the abnormal ones "
                             "('prolonged pr interval. increased qrs voltage.') or all of them (default: none)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    print(SYNTHETIC_NOTICE, file=sys.stderr)
    writer = write_mimic_layout if args.layout == "mimic" else write_ptbxl_layout
    t0 = time.perf_counter()
    try:
        out = writer(
            args.output, args.n, args.seed, args.classes, progress=True, use_wfdb=args.use_wfdb_writer,
            use_real_reports=False if args.template_reports else None, measurements=args.measurements,
        )
    except (FileExistsError, PermissionError) as err:
        parser.error(str(err))
    dt = time.perf_counter() - t0
    print(f"wrote {args.n} synthetic records ({args.layout} layout) to {out} in {dt:.1f} s "
          f"({args.n / dt:.0f} records/s). The signals are SYNTHETIC; see {out / 'README.txt'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
