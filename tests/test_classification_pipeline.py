"""A fine-tuned classifier's own pipeline, `pipeline("ecg-classification")`: a tiny DBetaForECGClassification
exported as train.finetune does (train.export.export_model) -> fresh process, empty HF_HOME, offline -> scores over
id2label (multi-label sigmoid, single-label softmax) for arrays, WFDB and DICOM paths and lists; the zero-shot
pipeline refuses the classifier; a re-saved copy serves the same scores."""

import json

import numpy as np
import pytest
import torch

from dbeta.modeling_dbeta import DBetaForECGClassification, DBetaModel
from dbeta.pipeline_dbeta import ECGClassificationPipeline, ZeroShotECGClassificationPipeline, default_score_function
from dbeta.processing_dbeta import read_ecg_file
from tests.test_pipeline import _write_wfdb
from tests.test_remote_code import fresh_python
from tests.tiny import ecg_batch, tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import build_processor, export_model

MULTI = ["AFIB", "NORM", "STACH"]
SINGLE = ["SR", "AF", "SB", "ST"]


def tiny_classifier(tok, classes, problem_type, seed):
    torch.manual_seed(seed)
    config = tiny_config(tiny_t5_text_config(len(tok)), num_labels=len(classes), problem_type=problem_type,
                         id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    model = DBetaForECGClassification(config).eval()
    with torch.no_grad():  # logits of a few units, so sigmoid and softmax scores differ from 0.5 and 1/n
        model.classifier.weight.mul_(100.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clf-pipeline")
    tok = train_t5_tokenizer()
    processor = build_processor(tok)
    models = {"multi": tiny_classifier(tok, MULTI, "multi_label_classification", 0),
              "single": tiny_classifier(tok, SINGLE, "single_label_classification", 1)}
    dirs = {kind: export_model(model, tmp / f"dbeta-{kind}", processor=processor) for kind, model in models.items()}

    record = _write_wfdb(tmp, "rec001", ecg_batch(1, seed=3)[0].numpy())
    signal = read_ecg_file(record).signal
    np.save(tmp / "signal.npy", signal)
    from pydicom.data import get_testdata_file

    dicom = get_testdata_file("waveform_ecg.dcm")
    dcm = read_ecg_file(dicom)
    values = torch.cat([processor(ecg=signal, sampling_rate=500, return_tensors="pt")["ecg_values"],
                        processor(ecg=dcm.signal, sampling_rate=dcm.sampling_rate, lead_names=dcm.lead_names,
                                  return_tensors="pt")["ecg_values"]])
    with torch.no_grad():
        logits = {kind: model(ecg_values=values).logits for kind, model in models.items()}
    torch.save(logits, tmp / "expected.pt")
    return {"tmp": tmp, "dirs": dirs, "models": models, "processor": processor, "record": record, "dicom": dicom,
            "signal": signal, "logits": logits, "tok": tok}


def test_a_classifier_export_names_only_its_own_pipeline(exported, tmp_path):
    config = json.loads((exported["dirs"]["multi"] / "config.json").read_text())
    assert config["custom_pipelines"] == {"ecg-classification": {
        "impl": "pipeline_dbeta.ECGClassificationPipeline", "pt": ["AutoModelForSequenceClassification"],
        "type": "multimodal"}}
    assert config["architectures"] == ["DBetaForECGClassification"]
    # a pretrained export keeps the zero-shot pipeline alone
    pretrained = export_model(DBetaModel(tiny_config(tiny_t5_text_config(len(exported["tok"])))), tmp_path / "pre")
    assert list(json.loads((pretrained / "config.json").read_text())["custom_pipelines"]) == [
        "zero-shot-ecg-classification"]


def test_a_classifier_card_is_its_own(exported, tmp_path):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported["dirs"]["multi"] / "README.md")
    assert 'pipeline("ecg-classification", model=REPO, trust_remote_code=True)' in card.text
    assert "zero-shot-ecg-classification" not in card.text and "candidate_labels" not in card.text
    assert "AFIB, NORM, STACH" in card.text and "sigmoid per class" in card.text
    assert "## Input contract" in card.text and "## Citation" in card.text
    assert "get_text_features" not in card.text and "| classifier | linear, 32 -> 3" in card.text
    meta = card.data.to_dict()
    assert "pipeline_tag" not in meta and "base_model" not in meta  # built here, from no Hub model
    assert "ecg-classification" in meta["tags"] and "multimodal" not in meta["tags"]
    # fine-tuned from a Hub model: base_model names it, the text links it; a local folder is never named
    model = exported["models"]["single"]
    model.name_or_path = "someone/dbeta-base"
    try:
        card = ModelCard.load(export_model(model, tmp_path / "ft") / "README.md")
        local = tmp_path / "local-base"
        local.mkdir()
        model.name_or_path = str(local)
        local_card = ModelCard.load(export_model(model, tmp_path / "ft-local") / "README.md")
    finally:
        model.name_or_path = ""
    assert card.data.base_model == "someone/dbeta-base"
    assert "[someone/dbeta-base](https://huggingface.co/someone/dbeta-base)" in card.text
    assert "softmax over the classes" in card.text
    assert local_card.data.base_model is None and str(local) not in local_card.text


FRESH_PIPELINE = """
import json, warnings
import numpy as np, torch
from transformers import pipeline

expected = torch.load({expected!r}, weights_only=True)
signal = np.load({signal!r})
multi = pipeline("ecg-classification", model={multi!r}, trust_remote_code=True)
single = pipeline(model={single!r}, trust_remote_code=True)  # the export's one task, inferred
assert "transformers_modules" in type(multi).__module__ and type(single).__name__ == "ECGClassificationPipeline"

def check(result, classes, want):
    scores = {{d["label"]: d["score"] for d in result}}
    assert [d["score"] for d in result] == sorted(scores.values(), reverse=True), result
    got = torch.tensor([scores[c] for c in classes])
    assert torch.allclose(got, want, atol=1e-5), (got, want)

sig = lambda row: torch.sigmoid(expected["multi"][row])
soft = lambda row: expected["single"][row].softmax(-1)
# an array with its sampling rate, a WFDB record (with and without .hea), a DICOM file
check(multi(signal, sampling_rate=500), {multi_classes!r}, sig(0))
check(multi({record!r}), {multi_classes!r}, sig(0))
check(multi({record!r} + ".hea"), {multi_classes!r}, sig(0))
check(multi({dicom!r}), {multi_classes!r}, sig(1))
check(single(signal, sampling_rate=500), {single_classes!r}, soft(0))
assert abs(sum(d["score"] for d in single({dicom!r})) - 1) < 1e-5
check(single({dicom!r}), {single_classes!r}, soft(1))
# a list, batched: one result per input, in order
batch = multi([{dicom!r}, {record!r}], batch_size=2)
assert len(batch) == 2
check(batch[0], {multi_classes!r}, sig(1))
check(batch[1], {multi_classes!r}, sig(0))
check(single([signal, {dicom!r}], sampling_rate=500, batch_size=2)[1], {single_classes!r}, soft(1))
# overrides, then the default again: nothing stays from one call to the next
check(multi(signal, sampling_rate=500, function_to_apply="none"), {multi_classes!r}, expected["multi"][0])
check(multi(signal, sampling_rate=500, multi_label=False), {multi_classes!r}, expected["multi"][0].softmax(-1))
check(multi(signal, sampling_rate=500), {multi_classes!r}, sig(0))
assert len(multi(signal, sampling_rate=500, top_k=1)) == 1
# the zero-shot pipeline is not offered by a classifier export
try:
    pipeline("zero-shot-ecg-classification", model={multi!r}, trust_remote_code=True)
except KeyError as err:
    assert "Unknown task zero-shot-ecg-classification" in str(err)
else:
    raise AssertionError("the zero-shot pipeline loaded a classifier export")
print("CLF-OK", json.dumps(multi(signal, sampling_rate=500)))
"""


def _fresh_script(e, multi, single) -> str:
    return FRESH_PIPELINE.format(expected=str(e["tmp"] / "expected.pt"), signal=str(e["tmp"] / "signal.npy"),
                                 multi=str(multi), single=str(single), record=str(e["record"]),
                                 dicom=str(e["dicom"]), multi_classes=MULTI, single_classes=SINGLE)


def test_pipeline_in_a_fresh_process(exported, tmp_path):
    e = exported
    stdout = fresh_python(_fresh_script(e, e["dirs"]["multi"], e["dirs"]["single"]), cwd=tmp_path,
                          hf_home=tmp_path / "hf")
    assert "CLF-OK" in stdout


def test_a_resaved_copy_serves_the_same_pipeline(exported, tmp_path):
    """Loaded and re-saved by a Hub user (remote code, model and processor), and by this package's class: the
    copies carry the pipeline, its modules and the card, and give the export's scores."""
    e = exported
    copies = {kind: tmp_path / f"copy-{kind}" for kind in ("multi", "single")}
    fresh_python(f"""
        from transformers import AutoModelForSequenceClassification, AutoProcessor
        src, dst = {str(e['dirs']['multi'])!r}, {str(copies['multi'])!r}
        AutoModelForSequenceClassification.from_pretrained(src, trust_remote_code=True).save_pretrained(dst)
        AutoProcessor.from_pretrained(src, trust_remote_code=True).save_pretrained(dst)
        """, cwd=tmp_path, hf_home=tmp_path / "hf-save")
    # in a fresh interpreter too: a class imported from the package carried its code only after an export had
    # registered it in the same process (helper: the copy's pipeline failed on configuration_dbeta.py)
    fresh_python(f"""
        from dbeta.modeling_dbeta import DBetaForECGClassification
        from eval.features import load_processor
        src, dst = {str(e['dirs']['single'])!r}, {str(copies['single'])!r}
        DBetaForECGClassification.from_pretrained(src).save_pretrained(dst)
        load_processor(src).save_pretrained(dst)
        """, cwd=tmp_path, hf_home=tmp_path / "hf-save-package")
    for kind, copy in copies.items():
        for name in ("pipeline_dbeta.py", "prompting_dbeta.py", "README.md", "configuration_dbeta.py",
                     "modeling_dbeta.py", "processing_dbeta.py"):
            assert (copy / name).read_bytes() == (e["dirs"][kind] / name).read_bytes(), (kind, name)
        assert json.loads((copy / "config.json").read_text())["custom_pipelines"] == json.loads(
            (e["dirs"][kind] / "config.json").read_text())["custom_pipelines"]
    stdout = fresh_python(_fresh_script(e, copies["multi"], copies["single"]), cwd=tmp_path,
                          hf_home=tmp_path / "hf-load")
    assert "CLF-OK" in stdout


def test_the_zero_shot_pipeline_refuses_a_classifier(exported):
    model = exported["models"]["multi"]
    model.name_or_path = "someone/dbeta-ptbxl"
    try:
        with pytest.raises(ValueError, match=r"someone/dbeta-ptbxl is a fine-tuned ECG classifier "
                                             r"\(DBetaForECGClassification\) with no text tower.*"
                                             r"pipeline\(\"ecg-classification\", model='someone/dbeta-ptbxl'"):
            ZeroShotECGClassificationPipeline(model=model, processor=exported["processor"])
    finally:
        model.name_or_path = ""
    # and the classification pipeline a model without a head
    pretrained = DBetaModel(tiny_config(tiny_t5_text_config(len(exported["tok"]))))
    with pytest.raises(ValueError, match=r"no classification head.*zero-shot-ecg-classification"):
        ECGClassificationPipeline(model=pretrained, processor=exported["processor"])


def test_a_head_initialised_at_load_is_refused_until_trained(exported, tmp_path):
    # A pretrained export loaded as a classifier gets a random head (transformers' load report says so); handed to
    # the pipeline directly it would score with it. Refused until the head has been trained.
    pretrained = DBetaModel(tiny_config(tiny_t5_text_config(len(exported["tok"]))))
    pretrained.save_pretrained(tmp_path / "pretrained")
    model = DBetaForECGClassification.from_pretrained(tmp_path / "pretrained", num_labels=2)
    with pytest.raises(ValueError, match=r"head was initialised at random when it was loaded"):
        ECGClassificationPipeline(model=model, processor=exported["processor"])
    # saved and reloaded before training, it is still the random head (was served after a round trip)
    model.save_pretrained(tmp_path / "untrained")
    assert json.loads((tmp_path / "untrained" / "config.json").read_text())["untrained_heads"] == ["classifier"]
    with pytest.raises(ValueError, match=r"or was saved before the head was trained"):
        ECGClassificationPipeline(model=DBetaForECGClassification.from_pretrained(tmp_path / "untrained"),
                                  processor=exported["processor"])
    # cast to half precision (and back) it is the same random head, rounded (was taken for a trained one)
    for cast in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.half().float()):
        rounded = cast(DBetaForECGClassification.from_pretrained(tmp_path / "pretrained", num_labels=2))
        assert rounded.untrained_heads() == ["classifier"]
        with pytest.raises(ValueError, match=r"head was initialised at random when it was loaded"):
            ECGClassificationPipeline(model=rounded, processor=exported["processor"])
    torch.optim.SGD(model.classifier.parameters(), lr=0.1).zero_grad()
    model(ecg_values=ecg_batch(2), labels=torch.tensor([0, 1])).loss.backward()
    torch.optim.SGD(model.classifier.parameters(), lr=0.1).step()
    ECGClassificationPipeline(model=model, processor=exported["processor"])  # trained since loading: served
    model.save_pretrained(tmp_path / "trained")  # and so is its copy, whose config no longer names the head
    assert "untrained_heads" not in json.loads((tmp_path / "trained" / "config.json").read_text())
    ECGClassificationPipeline(model=DBetaForECGClassification.from_pretrained(tmp_path / "trained"),
                              processor=exported["processor"])
    # an export that has its head is served as loaded
    ECGClassificationPipeline(model=DBetaForECGClassification.from_pretrained(exported["dirs"]["multi"]),
                              processor=exported["processor"])


