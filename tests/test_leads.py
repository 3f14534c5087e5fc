"""Lead subsets: the processor, the pipeline and the evaluation loaders take any subset of the 12 standard leads;
absent (or excluded) leads are zero rows, as pretraining's lead masking shows them, and the output says which
leads were used."""

import warnings

import numpy as np
import pytest
from dbeta.processing_dbeta import DBetaFeatureExtractor, resolve_leads

from tests.tiny import ecg_batch, tiny_zero_shot_pipeline

LABELS = ["NORM", "AFIB", "sinus bradycardia"]
LEAD_NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="module")
def setup():
    return tiny_zero_shot_pipeline()


def test_a_record_with_leads_i_and_ii_only_is_conditioned_with_the_others_zeroed():
    fe = DBetaFeatureExtractor()
    full = ecg_batch(1, seed=1)[0].numpy()
    two = full[[1, 0]]  # II, I: any order, named
    out = fe(two, sampling_rate=500, lead_names=["II", "I"], return_lead_mask=True)
    x, mask = out["ecg_values"][0].numpy(), out["lead_mask"][0].numpy()
    reference = fe(full, sampling_rate=500)["ecg_values"][0].numpy()
    np.testing.assert_array_equal(x[:2], reference[:2])  # the present leads are conditioned as in the full record
    assert not x[2:].any()
    assert mask.tolist() == [True, True] + [False] * 10
    # the default output stays what the model takes (model(**batch) needs no extra key)
    assert set(fe(two, sampling_rate=500, lead_names=["II", "I"]).keys()) == {"ecg_values"}


def test_leads_option_zeroes_leads_outside_the_subset_and_minmax_ignores_them():
    fe = DBetaFeatureExtractor()
    full = ecg_batch(1, seed=2)[0].numpy()
    full[6:] *= 4.0  # precordial leads larger: a min-max over all 12 would differ from one over the limb leads
    out, mask = fe.condition(full, 500, leads="limb", normalization="minmax", return_lead_mask=True)
    assert mask.tolist() == [True] * 6 + [False] * 6 and not out[6:].any()
    assert out[:6].min() == pytest.approx(0.0, abs=1e-6) and out[:6].max() == pytest.approx(1.0, abs=1e-6)
    single = fe.condition(full, 500, leads=["lead I"])
    np.testing.assert_array_equal(single[0], fe.condition(full, 500)[0])
    assert not single[1:].any()
    assert resolve_leads(["V2", "i"]) == ("I", "V2")
    with pytest.raises(ValueError, match="give a list of lead names or one of"):
        resolve_leads("precordial")


def test_no_standard_lead_and_strict_mode_are_clear_errors():
    fe = DBetaFeatureExtractor()
    x = ecg_batch(1, seed=3)[0].numpy()
    with pytest.raises(ValueError, match=r"ecg\[0\]: no standard lead .* \(have X, Y, Z\)"):
        fe(x[:3], sampling_rate=500, lead_names=["X", "Y", "Z"])
    with pytest.raises(ValueError, match=r"ecg\[0\]: the record has none of the requested leads V1"):
        fe(x[:2], sampling_rate=500, lead_names=["I", "II"], leads=["V1"])
    with pytest.raises(ValueError, match=r"missing lead\(s\) III, aVR"):
        fe(x[:2], sampling_rate=500, lead_names=["I", "II"], missing_leads="raise")
    with pytest.raises(ValueError, match="for fewer leads pass lead_names"):
        fe(x[:2], sampling_rate=500)
    # strict mode asks only for the leads in use: a 2-lead record read as I+II was refused for lacking the other 10
    # (helper: /tmp/hK/repro/strict_leads_with_subset.py)
    two = fe(x[:2], sampling_rate=500, lead_names=["I", "II"], leads="I+II", missing_leads="raise",
             return_lead_mask=True)
    assert two["lead_mask"][0].tolist() == [True, True] + [False] * 10
    with pytest.raises(ValueError, match=r"missing lead\(s\) III \(have I, II;"):
        fe(x[:2], sampling_rate=500, lead_names=["I", "II"], leads=["I", "III"], missing_leads="raise")
    # a WFDB header without signal descriptions reads as names None (was "unknown lead name 'None'")
    with pytest.raises(ValueError, match=r"lead\(s\) at row\(s\) 0, 1 have no name .*pass lead_names"):
        fe(x[:2], sampling_rate=500, lead_names=[None, " "])


