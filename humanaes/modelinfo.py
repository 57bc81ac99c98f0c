"""What a model's scores mean and whose licence its weights carry, by the name in result rows.

Plain data lookups (the packaged presets and the bundled model's metadata JSON), no torch: the
report, `humanaes models` and the registry all describe models the same way from here.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

BUNDLED_NAME = "humanaes-mini"
HUMANAESEXPERT_LICENCE = (
    "set by the HumanAesExpert release (KwaiVGI/HumanAesExpert; its code is MIT-licensed): "
    "check the model card of the checkpoint you use"
)
HUMANAESEXPERT_MEANING = "human image aesthetics in [0, 1], trained on HumanBeauty (108K human images, 12 dimensions)"
_HUMANAESEXPERT_NAME = re.compile(r"humanaes-?expert", re.IGNORECASE)


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


@lru_cache(maxsize=1)
def bundled_metadata() -> dict[str, Any]:
    """The bundled model's metadata JSON (description, licence, validation metrics); {} if absent."""
    meta = resources.files("humanaes.models.mini").joinpath(f"{BUNDLED_NAME}.json")
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=None)
def _preset(name: str) -> dict[str, Any] | None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name == "templates":
        return None
    preset = resources.files("humanaes.models.expert.presets").joinpath(f"{name}.json")
    try:
        return json.loads(preset.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def bundled_score_meaning() -> str:
    metrics = bundled_metadata().get("val_metrics") or {}
    measured = ", ".join(
        f"{k.upper()} {metrics[k]:.3f}" for k in ("plcc", "srcc") if isinstance(metrics.get(k), (int, float))
    )
    return "facial attractiveness ratings of MEBeauty raters in [0, 1] (a proxy, NOT HumanAesExpert)" + (
        f"; MEBeauty val {measured}" if measured else ""
    )


def bundled_licence() -> str:
    # The metadata's licence text is long (it lists the ImageNet initialisations); its first
    # sentence is what a reader of a score needs.
    full = str(bundled_metadata().get("licence") or "weights derived from MEBeauty: non-commercial research use only")
    return full.split(". ")[0].rstrip(".")


def model_facts(name: str | None) -> ModelFacts:
    """Facts about the model a result row names (its `model` column)."""
    name = (name or "").strip() or "unknown model"
    if name == BUNDLED_NAME:
        return ModelFacts(name, f"{name}, the bundled proxy model (not HumanAesExpert)", bundled_score_meaning(),
                          bundled_licence(), True)
    preset = _preset(name)
    if preset is not None and preset.get("random_init"):
        return ModelFacts(name, f"{name}, random weights (not a trained model)",
                          str(preset.get("score_meaning") or "none: random weights"), "MIT (random weights made by humanaes)",
                          True)
    if preset is not None or _HUMANAESEXPERT_NAME.search(name):
        meaning = str((preset or {}).get("score_meaning") or HUMANAESEXPERT_MEANING)
        return ModelFacts(name, f"{name} (HumanAesExpert)", meaning, HUMANAESEXPERT_LICENCE, False)
    return ModelFacts(
        name, name,
        "not a model humanaes knows by this name (e.g. a fine-tuned checkpoint): its scores mean what its training labels meant",
        "unknown to humanaes: see where these weights came from", False,
    )


__all__ = ["BUNDLED_NAME", "ModelFacts", "bundled_licence", "bundled_metadata", "bundled_score_meaning", "model_facts"]