def _local(exported, kind="multi"):
    return ECGClassificationPipeline(model=exported["models"][kind], processor=exported["processor"])


def test_call_keywords_are_validated_strictly(exported):
    pipe = _local(exported)
    signal = exported["signal"]
    for value in ("Sigmoid", "linear", 1, ["sigmoid"]):
        with pytest.raises(ValueError, match="function_to_apply must be one of sigmoid, softmax, none"):
            pipe(signal, sampling_rate=500, function_to_apply=value)
    with pytest.raises(TypeError, match="multi_label must be True or False"):
        pipe(signal, sampling_rate=500, multi_label="true")
    with pytest.raises(TypeError, match="function_to_apply or multi_label, not both"):
        pipe(signal, sampling_rate=500, function_to_apply="sigmoid", multi_label=True)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        pipe(signal, sampling_rate=500, top_k=0)
    with pytest.raises(TypeError, match="candidate_labels.*function_to_apply"):  # a zero-shot keyword
        pipe(signal, sampling_rate=500, candidate_labels=["AFIB"])
    with pytest.raises(ValueError, match="sampling_rate is required"):
        pipe(signal)
    with pytest.raises(FileNotFoundError, match="input 1: ECG file not found: nowhere.hea"):
        pipe([signal, "nowhere.hea"], sampling_rate=500)
    # a dict whose sampling_rate is None takes the keyword's, as one without the entry does
    want = pipe(signal, sampling_rate=500)
    assert pipe({"signal": signal, "sampling_rate": None}, sampling_rate=500) == want
    assert pipe({"signal": signal, "sampling_rate": None, "lead_names": None}, sampling_rate=500) == want


