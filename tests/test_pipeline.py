"""The zero-shot pipeline: exported tiny model -> fresh process -> pipeline("zero-shot-ecg-classification") on an
array, a WFDB path, pydicom's real DICOM ECG and a list; scores against a manual computation; prompt mapping."""

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from dbeta.modeling_dbeta import DBetaModel
from dbeta.pipeline_dbeta import PromptSet, extract_features, load_prompt_set, looks_like_code
from dbeta.processing_dbeta import STANDARD_LEADS, read_ecg_file
from tests.test_remote_code import fresh_python
from tests.tiny import ecg_batch, tiny_config, tiny_t5_text_config, train_t5_tokenizer
from train.export import ROOT, build_processor, export_model

LABELS = ["NORM", "AFIB", "left bundle branch block", "CLBBB"]


def _write_wfdb(folder, name, signal_mv, fs=500):
    import wfdb

    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=names, p_signal=signal_mv.T.astype(np.float64),
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    return folder / name


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zs-pipeline")
    torch.manual_seed(0)
    tok = train_t5_tokenizer()
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tok)))).eval()
    with torch.no_grad():  # larger logits than the initialisation gives, so the softmax is not flat
        model.ecg_pooler.dense.weight.mul_(20.0)
        model.text_pooler.dense.weight.mul_(20.0)
    processor = build_processor(tok)
    out = export_model(model, tmp / "dbeta-zs", processor=processor)

    record = _write_wfdb(tmp, "rec001", ecg_batch(1, seed=3)[0].numpy())
    signal = read_ecg_file(record).signal  # what the pipeline will read from the file
    np.save(tmp / "signal.npy", signal)
    prompts = json.loads((ROOT / "prompts_dbeta.json").read_text())["prompts"]
    texts = [prompts.get(label, label) for label in LABELS]
    from pydicom.data import get_testdata_file

    dicom = get_testdata_file("waveform_ecg.dcm")
    with torch.no_grad():
        ecg_in = processor(ecg=signal, sampling_rate=500, return_tensors="pt")["ecg_values"]
        dcm = read_ecg_file(dicom)
        dcm_in = processor(ecg=dcm.signal, sampling_rate=dcm.sampling_rate, lead_names=dcm.lead_names,
                           return_tensors="pt")["ecg_values"]
        enc = processor(text=texts, return_tensors="pt")
        text = model.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output
        logits = model.similarity(model.get_ecg_features(torch.cat([ecg_in, dcm_in])).pooler_output, text)
    torch.save({"logits": logits, "texts": texts}, tmp / "expected.pt")
    return {"dir": out, "tmp": tmp, "record": record, "dicom": dicom, "model": model, "processor": processor,
            "texts": texts, "logits": logits}


