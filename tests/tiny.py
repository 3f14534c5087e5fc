"""Tiny, offline stand-ins for the real assets: a T5-shaped tokenizer trained in memory, tiny T5/BERT configs,
a tiny D-BETA, and seeded ECG-like signals. Shared by the tests."""

from __future__ import annotations

import io

import numpy as np
import torch

from dbeta.configuration_dbeta import DBetaConfig, DBetaECGConfig

REPORTS = [
    "sinus rhythm. normal ecg.",
    "sinus bradycardia. otherwise normal ecg.",
    "sinus tachycardia. nonspecific st-t changes.",
    "atrial fibrillation with rapid ventricular response. abnormal ecg.",
    "left bundle branch block. abnormal ecg.",
    "right bundle branch block. borderline ecg.",
    "first degree av block. sinus rhythm.",
    "st depression in lateral leads. possible ischemia.",
    "st elevation in anterior leads. acute myocardial infarction.",
    "left ventricular hypertrophy with repolarization abnormality.",
]


def train_t5_tokenizer(texts=REPORTS, vocab_size: int = 200, extra_ids: int = 8):
    """A T5Tokenizer (unigram sentencepiece, pad 0 / eos 1 / unk 2, <extra_id_N> sentinels) trained in memory."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) * 20), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=extra_ids)


def train_wordpiece_tokenizer(texts=REPORTS):
    """A BERT-style tokenizer ([CLS] ... [SEP], [MASK]) trained in memory with `tokenizers`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(list(texts) * 5, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_t5_text_config(vocab_size: int) -> dict:
    return dict(model_type="t5", vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def tiny_bert_text_config(vocab_size: int) -> dict:
    return dict(model_type="bert", vocab_size=vocab_size, hidden_size=48, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=96, max_position_embeddings=128)


def tiny_config(text_config: dict, **overrides) -> DBetaConfig:
    """A ~0.3M-parameter D-BETA: width 32, 2 ECG layers, 1 + 1 fusion layers."""
    ecg = DBetaECGConfig(conv_layers=[(32, 2, 2)] * 4, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, conv_pos_kernel=16, conv_pos_groups=4)
    values = dict(ecg_config=ecg, text_config=text_config, hidden_size=32, num_fusion_layers=2,
                  fusion_num_heads=4, fusion_intermediate_size=64, mem_layer=1, mem_decoder_hidden_size=16,
                  mem_decoder_layers=1, mem_decoder_heads=2)
    values.update(overrides)
    return DBetaConfig(**values)


def ecg_batch(batch: int = 2, samples: int = 5000, seed: int = 0) -> torch.Tensor:
    """ECG-like [B, 12, samples] float32 millivolt signals (spiky periodic waves + noise), seeded."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 500.0
    out = np.empty((batch, 12, samples), dtype=np.float32)
    for b in range(batch):
        hr = rng.uniform(50, 120) / 60.0
        phase = (t * hr) % 1.0
        beat = np.exp(-((phase - 0.4) ** 2) / 0.0005) - 0.2 * np.exp(-((phase - 0.7) ** 2) / 0.005)
        gains = rng.uniform(-1.5, 1.5, size=(12, 1))
        out[b] = gains * beat + 0.02 * rng.standard_normal((12, samples))
    return torch.from_numpy(out)


def tiny_zero_shot_pipeline():
    """A seeded tiny DBetaModel (its ECG pooler scaled up so label scores differ) and its processor, as the
    zero-shot pipeline: (model, processor, pipeline)."""
    from dbeta.modeling_dbeta import DBetaModel
    from dbeta.pipeline_dbeta import ZeroShotECGClassificationPipeline
    from train.export import build_processor

    torch.manual_seed(0)
    tok = train_t5_tokenizer()
    model = DBetaModel(tiny_config(tiny_t5_text_config(len(tok)))).eval()
    with torch.no_grad():
        model.ecg_pooler.dense.weight.mul_(20.0)
    processor = build_processor(tok)
    return model, processor, ZeroShotECGClassificationPipeline(model=model, processor=processor)
