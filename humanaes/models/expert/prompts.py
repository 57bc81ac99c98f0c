"""Questions, answers and chat templates of HumanAesExpert (reference section 4).

Templates are data (presets/templates.json): the exact strings of InternVL2's `Hermes-2` and
`internlm2-chat` conversation templates, which the golden fixtures record.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

from humanaes.errors import ConfigError
from humanaes.schema import DIMENSIONS, LEVELS, NUM_DIMENSIONS, score_to_level

GENERAL_QUESTIONS: tuple[str, ...] = (
    "Can you evaluate the aesthetics of the human image?",
    "Rate the aesthetics of this human picture.",
    "How is the aesthetics of this human image?",
    "Can you rate the aesthetics of this human picture?",
    "Please evaluate the aesthetics of the human image.",
)
EXPERT_SUFFIX = " from 12 different dimensions"
# The same five with the suffix before the final punctuation.
EXPERT_QUESTIONS: tuple[str, ...] = tuple(q[:-1] + EXPERT_SUFFIX + q[-1] for q in GENERAL_QUESTIONS)

# The official README's question, used by fast mode.
DEFAULT_GENERAL_QUESTION = "Rate the aesthetics of this human picture."
DEFAULT_EXPERT_QUESTION = "Rate the aesthetics of this human picture from 12 different dimensions."

ANSWER_PREFIX = "The aesthetics of the human image is"

IMAGE_PLACEHOLDER = "<image>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"


def overall_answer(score_or_level: float | str) -> str:
    """`The aesthetics of the human image is <level>` (no final period, as in the release)."""
    level = score_or_level if isinstance(score_or_level, str) else score_to_level(score_or_level)
    return f"{ANSWER_PREFIX} {level}"


def expert_answer(scores: Sequence[float]) -> str:
    """Twelve lines `<i>. <name> : <level>`, in DIMENSIONS order."""
    if len(scores) != NUM_DIMENSIONS:
        raise ValueError(f"expected {NUM_DIMENSIONS} scores, got {len(scores)}")
    return "\n".join(f"{i}. {name} : {score_to_level(float(s))}" for i, (name, s) in enumerate(zip(DIMENSIONS, scores), 1))


_ANNOTATION_LINE = re.compile(r"^\s*(\d{1,2})\s*\.\s*(.+?)\s*:\s*([A-Za-z]+)\s*$")


def parse_expert_answer(text: str) -> dict[str, str]:
    """Read `<i>. <name> : <level>` lines back into {dimension: level}; unknown lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _ANNOTATION_LINE.match(line)
        if not match:
            continue
        index = int(match.group(1)) - 1
        if 0 <= index < NUM_DIMENSIONS:
            out[DIMENSIONS[index]] = match.group(3).lower()
    return out


def random_question(rng: random.Random, expert: bool) -> str:
    """A question of the right kind, picked at random (training, reference section 4)."""
    return rng.choice(EXPERT_QUESTIONS if expert else GENERAL_QUESTIONS)


@dataclass(frozen=True)
class ChatTemplate:
    """One InternVL2 conversation template, as data."""

    name: str
    system_template: str
    system_message: str
    user_start: str
    assistant_start: str
    separator: str
    stop: str

    def render(self, user_text: str, system_message: str | None = None, assistant_text: str = "") -> str:
        system = self.system_template.format(system_message=self.system_message if system_message is None else system_message)
        return (
            f"{system}{self.separator}{self.user_start}{user_text}{self.separator}"
            f"{self.assistant_start}{assistant_text}"
        )


@lru_cache(maxsize=None)
def _templates() -> dict[str, dict]:
    text = resources.files("humanaes.models.expert.presets").joinpath("templates.json").read_text(encoding="utf-8")
    return json.loads(text)


def get_template(name: str) -> ChatTemplate:
    templates = _templates()
    if name not in templates:
        raise ConfigError(f"unknown chat template {name!r}; known templates: {', '.join(sorted(templates))}")
    return ChatTemplate(name=name, **templates[name])