def test_pipeline_in_a_fresh_process(exported, tmp_path):
    e = exported
    stdout = fresh_python(
        f"""
        import json, sys, warnings
        import numpy as np, torch
        from transformers import pipeline

        labels = {LABELS!r}
        expected = torch.load({str(e['tmp'] / 'expected.pt')!r}, weights_only=True)
        signal = np.load({str(e['tmp'] / 'signal.npy')!r})
        pipe = pipeline("zero-shot-ecg-classification", model={str(e['dir'])!r}, trust_remote_code=True)
        assert "transformers_modules" in type(pipe).__module__, type(pipe).__module__
        # a spy on the text-feature computation of the remote-code module (no counters in the pipeline itself)
        module = sys.modules[type(pipe).__module__]
        real_text_features, computed = module.text_features, []

        def spy(model, processor, texts, *args, **kwargs):
            computed.append(list(texts))
            return real_text_features(model, processor, texts, *args, **kwargs)

        module.text_features = spy

        def as_dict(result):
            return {{d["label"]: d["score"] for d in result}}

        def check_softmax(result, row):
            assert [d["label"] for d in result] == sorted(labels, key=lambda l: -as_dict(result)[l])
            scores = as_dict(result)
            assert set(scores) == set(labels)
            assert abs(sum(scores.values()) - 1) < 1e-5
            want = expected["logits"][row].softmax(-1)
            got = torch.tensor([scores[l] for l in labels])
            assert torch.allclose(got, want, atol=1e-6), (got, want)

        # 1. an array [leads, samples] with its sampling rate; codes map to the shipped prompts
        arr = pipe(signal, sampling_rate=500, candidate_labels=labels)
        check_softmax(arr, 0)
        assert pipe.label_texts(labels) == [(t,) for t in expected["texts"]]
        # 2. the same ECG as a WFDB record path (with and without .hea), and a torch tensor
        check_softmax(pipe({str(e['record'])!r}, candidate_labels=labels), 0)
        check_softmax(pipe({str(e['record']) + '.hea'!r}, candidate_labels=labels), 0)
        check_softmax(pipe(torch.from_numpy(signal), sampling_rate=500, candidate_labels=labels), 0)
        # 3. pydicom's real 12-lead DICOM ECG (its own rate and lead names)
        check_softmax(pipe({e['dicom']!r}, candidate_labels=labels), 1)
        # 4. a list, batched; label features computed at most once per call, and reused across calls while
        #    the label texts and the weights stay the same
        calls = len(computed)
        batch = pipe([signal, {{"signal": signal, "sampling_rate": 500}}, {e['dicom']!r}, {str(e['record'])!r}],
                     sampling_rate=500, candidate_labels=labels, batch_size=3)
        assert len(computed) == calls  # the labels of steps 1-3: reused
        assert len(batch) == 4
        for result, row in zip(batch, [0, 0, 1, 0]):
            check_softmax(result, row)
        before = as_dict(pipe(signal, sampling_rate=500, candidate_labels=labels[:2]))
        assert len(computed) == calls + 1  # new label texts
        bias = pipe.model.text_pooler.dense.bias
        saved = bias.detach().clone()
        with torch.no_grad():
            bias.add_(0.5)  # an in-place weight update between calls (as training would make)
        after = as_dict(pipe(signal, sampling_rate=500, candidate_labels=labels[:2]))
        assert len(computed) == calls + 2 and after != before
        with torch.no_grad():
            bias.copy_(saved)
        # a [batch, leads, samples] array is a batch too
        assert len(pipe(np.stack([signal, signal]), sampling_rate=500, candidate_labels=labels)) == 2
        # 5. multi_label: an independent sigmoid of each logit
        ml = as_dict(pipe(signal, sampling_rate=500, candidate_labels=labels, multi_label=True))
        want = torch.sigmoid(expected["logits"][0])
        assert torch.allclose(torch.tensor([ml[l] for l in labels]), want, atol=1e-6)
        single = as_dict(pipe(signal, sampling_rate=500, candidate_labels=["AFIB"], multi_label=True))
        assert abs(single["AFIB"] - ml["AFIB"]) < 1e-6  # does not depend on the other labels
        # top_k, comma-separated labels, template, dataset spellings
        assert len(pipe(signal, sampling_rate=500, candidate_labels=labels, top_k=2)) == 2
        two = pipe(signal, sampling_rate=500, candidate_labels="NORM, AFIB")
        assert {{d["label"] for d in two}} == {{"NORM", "AFIB"}}
        assert pipe.label_texts(["sinus rhythm"], "an ecg of {{}}") == [("an ecg of sinus rhythm",)]
        prompts = json.load(open({str(e['dir'] / 'prompts_dbeta.json')!r}))["prompts"]
        assert pipe.label_texts(["AF"], dataset="csn") == [(prompts["AFL"],)]
        assert pipe.label_texts(["AF"], dataset="code_test") == [(prompts["AFIB"],)]
        # prompt_style "name": the entry's first sentence; free text stays as written; the default is the config's
        assert prompts["AFIB"].startswith("atrial fibrillation. ")
        assert pipe.label_texts(["AFIB", "sinus rhythm"], prompt_style="name") == [("atrial fibrillation",),
                                                                                  ("sinus rhythm",)]
        pipe(signal, sampling_rate=500, candidate_labels=["AFIB", "NORM"], prompt_style="name")
        assert computed[-1] == ["atrial fibrillation", "normal ecg"]
        pipe.model.config.zero_shot_prompt_style = "name"
        assert pipe.label_texts(["AFIB"]) == [("atrial fibrillation",)]
        assert pipe.label_texts(["AFIB"], prompt_style="description") == [(prompts["AFIB"],)]
        pipe.model.config.zero_shot_prompt_style = "description"
        # 6. an unknown code-like label is used as text, with a warning naming close codes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pipe(signal, sampling_rate=500, candidate_labels=["AFIBB", "NORM"])
        messages = [str(w.message) for w in caught if "looks like a class code" in str(w.message)]
        assert messages and "AFIB" in messages[0].split("close known codes:")[1], messages
        assert {{d["label"] for d in out}} == {{"AFIBB", "NORM"}}
        # 7. errors that say what is wrong
        for call, needle in [
            (lambda: pipe(signal, candidate_labels=labels), "sampling_rate"),
            (lambda: pipe(signal, sampling_rate=500), "candidate_labels"),
            (lambda: pipe(signal, sampling_rate=500, candidate_labels=labels, prompt_style="short"), "prompt_style"),
            (lambda: pipe({str(tmp_path / 'missing.hea')!r}, candidate_labels=labels), "missing.hea"),
            (lambda: pipe({str(e['tmp'] / 'broken')!r}, candidate_labels=labels), "broken"),
        ]:
            try:
                call()
            except Exception as err:
                assert needle in str(err), (needle, str(err))
            else:
                raise AssertionError("no error for " + needle)
        print("PIPELINE-OK", json.dumps(arr))
        """,
        cwd=tmp_path,
        hf_home=tmp_path / "hf",
    )
    assert "PIPELINE-OK" in stdout