def test_scores_follow_the_problem_type(exported):
    from types import SimpleNamespace as NS

    assert default_score_function(NS(problem_type="multi_label_classification", num_labels=3)) == "sigmoid"
    assert default_score_function(NS(problem_type="single_label_classification", num_labels=3)) == "softmax"
    assert default_score_function(NS(problem_type="regression", num_labels=3)) == "none"
    assert default_score_function(NS(problem_type=None, num_labels=3)) == "softmax"
    assert default_score_function(NS(problem_type=None, num_labels=1)) == "sigmoid"  # softmax of one is 1
    pipe = _local(exported, "single")
    signal = exported["signal"]
    scores = {d["label"]: d["score"] for d in pipe(signal, sampling_rate=500, multi_label=True)}
    want = torch.sigmoid(exported["logits"]["single"][0])
    assert torch.allclose(torch.tensor([scores[c] for c in SINGLE]), want, atol=1e-5)


def test_a_single_class_is_never_a_softmax(exported):
    tok = exported["tok"]
    pipe = ECGClassificationPipeline(model=tiny_classifier(tok, ["AFIB"], None, 2), processor=exported["processor"])
    out = pipe(exported["signal"], sampling_rate=500)
    assert out[0]["label"] == "AFIB" and 0.0 < out[0]["score"] < 1.0
    with pytest.raises(ValueError, match="softmax' over a single class is 1 whatever the ECG"):
        pipe(exported["signal"], sampling_rate=500, function_to_apply="softmax")