def image_block(num_tiles: int, tokens_per_tile: int, suffix: str = "") -> str:
    """`<img>` + `<IMG_CONTEXT>` x (tokens_per_tile x tiles) + `</img>` (+ template suffix)."""
    return f"{IMG_START}{IMG_CONTEXT * (tokens_per_tile * num_tiles)}{IMG_END}{suffix}"


def build_prompt(
    template: ChatTemplate,
    question: str,
    num_tiles: int,
    tokens_per_tile: int,
    *,
    system_message: str | None = None,
    image_block_suffix: str = "",
    assistant_text: str = "",
) -> str:
    """The full prompt InternVL2's `chat()` builds: `<image>\\n` + question in the user turn,
    `<image>` replaced by the image block (first occurrence only)."""
    user = f"{IMAGE_PLACEHOLDER}\n{question}"
    user = user.replace(IMAGE_PLACEHOLDER, image_block(num_tiles, tokens_per_tile, image_block_suffix), 1)
    return template.render(user, system_message=system_message, assistant_text=assistant_text)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PromptIds:
    """Token ids of one prompt with a single `<IMG_CONTEXT>` (expanded per image later)."""

    ids: list[int]
    image_slot: int  # index of the single <IMG_CONTEXT>
    pool_index: int  # last prompt token (before any teacher-forced answer text)

    def expand(self, n_image_tokens: int, img_id: int) -> tuple[list[int], int]:
        """Ids with the image block expanded to `n_image_tokens`, and the shifted pool index."""
        ids = self.ids[: self.image_slot] + [img_id] * n_image_tokens + self.ids[self.image_slot + 1 :]
        return ids, self.pool_index + n_image_tokens - 1


class PromptTokenizer:
    """Tokenises HumanAesExpert prompts exactly as InternVL2's chat() does (one string per
    prompt), shared by scoring and training so both see identical token ids."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, system_message: str | None = None, image_block_suffix: str = ""):
        self.tokenizer = tokenizer
        self.template = template
        self.system_message = system_message
        self.image_block_suffix = image_block_suffix
        self.img_context_id = int(tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
        self.stop_id = int(tokenizer.convert_tokens_to_ids(template.stop))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self._cache: dict[tuple[str, bool], PromptIds] = {}

    def prompt(self, question: str, answer_prefix: bool = False) -> PromptIds:
        """One image token stands for the image block; expanding it afterwards is exact because
        `<IMG_CONTEXT>` is a special token that tokenisation never merges with its neighbours."""
        key = (question, answer_prefix)
        if key not in self._cache:
            text = build_prompt(self.template, question, 1, 1, system_message=self.system_message,
                                image_block_suffix=self.image_block_suffix)
            prompt_ids = self.tokenizer(text).input_ids
            if answer_prefix:
                ids = self.tokenizer(text + ANSWER_PREFIX).input_ids
                pool = common_prefix_length(prompt_ids, ids) - 1
            else:
                ids, pool = prompt_ids, len(prompt_ids) - 1
            slots = [i for i, t in enumerate(ids) if t == self.img_context_id]
            if len(slots) != 1:
                raise ConfigError(f"expected one {IMG_CONTEXT} token in the prompt, found {len(slots)}")
            self._cache[key] = PromptIds(ids=ids, image_slot=slots[0], pool_index=pool)
        return self._cache[key]

    def answer_ids(self, answer: str) -> list[int]:
        """Answer tokens followed by the template's stop token (what the model learns to emit)."""
        return self.tokenizer(answer, add_special_tokens=False).input_ids + [self.stop_id]

    def level_first_tokens(self) -> list[int]:
        """First token of each level word as tokenised after the answer prefix (LEVELS order)."""
        base = self.tokenizer(ANSWER_PREFIX, add_special_tokens=False).input_ids
        firsts = []
        for level in LEVELS:
            ids = self.tokenizer(f"{ANSWER_PREFIX} {level}", add_special_tokens=False).input_ids
            n = common_prefix_length(base, ids)
            if n >= len(ids):
                raise ConfigError(f"the tokenizer cannot tell the level word {level!r} apart after the answer prefix")
            firsts.append(ids[n])
        if len(set(firsts)) != len(firsts):
            raise ConfigError(f"level words share first tokens {firsts}; the LM score would be ambiguous")
        return firsts
