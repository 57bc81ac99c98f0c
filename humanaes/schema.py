"""The result schema shared by every scorer: rating levels, the twelve dimensions, ScoreResult.

Everything here is fixed by HumanAesExpert (reference sections 1 and 3): scores live in [0, 1],
levels use the cut points 0.2/0.4/0.6/0.8, and the twelve dimensions keep this exact order in
labels, head outputs and text.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Ordered from worst to best; the cut points separate consecutive levels.
LEVELS: tuple[str, ...] = ("bad", "poor", "fair", "good", "excellent")
LEVEL_CUT_POINTS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
# Centre of each level's bin: the LM head's score is the probability-weighted mean of these,
# so a model that is sure of one level maps back into that level's bin.
LEVEL_CENTRES: dict[str, float] = {"bad": 0.1, "poor": 0.3, "fair": 0.5, "good": 0.7, "excellent": 0.9}

DIMENSIONS: tuple[str, ...] = (
    "Facial Brightness",
    "Facial Feature Clarity",
    "Facial Skin Tone",
    "Facial Structure",
    "Facial Contour Clarity",
    "Facial Aesthetic Score",
    "Outfit",
    "Body Shape",
    "Looks",
    "Environment",
    "General Appearance Aesthetic Score",
    "Comprehensive Aesthetic Score",
)
NUM_DIMENSIONS = len(DIMENSIONS)
# Indices of the leaves and parents in DIMENSIONS (the expert head's tree).
FACE_LEAVES: tuple[int, ...] = (0, 1, 2, 3, 4)
FACE_PARENT = 5
APPEARANCE_LEAVES: tuple[int, ...] = (6, 7, 8)
ENVIRONMENT = 9
APPEARANCE_PARENT = 10
OVERALL = 11
LEAVES: tuple[int, ...] = FACE_LEAVES + APPEARANCE_LEAVES + (ENVIRONMENT,)

SCORE_MODES: tuple[str, ...] = ("fast", "expert", "metavoter", "annotate", "all")


def score_to_level(score: float) -> str:
    """Map a score in [0, 1] to its rating level (bad < 0.2 <= poor < 0.4 <= ... <= excellent)."""
    if score is None or (isinstance(score, float) and math.isnan(score)):
        raise ValueError(f"cannot map score {score!r} to a level")
    for level, cut in zip(LEVELS, LEVEL_CUT_POINTS):
        if score < cut:
            return level
    return LEVELS[-1]


def level_index(level: str) -> int:
    """Position of a level word in LEVELS (0 = bad ... 4 = excellent)."""
    try:
        return LEVELS.index(level.strip().lower())
    except ValueError:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}") from None


@dataclass
class ScoreResult:
    """One image's scores. Fields a model or mode cannot produce are None, never invented.

    overall      the final score of the mode, in [0, 1]
    level        the rating level of `overall`
    lm_score     LM head: level-bin centres weighted by the five level-word probabilities
    level_probs  LM head: the five probabilities, keyed by level name
    regression_score  regression head
    expert       the twelve expert-head scores keyed by dimension name, reference order
    expert_levels     the levels of those twelve scores
    metavoter_score   the MetaVoter's fusion of the three heads
    annotation   the LM-written twelve-line annotation (annotate mode only)
    error        None, or a message naming the item and the cause
    person_found True/False when the model has a person (face) detector, None when it has none:
                 scores of images without a detectable person are not meaningful
    """

    image: str
    overall: float | None = None
    level: str | None = None
    lm_score: float | None = None
    level_probs: dict[str, float] | None = None
    regression_score: float | None = None
    expert: dict[str, float] | None = None
    expert_levels: dict[str, str] | None = None
    metavoter_score: float | None = None
    annotation: str | None = None
    error: str | None = None
    person_found: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not data["extra"]:
            data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScoreResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def failed(cls, image: str, error: str) -> "ScoreResult":
        return cls(image=image, error=error)

    def set_expert(self, scores: "list[float]") -> None:
        """Fill `expert` and `expert_levels` from twelve scores in DIMENSIONS order."""
        if len(scores) != NUM_DIMENSIONS:
            raise ValueError(f"expected {NUM_DIMENSIONS} expert scores, got {len(scores)}")
        self.expert = {name: float(s) for name, s in zip(DIMENSIONS, scores)}
        self.expert_levels = {name: score_to_level(float(s)) for name, s in zip(DIMENSIONS, scores)}

    def finalize(self, overall: float | None) -> "ScoreResult":
        """Set `overall` and its `level`."""
        self.overall = None if overall is None else float(overall)
        self.level = None if overall is None else score_to_level(float(overall))
        return self
