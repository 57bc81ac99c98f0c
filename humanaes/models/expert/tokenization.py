"""Tokenizers without remote code: Qwen2 (1B) and InternLM2 (8B) checkpoints, and the packaged
tiny tokenizer of random-init presets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from humanaes.errors import CheckpointError
from humanaes.models.expert.config import PACKAGED_PREFIX

SPECIAL_TOKENS_NEEDED = ("<img>", "</img>", "<IMG_CONTEXT>")


def packaged_tokenizer_dir(name: str) -> Path:
    path = Path(str(resources.files("humanaes.models.expert.presets").joinpath("tokenizers", name)))
    if not (path / "tokenizer.json").exists():
        raise CheckpointError(f"no packaged tokenizer named {name!r}")
    return path


def load_tokenizer(source: str | Path) -> Any:
    """Load a tokenizer folder (or "packaged:<name>") with trust_remote_code=False.

    Released InternVL2 folders name remote tokenizer classes in their configs; a tokenizer.json
    (Qwen2, or a converted InternLM2) loads as a plain fast tokenizer, and an InternLM2 folder
    with only `tokenizer.model` is converted from SentencePiece (needs `sentencepiece`).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = str(source)
    path = packaged_tokenizer_dir(source[len(PACKAGED_PREFIX):]) if source.startswith(PACKAGED_PREFIX) else Path(source)
    if (path / "tokenizer.json").exists():
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001 - report which folder is broken
            raise CheckpointError(f"cannot load the tokenizer in {path}: {exc}") from None
    elif (path / "tokenizer.model").exists():
        tokenizer = _internlm2_from_sentencepiece(path)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"no tokenizer found in {path} (expected tokenizer.json or tokenizer.model): {exc}"
            ) from None
    missing = [t for t in SPECIAL_TOKENS_NEEDED if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        raise CheckpointError(f"the tokenizer in {path} lacks InternVL2's image tokens {missing}")
    return tokenizer


def _internlm2_from_sentencepiece(path: Path) -> Any:
    """InternLM2's tokenizer is a SentencePiece BPE with byte fallback that prepends `<s>`;
    transformers' Llama tokenizer converts the same model file (needs `sentencepiece` and
    `protobuf`: `pip install "humanaes[internlm2]"`). Added tokens (`<img>`, `<IMG_CONTEXT>`, ...)
    come from tokenizer_config.json's `added_tokens_decoder`; its remote `tokenizer_class` is ignored."""
    try:
        import google.protobuf  # noqa: F401
        import sentencepiece  # noqa: F401
    except ImportError:
        raise CheckpointError(
            f"{path / 'tokenizer.model'} is a SentencePiece tokenizer (InternLM2, the 8B model); converting it needs "
            "`sentencepiece` and `protobuf`: pip install \"humanaes[internlm2]\""
        ) from None
    from transformers import LlamaTokenizer

    try:
        return LlamaTokenizer.from_pretrained(str(path), add_bos_token=True, add_eos_token=False, legacy=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot convert the SentencePiece tokenizer {path / 'tokenizer.model'} ({exc})") from None