@pytest.fixture(autouse=True, scope="module")
def _broken_record(exported):
    """A WFDB record whose data file is truncated (read must fail naming it)."""
    tmp = exported["tmp"]
    rec = _write_wfdb(tmp, "broken", ecg_batch(1, seed=5)[0].numpy())
    dat = rec.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:1000])


def test_extract_features_matches_the_model(exported):
    e = exported
    signal = np.load(e["tmp"] / "signal.npy")
    feats = extract_features(e["model"], e["processor"], ecgs=[signal, str(e["record"]), e["dicom"]],
                             texts=e["texts"], sampling_rate=500, batch_size=2)
    assert feats["ecg"].shape == (3, e["model"].config.hidden_size)
    assert feats["text"].shape == (len(e["texts"]), e["model"].config.hidden_size)
    logits = e["model"].similarity(torch.from_numpy(feats["ecg"]), torch.from_numpy(feats["text"]))
    assert torch.allclose(logits[[0, 2]], e["logits"], atol=1e-5)
    assert torch.allclose(logits[0], logits[1], atol=1e-6)  # array and file of the same record
    cos = extract_features(e["model"], e["processor"], ecgs=signal, sampling_rate=500, normalize=True)["ecg"]
    assert np.allclose(np.linalg.norm(cos, axis=1), 1.0, atol=1e-5)
    # features of a record missing leads, or padded, come with the pipeline's warnings (they were silent, helper)
    with pytest.warns(UserWarning, match=r"lead\(s\) III, .* absent from the record"):
        extract_features(e["model"], e["processor"], ecgs={"signal": signal[:2], "sampling_rate": 500,
                                                           "lead_names": ["I", "II"]})
    with pytest.warns(UserWarning, match="3.00 s of signal, zero-padded"):
        extract_features(e["model"], e["processor"], ecgs=signal[:, :1500], sampling_rate=500)
    # a long NaN stretch is bridged by a line, which reads as missing beats too (a 4 s gap moved SBRAD from
    # 0.007 to 0.53 without a word, helper); a short dropout is not worth a warning
    gap = signal.astype(np.float32).copy()
    gap[1, 1000:3000] = np.nan
    with pytest.warns(UserWarning, match=r"lead\(s\) II \(40%\) of NaN/inf samples, bridged"):
        extract_features(e["model"], e["processor"], ecgs={"signal": gap, "sampling_rate": 500,
                                                           "lead_names": [n.lower() for n in STANDARD_LEADS]})
    gap[1, 1000:3000] = signal[1, 1000:3000]
    gap[1, 1000:1100] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(e["model"], e["processor"], ecgs=gap, sampling_rate=500)
    # the share is of the 10 s the model reads: a gap at 30 s of a 60 s record is never read, and a 2 s gap in
    # the first 10 s is 20% of what is read (the whole record's 3% went unwarned, helper)
    long = np.concatenate([signal] * 6, axis=1).astype(np.float32)
    long[1, 15000:17000] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(e["model"], e["processor"], ecgs=long, sampling_rate=500)
    long[1, 1000:2000] = np.nan
    with pytest.warns(UserWarning, match=r"lead\(s\) II \(20%\) of NaN/inf samples, bridged"):
        extract_features(e["model"], e["processor"], ecgs=long, sampling_rate=500)