def test_labels_travel_through_the_model_inputs_and_outputs(exported):
    pipe = _local(exported)
    inputs = pipe.preprocess(exported["signal"], sampling_rate=500)
    assert inputs["class_labels"] == MULTI and tuple(inputs["ecg_values"].shape) == (1, 12, 5000)
    with torch.no_grad():
        outputs = pipe._forward(dict(inputs))
    assert outputs["class_labels"] == MULTI
    assert torch.allclose(outputs["logits"], exported["logits"]["multi"][:1], atol=1e-5)
    renamed = dict(outputs, class_labels=["a", "b", "c"])  # postprocess names what it was handed
    assert {d["label"] for d in pipe.postprocess(renamed)} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="gives 3 scores but config.id2label names 2 classes"):
        pipe.postprocess(dict(outputs, class_labels=["a", "b"]))


def test_a_config_naming_two_classes_alike_or_contradicting_itself_is_refused(exported):
    """An edited id2label that names two outputs alike served two "AFIB" scores (one of them NORM's); a label2id
    contradicting id2label was ignored."""
    pipe = ECGClassificationPipeline(model=tiny_classifier(exported["tok"], MULTI, "multi_label_classification", 3),
                                     processor=exported["processor"])
    config = pipe.model.config
    config.id2label = {0: MULTI[0], 1: MULTI[0], 2: MULTI[2]}
    with pytest.raises(ValueError, match=f"config.id2label gives the name\\(s\\) {MULTI[0]} to more than one class"):
        pipe(exported["signal"], sampling_rate=500)
    config.id2label = dict(enumerate(MULTI))
    config.label2id = {name: len(MULTI) - 1 - i for i, name in enumerate(MULTI)}
    with pytest.raises(ValueError, match="config.label2id and config.id2label disagree"):
        pipe(exported["signal"], sampling_rate=500)


