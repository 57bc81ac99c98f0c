"""The typed scoring options of HumanAesExpert scorers (light: no torch, so `humanaes models
--json`, the service and the batch job record can describe them without loading a model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from humanaes.errors import HumanAesError
from humanaes.options import ScoreOptions, option

if TYPE_CHECKING:
    from humanaes.models.expert.generation import Decoding

DEFAULT_MAX_NEW_TOKENS = 200
#: Options that only mean something with do_sample.
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "seed")



@dataclass(frozen=True)
class ExpertOptions(ScoreOptions):
    """Options of HumanAesExpert scorers."""

    # Upper bounds keep one request from holding the model for minutes (a batch, once started, runs to the end).
    max_tiles: int | None = option(
        None, "Most 448-pixel tiles per image (null: the model's own, 12 for the release).", minimum=1, maximum=64
    )
    max_new_tokens: int = option(
        DEFAULT_MAX_NEW_TOKENS, "Most tokens of the generated annotation (annotate/all modes).", minimum=1, maximum=2048
    )
    do_sample: bool = option(
        False,
        "Sample the annotation (annotate/all modes) instead of greedy decoding (greedy is the official chat()'s default; "
        "the official README samples). Greedy text is deterministic; sampled text varies unless seeded.",
    )
    # The sampling settings default to null (= transformers' defaults) so that setting one without
    # do_sample is an error instead of being silently ignored by greedy decoding.
    temperature: float | None = option(
        None, "Sampling temperature (do_sample only; null: 1.0). Lower is closer to greedy.", minimum=0.01, maximum=100.0
    )
    top_k: int | None = option(
        None, "Sample among the k most likely tokens (do_sample only; 0: all; null: 50).", minimum=0, maximum=1_000_000
    )
    top_p: float | None = option(
        None,
        "Sample among the most likely tokens whose probabilities add up to top_p (do_sample only; null: 1.0, all).",
        minimum=0.01,
        maximum=1.0,
    )
    seed: int | None = option(
        None,
        "Seed of the sampling (do_sample only): the same call on the same images and batch size writes the same "
        "text, and torch's global generator is left untouched; null: draw from torch's global generator.",
        minimum=0,
        maximum=2**32 - 1,
    )

    def __post_init__(self) -> None:
        if not self.do_sample:
            for name in SAMPLING_OPTIONS:
                if getattr(self, name) is not None:
                    raise HumanAesError(
                        f"option {name!r} only applies when sampling: set do_sample=true, or leave {name} unset for greedy decoding"
                    )

    def check_mode(self, mode: str) -> None:
        """Sampling settings only shape the annotation: set in a mode that writes none, they would
        be silently ignored, so they are an error (max_new_tokens has a default and is not checked)."""
        if mode in ("annotate", "all"):
            return
        given = [name for name in ("do_sample", *SAMPLING_OPTIONS) if getattr(self, name) not in (None, False)]
        if given:
            raise HumanAesError(
                f"option {given[0]!r} only applies to the annotation (modes annotate and all); mode {mode!r} writes none"
            )

    def decoding(self) -> Decoding:
        """The annotation's decoding settings."""
        from humanaes.models.expert.generation import Decoding

        return Decoding(self.max_new_tokens, self.do_sample, self.temperature, self.top_k, self.top_p, self.seed)