def test_prompt_set_resolution():
    ps = load_prompt_set(prompts=ROOT / "prompts_dbeta.json")
    assert ps.key_for("AFIB") == "AFIB" and ps.key_for("Afib") == "AFIB" and ps.key_for("afib") is None
    # lower-case words stay free text: "st" may mean the ST segment, "lad" the artery (helper)
    assert ps.key_for("st") is None and ps.key_for("lad") is None
    assert ps.key_for("1dAVb") == "1AVB"  # code-like alias
    assert ps.key_for("atrial fibrillation") is None  # free text stays free text
    assert ps.key_for("normal") is None  # lower-case words are not codes
    assert ps.key_for("STE", dataset="csn") == "STIAb" and ps.key_for("STE") == "STE"
    assert looks_like_code("NST_") and looks_like_code("1dAVb") and not looks_like_code("sinus rhythm")
    assert "AFIB" in ps.close_codes("AFIBB")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text, key = ps.resolve("QQQZ")
    assert (text, key) == ("QQQZ", None) and any("looks like a class code" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ps.resolve("a wide qrs complex") == ("a wide qrs complex", None)
    assert not caught
    plain = PromptSet({"X1": "custom text"})
    assert plain.resolve("X1") == ("custom text", "X1")
    fallback = load_prompt_set("/nonexistent/model")  # no folder, no Hub: the copy beside pipeline_dbeta.py
    assert len(fallback) == len(ps)


def test_pipeline_from_a_hub_repo_finds_the_prompt_set(exported, tmp_path, monkeypatch):
    """Pushed to a (fake, local) Hub and loaded by repo id in a fresh process: prompts_dbeta.json comes from the
    repo through hf_hub_download, so codes still map to their descriptions."""
    from huggingface_hub import constants as hf_constants

    from tests.fake_hub import FakeHub
    from train.hub import push_export

    repo = "dbeta-tests/zs-tiny"
    with FakeHub() as hub:
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
        push_export(exported["dir"], repo, token="hf_fake", endpoint=hub.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
               and k != "PYTHONPATH"}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_fake", HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", TOKENIZERS_PARALLELISM="false")
        script = f"""
import json, numpy as np
from transformers import pipeline
pipe = pipeline("zero-shot-ecg-classification", model={repo!r}, trust_remote_code=True)
texts = pipe.label_texts(["AFIB", "free text"])
out = pipe(np.load({str(exported['tmp'] / 'signal.npy')!r}), sampling_rate=500, candidate_labels=["AFIB", "NORM"])
print("HUB-OK", json.dumps({{"texts": texts, "source": pipe.prompt_set().source, "n": len(out)}}))
"""
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("HUB-OK"))
    data = json.loads(line[len("HUB-OK "):])
    prompts = json.loads((exported["dir"] / "prompts_dbeta.json").read_text())["prompts"]
    assert data["texts"] == [[prompts["AFIB"]], ["free text"]] and data["n"] == 2
    assert data["source"].startswith(repo)


# ----- issue 12/13: in-process checks of the pipeline's contract ------------------------------------------------


def _local_pipeline(model, processor):
    from dbeta.pipeline_dbeta import ZeroShotECGClassificationPipeline

    return ZeroShotECGClassificationPipeline(model=model, processor=processor)


def test_a_single_label_is_scored_by_its_sigmoid(exported):
    e = exported
    pipe = _local_pipeline(e["model"], e["processor"])
    signal = np.load(e["tmp"] / "signal.npy")
    out = pipe(signal, sampling_rate=500, candidate_labels=["AFIB"])  # LABELS[1]
    want = torch.sigmoid(e["logits"][0, 1]).item()
    assert out[0]["label"] == "AFIB" and out[0]["score"] == pytest.approx(want, abs=1e-6) and out[0]["score"] < 0.999
    assert pipe(signal, sampling_rate=500, candidate_labels=["AFIB"], multi_label=True)[0]["score"] == out[0]["score"]


