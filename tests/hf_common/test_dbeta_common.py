"""transformers' own common model tests (ModelTesterMixin, ConfigTester) on the three D-BETA classes.

Run with `make test-hf-common`, which fetches the tests from the pinned transformers source distribution
(tests/hf_common/prepare.py) and points HF_COMMON_TESTS at them; without it this module is skipped. Each class
has its own tester, as in transformers (CLIPModel vs CLIPTextModel). Every test skipped here says why it cannot
apply; the rest of the mixin runs unchanged.
"""

from __future__ import annotations

import os
import sys
import unittest
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = os.environ.get("HF_COMMON_TESTS")
if not COMMON or not (Path(COMMON) / "transformers_tests" / "test_modeling_common.py").is_file():
    pytest.skip("transformers' common tests are not fetched; run `make test-hf-common`", allow_module_level=True)
sys.path[:0] = [COMMON, str(ROOT)]

from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from dbeta.configuration_dbeta import DBetaConfig, DBetaECGConfig
from dbeta.modeling_dbeta import DBetaForECGClassification, DBetaForPreTraining, DBetaModel


class DBetaModelTester:
    """A tiny D-BETA: 12-lead ECGs of 256 samples -> 16 tokens (+ CLS), a 2-layer T5 text encoder."""

    def __init__(self, parent, batch_size=3, samples=256, text_length=7, vocab_size=99, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, num_labels=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.samples = samples
        self.text_length = text_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_labels = num_labels
        self.is_training = is_training
        self.num_tokens = samples // 16
        self.seq_length = self.num_tokens + 1  # the ECG encoder's sequence: CLS + tokens
        # The mixin sizes a `noise` input (ViTMAE's) as (image_size // patch_size) ** 2 = the 16 ECG tokens.
        self.image_size, self.patch_size = 4, 1

    def get_config(self) -> DBetaConfig:
        ecg = DBetaECGConfig(conv_layers=[(16, 2, 2)] * 4, hidden_size=self.hidden_size,
                             num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                             intermediate_size=37, conv_pos_kernel=4, conv_pos_groups=4)
        text = dict(model_type="t5", vocab_size=self.vocab_size, d_model=self.hidden_size, d_kv=8, d_ff=37,
                    num_layers=self.num_hidden_layers, num_decoder_layers=self.num_hidden_layers,
                    num_heads=self.num_attention_heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        return DBetaConfig(ecg_config=ecg, text_config=text, hidden_size=self.hidden_size, num_fusion_layers=2,
                           fusion_num_heads=self.num_attention_heads, fusion_intermediate_size=37, mem_layer=1,
                           mem_decoder_hidden_size=16, mem_decoder_layers=1, mem_decoder_heads=2,
                           num_labels=self.num_labels)

    def prepare_config_and_inputs(self):
        ecg = floats_tensor([self.batch_size, 12, self.samples])
        input_ids = ids_tensor([self.batch_size, self.text_length], self.vocab_size)
        mask = torch.ones_like(input_ids)
        mask[0, -2:] = 0  # one padded row
        return self.get_config(), ecg, input_ids, mask

    def prepare_config_and_inputs_for_common(self):
        config, ecg, input_ids, mask = self.prepare_config_and_inputs()
        return config, {"ecg_values": ecg, "input_ids": input_ids, "attention_mask": mask}


class _DBetaTest(ModelTesterMixin):
    has_attentions = True
    test_resize_embeddings = True
    test_torch_exportable = True
    additional_model_inputs = ["input_ids"]  # the text beside the main input, the ECG

    @unittest.skip("strict loading (tests/test_export_safety.py) refuses a checkpoint that lacks the model's weights "
                   "instead of initialising them at random, so there is no load to inspect")
    def test_model_weights_reload_no_missing_tied_weights(self):
        pass

    def setUp(self):
        self.model_tester = DBetaModelTester(self)
        self.config_tester = ConfigTester(self, config_class=DBetaConfig, has_text_modality=False,
                                          common_properties=["hidden_size"])

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if model_class is DBetaForECGClassification:
            inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
            if return_labels:
                inputs["labels"] = torch.zeros(self.model_tester.batch_size, dtype=torch.long)
        if model_class is DBetaModel and return_labels:
            inputs["return_loss"] = True  # as CLIPModel's tester: the contrastive loss is its training loss
        if model_class is DBetaForPreTraining:
            # The masking noise is an input (as ViTMAE's), so outputs are a function of the inputs.
            batch = inputs["ecg_values"].shape[0]
            generator = torch.Generator().manual_seed(0)
            inputs.setdefault("noise", torch.rand(batch, self.model_tester.num_tokens, generator=generator))
            if return_labels:  # every text token labelled and one pair mismatched, so every head gets gradients
                inputs["mlm_labels"] = inputs["input_ids"].clone()
                inputs["is_aligned"] = (torch.arange(batch) > 0).long()
        return inputs


class DBetaForECGClassificationTest(_DBetaTest, unittest.TestCase):
    all_model_classes = (DBetaForECGClassification,)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip("an ECG-only classifier has no token embeddings (its input is a signal, not ids)")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip("an ECG-only classifier has no token embeddings to resize")
    def test_resize_tokens_embeddings(self):
        pass

    @unittest.skip("an ECG-only classifier has no token embeddings to resize")
    def test_resize_embeddings_untied(self):
        pass

    @unittest.skip("the ECG input is a signal: there are no input embeddings to pass instead")
    def test_inputs_embeds(self):
        pass

    @unittest.skip("the ECG input is a signal: there are no input embeddings to pass instead")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class _CompositeTest(_DBetaTest):
    _is_composite = True
    # The ECG and text encoders' attentions and hidden states are in `ecg_model_output` / `text_model_output`
    # (as CLIPModel's vision/text outputs); the classifier's tester checks the ECG encoder's through the mixin.
    test_attention_outputs = False

    @unittest.skip("composite (as CLIPModel): hidden states are in ecg_model_output / text_model_output, checked "
                   "on the ECG classifier and in tests/test_modeling.py")
    def test_hidden_states_output(self):
        pass

    @unittest.skip("composite (as CLIPModel): attentions are in ecg_model_output / text_model_output, checked on "
                   "the ECG classifier and in tests/test_modeling.py")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip("two inputs (an ECG signal and token ids): no single inputs_embeds path")
    def test_inputs_embeds(self):
        pass

    @unittest.skip("two inputs (an ECG signal and token ids): no single inputs_embeds path")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class DBetaModelTest(_CompositeTest, unittest.TestCase):
    all_model_classes = (DBetaModel,)
    # Its forward is the two unimodal paths (CLIP-like); the fusion layers serve get_matching_logits and the
    # pretraining heads, so they get no gradient from its contrastive loss.
    test_all_params_have_gradient = False


class DBetaForPreTrainingTest(_CompositeTest, unittest.TestCase):
    all_model_classes = (DBetaForPreTraining,)

    def setUp(self):
        super().setUp()
        if self._testMethodName.startswith("test_eager_matches_sdpa_inference"):  # 25 parameterized variants
            self.skipTest("the mixin compares `hidden_states`, which this output holds per stream (ecg_model_output, "
                          "text_model_output, fusion_hidden_states); tests/test_modeling.py::"
                          "test_pretraining_eager_matches_sdpa compares its losses and logits instead")
