"""What a model's scores mean and whose licence its weights carry, by the name in result rows.

Each registered model family says it for its own names (`ModelFamily.facts`, plain data, no
torch): the report, `humanaes models` and the registry all describe models the same way.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any

# Names that lived here before the families did; they now live with their family.
_MOVED = {
    "BUNDLED_NAME": "humanaes.models.mini.family",
    "bundled_licence": "humanaes.models.mini.family",
    "bundled_metadata": "humanaes.models.mini.family",
    "bundled_score_meaning": "humanaes.models.mini.family",
    "HUMANAESEXPERT_LICENCE": "humanaes.models.expert.family",
    "HUMANAESEXPERT_MEANING": "humanaes.models.expert.family",
}


@dataclass(frozen=True)
class ModelFacts:
    """How to present a model's results to a reader."""

    name: str
    #: a short phrase naming what produced the scores, e.g. "humanaes-mini, a proxy model (not HumanAesExpert)"
    title: str
    score_meaning: str
    licence: str
    #: True for models whose score is not HumanAesExpert's (the bundled proxy, random presets)
    not_humanaesexpert: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_facts(name: str | None) -> ModelFacts:
    """Facts about the model a result row names (its `model` column): from the family that
    knows the name, else a plain statement that humanaes does not know it."""
    from humanaes.models.registry import model_facts as registered_facts

    name = (name or "").strip() or "unknown model"
    facts = registered_facts(name)
    if facts is not None:
        return facts
    return ModelFacts(
        name, name,
        "not a model humanaes knows by this name (e.g. a fine-tuned checkpoint): its scores mean what its training labels meant",
        "unknown to humanaes: see where these weights came from", False,
    )


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelFacts", "model_facts"]  # the _MOVED names still import from here (see __getattr__)