def test_lead_subsets_and_return_leads(exported):
    pipe = _local(exported)
    limb = exported["signal"][:6]
    with pytest.warns(UserWarning, match="V1, V2, V3, V4, V5, V6 absent"):
        out = pipe(limb, sampling_rate=500, lead_names=["I", "II", "III", "aVR", "aVL", "aVF"], return_leads=True)
    assert out["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF"] and len(out["scores"]) == 3
    full = pipe(exported["signal"], sampling_rate=500, leads="limb", return_leads=True)
    assert full["leads"] == out["leads"]
    assert [d["score"] for d in full["scores"]] == pytest.approx([d["score"] for d in out["scores"]], abs=1e-6)


def test_a_classifier_in_train_mode_is_scored_without_dropout(exported):
    from dbeta.pipeline_dbeta import ECGClassificationPipeline
    from tests.test_pipeline import _with_dropout

    e = exported
    model = _with_dropout(e["models"]["multi"])
    pipe = ECGClassificationPipeline(model=model, processor=e["processor"])
    first = pipe(e["signal"], sampling_rate=500)
    assert first == pipe(e["signal"], sampling_rate=500) and model.training
    want = torch.sigmoid(e["logits"]["multi"][0])
    assert {d["label"]: d["score"] for d in first} == pytest.approx(dict(zip(MULTI, want.tolist())), abs=1e-5)


def test_a_classifier_fine_tuned_from_a_pretrained_export_saves_as_a_classifier(exported, tmp_path):
    """from_pretrained(pretrained export, num_labels=...) then save_pretrained (or Trainer.save_model) kept the
    zero-shot pipeline entry and card: pipeline("ecg-classification") on the copy was "Unknown task"."""
    from huggingface_hub import ModelCard
    from transformers import pipeline

    pretrained = export_model(DBetaModel(tiny_config(tiny_t5_text_config(len(exported["tok"])))), tmp_path / "pre",
                              processor=exported["processor"])
    model = DBetaForECGClassification.from_pretrained(pretrained, num_labels=3, id2label=dict(enumerate(MULTI)),
                                                      problem_type="multi_label_classification")
    with torch.no_grad():  # a step of training (an untrained head is refused: see the test above)
        model.classifier.weight.add_(0.01)
    model.save_pretrained(tmp_path / "ft")
    exported["processor"].save_pretrained(tmp_path / "ft")
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert list(config["custom_pipelines"]) == ["ecg-classification"]
    assert not (tmp_path / "ft" / "README.md").exists()  # the zero-shot card described another model
    clf = pipeline("ecg-classification", model=str(tmp_path / "ft"), trust_remote_code=True)
    assert sorted(d["label"] for d in clf(exported["signal"], sampling_rate=500)) == sorted(MULTI)
    # a re-saved pretrained model keeps its own pipeline and card
    DBetaModel.from_pretrained(pretrained).save_pretrained(tmp_path / "again")
    assert list(json.loads((tmp_path / "again" / "config.json").read_text())["custom_pipelines"]) == [
        "zero-shot-ecg-classification"]
    assert ModelCard.load(tmp_path / "again" / "README.md").text == ModelCard.load(pretrained / "README.md").text
