"""Build the small byte-level BPE tokenizer packaged for random-init presets (humanaes-tiny,
and the random-weight 1B/8B-size benchmark models).

It mirrors Qwen2's tokenizer design (NFC, byte-level pre-tokenizer and decoder, no BOS) with
InternVL2-1B's special tokens in their order, trained on HumanAesExpert's own prompt and answer
texts, so prompts tokenise compactly. Run: python scripts/make_tiny_tokenizer.py
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from humanaes.models.expert.prompts import (
    ANSWER_PREFIX,
    EXPERT_QUESTIONS,
    GENERAL_QUESTIONS,
    expert_answer,
    get_template,
)
from humanaes.schema import LEVELS

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
            "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
OUT = Path(__file__).resolve().parents[1] / "humanaes" / "models" / "expert" / "presets" / "tokenizers" / "tiny"


def corpus() -> list[str]:
    texts = [get_template("Hermes-2").system_message, *GENERAL_QUESTIONS, *EXPERT_QUESTIONS]
    texts += [f"{ANSWER_PREFIX} {level}" for level in LEVELS]
    texts += [expert_answer([(i % 5) / 5 + 0.1] * 12) for i in range(5)]
    return texts * 20


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=480, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="right", clean_up_tokenization_spaces=False)
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"wrote {OUT} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