def test_prompt_ensembles_are_scored_with_the_mean_text_feature(exported):
    e = exported
    model, processor = e["model"], e["processor"]
    pipe = _local_pipeline(model, processor)
    signal = np.load(e["tmp"] / "signal.npy")
    avb = ("atrioventricular block", "first degree av block", "second degree av block", "third degree av block")
    options = dict(dataset="ptbxl_sub", prompt_style="name", prompt_members=True)
    assert pipe.label_texts(["_AVB", "NORM"], **options) == [avb, ("normal ecg",)]
    out = pipe(signal, sampling_rate=500, candidate_labels=["_AVB", "NORM"], multi_label=True, **options)
    with torch.no_grad():  # the same scores computed here, from the model's own methods
        enc = processor(text=[*avb, "normal ecg"], return_tensors="pt")
        feats = model.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output
        ecg = model.get_ecg_features(processor(ecg=signal, sampling_rate=500, return_tensors="pt")["ecg_values"])
        want = torch.sigmoid(model.similarity(ecg.pooler_output, torch.stack([feats[:4].mean(0), feats[4]])))[0]
    got = {d["label"]: d["score"] for d in out}
    assert [got["_AVB"], got["NORM"]] == pytest.approx(want.tolist(), abs=1e-6)
    plain = {d["label"]: d["score"] for d in pipe(signal, sampling_rate=500, candidate_labels=["_AVB", "NORM"],
                                                   multi_label=True, dataset="ptbxl_sub", prompt_style="name")}
    assert plain["NORM"] == pytest.approx(got["NORM"], abs=1e-6) and plain["_AVB"] != pytest.approx(got["_AVB"])
    prompts = json.loads((ROOT / "prompts_dbeta.json").read_text())["prompts"]
    assert pipe.label_texts(["AFIB", "sinus rhythm"], prompt_style="description", dataset="ptbxl_sub",
                            prompt_members=True) == [(prompts["AFIB"],), ("sinus rhythm",)]  # no members, free text
    with pytest.raises(ValueError, match=r"prompt members need dataset= .*\(ptbxl_sub, ptbxl_super\); got "
                                         "dataset='ptbxl'"):
        pipe(signal, sampling_rate=500, candidate_labels=["_AVB"], dataset="ptbxl", prompt_members=True)
    with pytest.raises(TypeError, match="prompt_members must be True or False"):
        pipe(signal, sampling_rate=500, candidate_labels=["_AVB"], dataset="ptbxl_sub", prompt_members="yes")


def test_call_keywords_are_validated(exported):
    e = exported
    pipe = _local_pipeline(e["model"], e["processor"])
    signal = np.load(e["tmp"] / "signal.npy")
    for value in ("false", 0, "True"):
        with pytest.raises(TypeError, match="multi_label must be True or False"):
            pipe(signal, sampling_rate=500, candidate_labels=LABELS, multi_label=value)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        pipe(signal, sampling_rate=500, candidate_labels=LABELS, top_k=0)
    # a template holds the label once and nothing else (were a bare IndexError / KeyError at format time)
    for template in ("{} ({})", "ECG {ms}: {}", "no field", "{0} {0}", "{", 3):
        with pytest.raises(ValueError, match="hypothesis_template must"):
            pipe(signal, sampling_rate=500, candidate_labels=LABELS, hypothesis_template=template)
    braces = pipe(signal, sampling_rate=500, candidate_labels=LABELS, hypothesis_template="{{ecg}}: {}")
    assert len(braces) == len(LABELS)
    # a record dict giving one thing twice: one would be read, the other passed over
    for twice in ({"signal": signal, "ecg": signal * 2, "sampling_rate": 500},
                  {"signal": signal, "sampling_rate": 500, "fs": 250}):
        with pytest.raises(ValueError, match="an ECG dict gives both"):
            pipe(twice, candidate_labels=LABELS)
    with pytest.raises(TypeError, match="candidate_label.*candidate_labels"):
        pipe(signal, sampling_rate=500, candidate_label=LABELS)
    with pytest.raises(TypeError, match="_text_embeds"):  # no private side channel any more
        pipe(signal, sampling_rate=500, candidate_labels=LABELS, _text_embeds=torch.zeros(4, 32))
    with pytest.raises(ValueError, match="unknown dataset 'cspc2018'"):
        pipe(signal, sampling_rate=500, candidate_labels=["AF"], dataset="cspc2018")
    # one class under two spellings would split its softmax share; a missing label is not the text "nan"
    for spelling in ("Afib", "afib"):
        with pytest.raises(ValueError, match=f"'AFIB' and '{spelling}' are the same class"):
            pipe(signal, sampling_rate=500, candidate_labels=["AFIB", spelling, "NORM"])
    # compared as the model reads them (lower case, "ekg" as "ecg"), not as typed
    for twice, style in ((["AFIB", "NORM", "normal ECG"], "name"), (["AFIB", "Atrial fibrillation"], "name"),
                         (["normal ekg", "normal ecg"], "description")):
        with pytest.raises(ValueError, match="are the same class"):
            pipe(signal, sampling_rate=500, candidate_labels=twice, prompt_style=style)
    # and compared as token ids: a doubled space, a tab or a no-break space reads as the same text
    for spacing in ("sinus  rhythm", "sinus\trhythm", "sinus\u00a0rhythm"):
        with pytest.raises(ValueError, match="are the same class"):
            pipe(signal, sampling_rate=500, candidate_labels=["sinus rhythm", spacing, "NORM"], prompt_style="name")
    # a trailing full stop does not make another class (helper: /tmp/hM/repro/duplicate_label_trailing_period.py)
    for twice, style in ((["sinus rhythm", "sinus rhythm.", "SBRAD"], "name"), (["AFIB", "atrial fibrillation."], "name"),
                         (["sinus rhythm", "sinus rhythm. ***"], "name"), (["sinus rhythm", "sinus rhythm.="], "name"),
                         (["NORM", "normal ecg."], "description")):
        with pytest.raises(ValueError, match=re.escape(f"{twice[0]!r} and {twice[1]!r} are the same class")):
            pipe(signal, sampling_rate=500, candidate_labels=twice, prompt_style=style)
    # with descriptions too, though a code (name + description) and its bare name are two texts
    for twice in (["NORM", "normal ECG"], ["AFIB", "Atrial fibrillation", "NORM"]):
        with pytest.raises(ValueError, match=f"{twice[0]!r} and {twice[1]!r} are the same class"):
            pipe(signal, sampling_rate=500, candidate_labels=twice, prompt_style="description")
    for bad in (None, float("nan"), 3):
        with pytest.raises(TypeError, match=r"candidate_labels\[1\] must be a string"):
            pipe(signal, sampling_rate=500, candidate_labels=["NORM", bad])


