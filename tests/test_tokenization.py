"""Tokenizers without remote code: the 8B-style SentencePiece folder converts natively."""

from __future__ import annotations

import json

import pytest

from humanaes.errors import CheckpointError
from humanaes.models.expert.tokenization import load_tokenizer

SPECIALS = ["<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"]


def test_internlm2_sentencepiece_folder(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    texts = ["The aesthetics of the human image is good", "Rate the aesthetics of this human picture.", "excellent fair poor bad"]
    (tmp_path / "corpus.txt").write_text("\n".join(texts * 50))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"), vocab_size=320,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, minloglevel=3)
    # As released: a remote tokenizer class named in the config, specials as added tokens.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "added_tokens_decoder": {str(320 + i): {"content": t, "special": True} for i, t in enumerate(SPECIALS)},
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
    }))
    tokenizer = load_tokenizer(tmp_path)
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    text = "Rate the aesthetics"
    assert tokenizer(text).input_ids == [1] + processor.encode(text)  # <s> prepended, same pieces
    assert tokenizer.convert_tokens_to_ids(SPECIALS) == [320, 321, 322, 323, 324]
    ids = tokenizer("<img><IMG_CONTEXT></img>\nRate").input_ids
    assert ids[:4] == [1, 322, 324, 323]
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