def test_pipeline_scores_a_lead_subset_as_the_model_sees_it_and_says_which_leads(setup):
    model, processor, pipe = setup
    full = ecg_batch(1, seed=4)[0].numpy()
    with pytest.warns(UserWarning, match=r"lead\(s\) III, aVR, aVL, aVF, V1, .* absent"):
        out = pipe({"signal": full[:2], "sampling_rate": 500, "lead_names": ["I", "II"]}, candidate_labels=LABELS,
                   return_leads=True)
    assert out["leads"] == ["I", "II"]
    zeroed = full.copy()
    zeroed[2:] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit subset is not warned about
        same = pipe(full, sampling_rate=500, candidate_labels=LABELS, leads=["I", "II"], return_leads=True)
        plain = pipe(full, sampling_rate=500, candidate_labels=LABELS)
    assert same == out
    # an explicit subset the record only partly has is warned about (was scored on I and II alone, unsaid)
    with pytest.warns(UserWarning, match=r"lead\(s\) III, aVR, aVL, aVF absent from the record") as caught:
        limb = pipe({"signal": full[:2], "sampling_rate": 500, "lead_names": ["I", "II"]}, candidate_labels=LABELS,
                    leads="limb", return_leads=True)
    assert limb["leads"] == ["I", "II"] and "V1" not in str(caught[0].message)
    want = pipe(zeroed, sampling_rate=500, candidate_labels=LABELS)  # what "zeroed" means: the model's own view
    assert {d["label"]: d["score"] for d in out["scores"]} == pytest.approx({d["label"]: d["score"] for d in want})
    # and a subset is not the full record: the scores differ
    assert {d["label"]: d["score"] for d in plain} != pytest.approx({d["label"]: d["score"] for d in want})


def test_evaluation_loader_features_and_lead_subset_evaluation(setup, tmp_path):
    """A PTB-XL-layout folder through eval.lead_subsets: features per subset differ, every figure is a number."""
    from eval.datasets import load_downstream
    from eval.features import dataset_ecg_features
    from eval.lead_subsets import evaluate_lead_subsets, render_markdown
    from train.synthetic.layouts import write_ptbxl_layout

    model, processor, _ = setup
    write_ptbxl_layout(tmp_path / "ptbxl", n=160, seed=0)
    ds = load_downstream("ptbxl", tmp_path / "ptbxl", split="test", task="rhythm")
    full = dataset_ecg_features(model, processor, ds, progress=False)
    lead_i = dataset_ecg_features(model, processor, ds, progress=False, leads=["I"])
    assert full.shape == lead_i.shape and not np.allclose(full, lead_i)
    from eval.lead_subsets import subset_features

    both = subset_features(model, processor, ds, ["12-lead", ["I"]])  # one pass: the same features
    np.testing.assert_allclose(both[0], full, atol=1e-5)
    np.testing.assert_allclose(both[1], lead_i, atol=1e-5)
    result = evaluate_lead_subsets(model, tmp_path / "ptbxl", ["12-lead", "I"], processor=processor, epochs=2,
                                   bootstrap=10, output=tmp_path / "leads.json")
    assert list(result["subsets"]) == ["12-lead", "I"]
    assert result["subsets"]["I"]["leads"] == ["I"] and len(result["subsets"]["12-lead"]["leads"]) == 12
    for row in result["subsets"].values():
        assert 0.0 <= row["zero_shot_auc"] <= 1.0 and 0.0 <= row["probe_auc"] <= 1.0
    assert "| I |" in render_markdown(result) and (tmp_path / "leads.md").is_file()