def test_labels_travel_through_the_model_inputs_and_outputs(exported):
    e = exported
    pipe = _local_pipeline(e["model"], e["processor"])
    signal = np.load(e["tmp"] / "signal.npy")
    inputs = pipe.preprocess(signal, sampling_rate=500, candidate_labels=LABELS)
    assert inputs["candidate_labels"] == LABELS and inputs["label_texts"] == [(t,) for t in e["texts"]]
    with torch.no_grad():
        outputs = pipe._forward(dict(inputs))
    assert outputs["candidate_labels"] == LABELS
    assert torch.allclose(outputs["logits"], e["logits"][:1], atol=1e-5)
    scores = {d["label"]: d["score"] for d in pipe.postprocess(outputs)}
    assert torch.allclose(torch.tensor([scores[label] for label in LABELS]), e["logits"][0].softmax(-1), atol=1e-6)


def test_label_features_follow_the_model_object(exported, tmp_path, monkeypatch):
    """Two freshly loaded models have the same parameter versions: the cache must still tell them apart."""
    import dbeta.pipeline_dbeta as pipeline_dbeta

    e = exported
    torch.manual_seed(1)
    other = DBetaModel(e["model"].config).eval()
    other_dir = export_model(other, tmp_path / "other", processor=e["processor"])
    first = DBetaModel.from_pretrained(e["dir"]).eval()
    second = DBetaModel.from_pretrained(other_dir).eval()
    computed = []
    real = pipeline_dbeta.text_features

    def spy(model, processor, texts, *args, **kwargs):
        computed.append(model)
        return real(model, processor, texts, *args, **kwargs)

    monkeypatch.setattr(pipeline_dbeta, "text_features", spy)
    pipe = _local_pipeline(first, e["processor"])
    signal = np.load(e["tmp"] / "signal.npy")
    before = pipe(signal, sampling_rate=500, candidate_labels=LABELS, multi_label=True)
    pipe(signal, sampling_rate=500, candidate_labels=LABELS)
    assert computed == [first]  # same model, weights and labels: reused
    pipe.model = second
    after = {d["label"]: d["score"] for d in pipe(signal, sampling_rate=500, candidate_labels=LABELS, multi_label=True)}
    assert computed == [first, second]
    with torch.no_grad():
        x = e["processor"](ecg=signal, sampling_rate=500)["ecg_values"]
        enc = e["processor"](text=e["texts"])
        want = torch.sigmoid(second.similarity(
            second.get_ecg_features(x).pooler_output,
            second.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output))[0]
    assert torch.allclose(torch.tensor([after[label] for label in LABELS]), want, atol=1e-6)
    assert after != {d["label"]: d["score"] for d in before}


