"""Text generation (the annotation) through transformers' `generate()` on the language model.

The prompt (image features already written into its `<IMG_CONTEXT>` slots, left-padded) goes in
as `inputs_embeds` with its attention mask. `generate()` derives the position ids from that mask
(cumulative sum - 1, as `positions_from_mask` does for the scoring passes) and extends mask and
positions by one per new token, so a padded row gets the positions it would have alone and a batch
writes the same text as one image at a time. That is transformers' behaviour, not ours, so
tests/test_scoring.py checks the positions every LLM call receives on the installed version.
(Our own position ids would be right only where `generate()` extends them step by step; the
mask is what it reads in any case.)

The prompt pass itself runs in the scorer, which reads the expert head from the same pass; its
KV cache, less the last prompt token, is handed to `generate()`: `generate()` recomputes that one
token (which gives the first new token's logits) instead of the whole prompt again.

Decoding follows the official `chat()`: greedy unless `do_sample`, stopping at the chat
template's stop token (`<|im_end|>`), which is cut from the text.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

#: transformers' sampling defaults, used where an option is left unset (null).
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}


@dataclass(frozen=True)
class Decoding:
    """How to continue a prompt: greedy (the default) or sampled, at most `max_new_tokens`."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def generation_config(self, stop_id: int, pad_id: int) -> GenerationConfig:
        """A complete GenerationConfig: every field that changes the output is set here, so
        nothing is taken from the language model's own generation defaults (which, e.g., carry
        the LLM's `</s>` as end token where the chat template stops at `<|im_end|>`)."""
        settings: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=0,
            do_sample=self.do_sample,
            num_beams=1,
            num_return_sequences=1,
            repetition_penalty=1.0,
            eos_token_id=stop_id,
            pad_token_id=pad_id,
        )
        if self.do_sample:
            for key, default in SAMPLING_DEFAULTS.items():
                value = getattr(self, key)
                settings[key] = default if value is None else value
        return GenerationConfig(**settings)


def generate_tokens(
    language_model: Any,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    decoding: Decoding,
    *,
    stop_id: int,
    pad_id: int,
    prompt_cache: Any = None,
    cache_kwarg: str = "cache",
) -> list[list[int]]:
    """New token ids per row, up to (not including) the stop token.

    `inputs_embeds` [B, N, d] and `attention_mask` [B, N] describe the whole left-padded prompt.
    `prompt_cache`, when given, holds the KV cache of its first N - 1 tokens (`cache_kwarg` is the
    name this transformers version gives that argument). With `decoding.seed` the draw uses a
    private generator state, so the same call gives the same text and torch's global generator
    is left as it was; without one, sampling draws from the global generator, as the official
    code does.
    """
    kwargs = {cache_kwarg: prompt_cache} if prompt_cache is not None else {}
    config = decoding.generation_config(stop_id, pad_id)
    seeded = decoding.do_sample and decoding.seed is not None
    with _private_rng_state(inputs_embeds.device) if seeded else nullcontext():
        if seeded:
            torch.manual_seed(decoding.seed)
        sequences = language_model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            generation_config=config,
            **kwargs,
        )
    # Only inputs_embeds went in, so the output holds the new tokens alone; a row that stopped
    # early is padded after its stop token.
    rows = []
    for row in sequences.tolist():
        rows.append(row[: row.index(stop_id)] if stop_id in row else row)
    return rows


def _private_rng_state(device: torch.device) -> Any:
    """Saves the generator states a seeded draw changes (the CPU's and, on CUDA, every GPU's:
    `torch.manual_seed` seeds them all) and restores them afterwards."""
    if device.type == "cuda":
        return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())), device_type="cuda")
    return torch.random.fork_rng(devices=[])


__all__ = ["Decoding", "SAMPLING_DEFAULTS", "generate_tokens"]