def test_lead_subset_probe_reads_only_the_records_it_uses(setup, tmp_path, monkeypatch):
    """At a fraction < 1 only the drawn training records are read, and the probe's AUC is the one the full
    training features give."""
    import eval.lead_subsets as ls
    from eval.datasets import load_downstream
    from eval.linear_probe import probe_run
    from train.synthetic.layouts import write_ptbxl_layout

    model, processor, _ = setup
    write_ptbxl_layout(tmp_path / "ptbxl", n=200, seed=0)
    sizes, real = [], ls.subset_features
    monkeypatch.setattr(ls, "subset_features", lambda m, p, ds, *a, **k: sizes.append(len(ds)) or real(m, p, ds, *a,
                                                                                                          **k))
    result = ls.evaluate_lead_subsets(model, tmp_path / "ptbxl", ["12-lead"], processor=processor, fraction=0.25,
                                      epochs=3, bootstrap=0)
    splits = {k: load_downstream("ptbxl", tmp_path / "ptbxl", split=k, task="sub") for k in ("train", "val", "test")}
    n_train = len(splits["train"])
    zs_test = load_downstream("ptbxl", tmp_path / "ptbxl", split="test", task="rhythm")
    same = zs_test.record_ids == splits["test"].record_ids  # then one read serves both uses
    assert sizes == [n_train // 4, len(splits["val"]), len(splits["test"])] + ([] if same else [len(zs_test)])
    assert result["n_records"]["probe_sub_train"] == n_train // 4
    feats = {k: real(model, processor, ds, ["12-lead"])[0] for k, ds in splits.items()}
    record, _ = probe_run(feats, {k: ds.labels_matrix() for k, ds in splits.items()}, splits["test"].class_names,
                          0.25, 42, 3, 16, 1e-3, 1e-4, 0)
    assert result["subsets"]["12-lead"]["probe_auc"] == pytest.approx(record["test_auc"], abs=1e-6)


def test_an_unreadable_drawn_training_record_is_named(setup, tmp_path):
    """At a fraction < 1 the training records are a torch Subset: the error for one that cannot be read was an
    AttributeError about the Subset (helper), not the record."""
    from eval.datasets import load_downstream
    from eval.features import RecordError
    from eval.lead_subsets import evaluate_lead_subsets
    from eval.linear_probe import train_subset_indices
    from train.synthetic.layouts import write_ptbxl_layout

    model, processor, _ = setup
    write_ptbxl_layout(tmp_path / "ptbxl", n=120, seed=1)
    train = load_downstream("ptbxl", tmp_path / "ptbxl", split="train", task="sub")
    rid = train.record_ids[int(train_subset_indices(len(train), 0.5, 42)[0])]
    (dat,) = (tmp_path / "ptbxl").glob(f"records500/*/{int(rid):05d}_hr.dat")
    dat.write_bytes(dat.read_bytes()[:1000])
    with pytest.raises(RecordError, match=f"record {rid}: .*1000 bytes"):
        evaluate_lead_subsets(model, tmp_path / "ptbxl", ["I"], processor=processor, fraction=0.5, epochs=1,
                              bootstrap=0)


def test_lead_names_name_the_leads_of_a_file_whose_header_names_none(setup, tmp_path):
    """The processor's error for a WFDB header without signal descriptions says to pass lead_names=, which the
    pipeline ignored for a file (a file kept its own names), for plain scoring and for windows (helper)."""
    import wfdb

    _, _, pipe = setup
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    x = ecg_batch(1, seed=6)[0].numpy()
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=names, p_signal=x.T.astype(np.float64), fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    lines = (tmp_path / "rec.hea").read_text().splitlines()
    (tmp_path / "rec.hea").write_text("\n".join([lines[0]] + [" ".join(li.split()[:8]) for li in lines[1:13]]) + "\n")
    record, call = str(tmp_path / "rec"), dict(candidate_labels=LABELS)
    with pytest.raises(ValueError, match="have no name .*pass lead_names"):
        pipe(record, **call)

    def scores(out):
        return {d["label"]: d["score"] for d in out}

    want = scores(pipe(x, sampling_rate=500, **call))
    assert scores(pipe(record, lead_names=names, **call)) == pytest.approx(want, abs=1e-4)
    windows = pipe(record, lead_names=names, window_seconds=10, progress=False, **call)
    assert windows["leads"] == names and len(windows["windows"]) == 1
    with pytest.raises(ValueError, match="lead_names= gives 2 names for the file's 12 leads"):
        pipe(record, lead_names=["I", "II"], **call)
    # a file that names its leads keeps them; lead_names= naming them otherwise is refused, not passed over (a
    # header of ECG1..ECG12 gave its unknown-name error whatever lead_names= said)
    wfdb.wrsamp("named", fs=500, units=["mV"] * 12, sig_name=[f"ECG{i}" for i in range(1, 13)],
                p_signal=x.T.astype(np.float64), fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"names its leads ECG1, .*cannot rename them; .*processor.read\(path\)"):
        pipe(str(tmp_path / "named"), lead_names=names, **call)
    with pytest.raises(ValueError, match="cannot rename them"):
        pipe(str(tmp_path / "named"), lead_names=names, window_seconds=10, **call)


def test_flat_leads_are_scored_and_reported_as_absent(setup):
    """A 12-column record with 9 constant leads scored exactly as the 3 leads it has, but without the missing-lead
    warning and with all 12 reported as used (helper)."""
    _, _, pipe = setup
    x = ecg_batch(1, seed=7)[0].numpy()
    flat = x.copy()
    flat[3:9] = 0.0
    flat[9:] = 0.3
    with pytest.warns(UserWarning, match=r"lead\(s\) aVR, aVL, aVF, V1, V2, V3, V4, V5, V6 absent from the record or "
                                         r"flat \(constant\)"):
        out = pipe(flat, sampling_rate=500, candidate_labels=LABELS, return_leads=True)
    assert out["leads"] == ["I", "II", "III"]
    with pytest.warns(UserWarning):
        three = pipe({"signal": x[:3], "sampling_rate": 500, "lead_names": ["I", "II", "III"]},
                     candidate_labels=LABELS, return_leads=True)
    assert out == three
    values, used = DBetaFeatureExtractor().condition(flat, 500, return_lead_mask=True)
    assert used.tolist() == [True] * 3 + [False] * 9 and not values[3:].any()
    with pytest.raises(ValueError, match=r"lead\(s\) aVR, aVL, aVF, V1, V2, V3, V4, V5, V6 flat \(constant\)"):
        DBetaFeatureExtractor(missing_leads="raise").condition(flat, 500)  # the strict check counts them missing
    with pytest.raises(ValueError, match="flat signal: every lead is constant"):  # nothing left: still refused
        DBetaFeatureExtractor().condition(np.full((12, 5000), 0.3, np.float32), 500)
    # flat in the part the model sees (the first 10 s of a 20 s record), not in the rest: absent too
    long = np.concatenate([x, ecg_batch(1, seed=8)[0].numpy()], axis=1)
    long[6, :5000] = 0.0
    assert DBetaFeatureExtractor().condition(long, 500, return_lead_mask=True)[1].tolist() == [True] * 6 + [False] + [
        True] * 5
    # the benchmarks score a record with a flat lead (a zero row), as before; only a lead it does not name is refused
    from eval.features import condition_item

    item = {"signal": flat, "sampling_rate": 500, "lead_names": LEAD_NAMES, "record_id": "r1"}
    np.testing.assert_array_equal(condition_item(DBetaFeatureExtractor(), item),
                                  DBetaFeatureExtractor().condition(flat, 500))
    with pytest.raises(ValueError, match="record r2: lacks lead"):
        condition_item(DBetaFeatureExtractor(), {"signal": x[:3], "sampling_rate": 500,
                                                 "lead_names": LEAD_NAMES[:3], "record_id": "r2"})