def test_a_bad_input_in_a_list_is_named_by_its_position(exported, tmp_path):
    e = exported
    pipe = _local_pipeline(e["model"], e["processor"])
    signal = np.load(e["tmp"] / "signal.npy")
    with pytest.raises(ValueError, match=r"^input 1: expected 12 leads"):
        pipe([signal, signal[:8]], sampling_rate=500, candidate_labels=LABELS)
    with pytest.raises(ValueError, match=r"^input 2: .*broken"):
        pipe([signal, str(e["record"]), str(e["tmp"] / "broken")], sampling_rate=500, candidate_labels=LABELS)
    with pytest.raises(FileNotFoundError, match=r"^input 1: .*missing\.hea"):
        pipe([signal, str(tmp_path / "missing.hea")], sampling_rate=500, candidate_labels=LABELS)
    with pytest.raises(ValueError, match=r"^input 1: flat signal"):
        extract_features(e["model"], e["processor"], ecgs=[signal, np.zeros_like(signal)], sampling_rate=500)
    # streamed from a generator, the items are numbered too (the error read "ecg: ...", helper)
    streamed = iter(pipe((x for x in (signal, signal[:8])), sampling_rate=500, candidate_labels=LABELS))
    assert len(next(streamed)) == len(LABELS)
    with pytest.raises(ValueError, match=r"^input 1: expected 12 leads"):
        next(streamed)


def test_the_prompting_module_is_remote_code_by_the_import_rule():
    import tests.test_remote_code as remote_code

    assert "prompting_dbeta.py" in __import__("train.export", fromlist=["EXTRA_FILES"]).EXTRA_FILES
    remote_code.test_remote_code_imports_only_allowed_modules_at_module_level("prompting_dbeta.py")


def test_samples_that_are_no_voltages_are_refused_as_by_the_processor(exported):
    """The pipeline cast its input to float32 before the processor's checks: a boolean mask was scored as 1 mV
    steps, a complex array lost its imaginary part, float64 beyond float32's range became infinities to repair."""
    pipe = _local_pipeline(exported["model"], exported["processor"])
    x = np.load(exported["tmp"] / "signal.npy").astype(np.float64)
    huge = x.copy()
    huge[3, 100:110] = 1e39
    for bad, message in ((x > 0, "real numbers, got an array of bool"), (x + 1j, "real numbers, got an array of "
                         "complex"), (huge, "beyond float32's range")):
        for given in (bad, torch.from_numpy(bad), bad.tolist(), {"signal": bad, "sampling_rate": 500}):
            with pytest.raises(ValueError, match=message):
                pipe(given, sampling_rate=500, candidate_labels=LABELS)


def test_a_tokenizer_past_the_models_vocabulary_is_named_not_an_index_error(exported):
    """A folder saved over another model's keeps that tokenizer's special_tokens_map.json / added_tokens.json; the
    copy's tokenizer then gave ids past the embedding and every call failed with 'index out of range in self'."""
    import copy

    processor = copy.deepcopy(exported["processor"])
    processor.tokenizer.add_tokens(["zzqfibrillation"])
    pipe = _local_pipeline(exported["model"], processor)
    signal = np.load(exported["tmp"] / "signal.npy")
    with pytest.raises(ValueError, match=r"token id \d+, past the text encoder's vocabulary of \d+: it is not this "
                                         r"model's tokenizer"):
        pipe(signal, sampling_rate=500, candidate_labels=["zzqfibrillation", "sinus rhythm"])


def test_a_misspelt_record_key_is_refused_not_passed_over(exported):
    """{"signal", "sample_rate": 250} was read at the call's 500 Hz; {"lead_name": order} in the default order."""
    e = exported
    pipe = _local_pipeline(e["model"], e["processor"])
    signal = np.load(e["tmp"] / "signal.npy")
    for key, meant in (("sample_rate", "sampling_rate"), ("lead_name", "lead_names"), ("leads", "lead_names"),
                       ("units", "a signal in mV"), ("sampling_rte", "sampling_rate"), ("Fs", "fs"),
                       ("sfreq", "sampling_rate"), ("ch_names", "lead_names"), ("lead", "lead_names"),
                       ("samplingFrequency", "sampling_rate"), ("Lead-Names", "lead_names")):
        with pytest.raises(ValueError, match=rf"^input 1: an ECG dict's key '{key}' is not read: did you mean "
                                             rf"'{meant}"):
            pipe([signal, {"signal": signal, key: 250}], sampling_rate=500, candidate_labels=LABELS)
    # a dataset row's other columns are passed over, as before
    row = pipe({"signal": signal, "sampling_rate": 500, "label": "NORM", "report": "sinus rhythm", "id": 3, "age": 61,
                "sex": "F", "labels": [1], "ecg_id": 7, "scp_codes": "{}"},
               candidate_labels=LABELS)
    assert row == pipe(signal, sampling_rate=500, candidate_labels=LABELS)


def _with_dropout(model, p=0.5):
    import copy

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    return model.train()


def test_a_model_in_train_mode_is_scored_without_dropout(exported):
    """A model handed over mid-training (dropout on) gave another answer on every call."""
    e = exported
    model = _with_dropout(e["model"])
    pipe = _local_pipeline(model, e["processor"])
    signal = np.load(e["tmp"] / "signal.npy")
    first = pipe(signal, sampling_rate=500, candidate_labels=LABELS)
    assert first == pipe(signal, sampling_rate=500, candidate_labels=LABELS)
    want = e["logits"][0].softmax(-1)
    assert {d["label"]: d["score"] for d in first} == pytest.approx(dict(zip(LABELS, want.tolist())), abs=1e-5)
    assert model.training  # handed back as it came


def test_copies_of_a_text_get_bitwise_equal_features_in_any_batch():
    """A report padded beside a longer one came out ~4e-9 away from its copy in another batch, so retrieval's tie
    rule (a copy of the paired report counts against the query) depended on --batch-size (helper:
    /tmp/hI/repro/strict_recall_batch_noise.py). Each distinct text, as the model reads it, is encoded once."""
    from dbeta.pipeline_dbeta import text_features

    from tests.tiny import tiny_zero_shot_pipeline

    model, processor, _ = tiny_zero_shot_pipeline()
    long = "sinus rhythm with first degree av block and left axis deviation, borderline ecg"
    texts = ["sinus rhythm.", long, "Sinus  rhythm.", "atrial fibrillation.", "sinus rhythm."]
    with torch.no_grad():
        for batch_size in (1, 2, 3, 64):
            got = text_features(model, processor, texts, batch_size=batch_size)
            assert got.shape == (5, model.config.hidden_size)
            assert torch.equal(got[0], got[2]) and torch.equal(got[0], got[4])  # same token ids
            assert not torch.equal(got[0], got[3])
        alone = text_features(model, processor, ["sinus rhythm."])[0]

        class Older:  # an export's processor from before text_keys (eval's --remote-code on it)
            def __call__(self, **kwargs):
                return processor(**kwargs)

        older = text_features(model, Older(), texts)
    torch.testing.assert_close(got[0], alone)  # (bitwise only within one call: padding moves the last bits)
    assert torch.equal(older[0], older[4]) and older.shape == got.shape


def test_a_pipeline_saved_into_an_export_keeps_its_processor_settings(exported, tmp_path):
    """pipe.save_pretrained(export) wrote the chosen settings to preprocessor_config.json only; processor_config.json
    kept the old ones, and AutoProcessor and pipeline(model=...) read those back: a 6-lead record was scored where
    it had been refused (helper: /tmp/hM/repro/pipeline_save_into_export.py)."""
    import shutil

    from transformers import AutoProcessor, pipeline

    folder = tmp_path / "copy"
    shutil.copytree(exported["dir"], folder)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True, missing_leads="raise",
                                              nan_policy="zero")
    pipeline("zero-shot-ecg-classification", model=str(folder), processor=processor,
             trust_remote_code=True).save_pretrained(folder)
    for back in (AutoProcessor.from_pretrained(folder, trust_remote_code=True).feature_extractor,
                 pipeline("zero-shot-ecg-classification", model=str(folder),
                          trust_remote_code=True).processor.feature_extractor):
        assert (back.missing_leads, back.nan_policy) == ("raise", "zero")
