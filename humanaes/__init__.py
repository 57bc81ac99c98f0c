"""humanaes: HumanAesExpert human image aesthetic assessment as software.

    import humanaes
    scorer = humanaes.load()                     # the bundled humanaes-mini model
    results = scorer.score(["a.jpg", "b.png"])

Importing the package is cheap: only the error classes and the result schema load eagerly.
Everything that needs torch (or transformers, for HumanAesExpert checkpoints) loads on first
use, so `humanaes --help` stays instant and the bundled model never imports transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from humanaes import _moved  # noqa: E402 - old module paths (humanaes.scoring, humanaes.bundled, ...) keep importing

_moved.install()

from humanaes.errors import (  # noqa: E402 - no heavy imports: errors and schema are plain Python
    CheckpointError,
    ConfigError,
    DataError,
    HumanAesError,
    ImageLoadError,
    ModelNotFoundError,
)
from humanaes.schema import DIMENSIONS, LEVELS, SCORE_MODES, ScoreResult, score_to_level  # noqa: E402

# Public name -> (module, attribute), imported on first access.
_LAZY: dict[str, tuple[str, str]] = {
    "load": ("humanaes.models.registry", "load"),
    "create_model": ("humanaes.models.registry", "create_model"),
    "list_models": ("humanaes.models.registry", "list_models"),
    "list_presets": ("humanaes.models.expert.family", "list_presets"),
    "get_preset": ("humanaes.models.expert.family", "get_preset"),
    "save_checkpoint": ("humanaes.models.registry", "save_checkpoint"),
    "save_humanaes": ("humanaes.models.expert.checkpoint", "save_humanaes"),
    "BaseScorer": ("humanaes.scorer", "BaseScorer"),
    "HumanAesConfig": ("humanaes.models.expert.config", "HumanAesConfig"),
    "HumanAesScorer": ("humanaes.models.expert.scorer", "HumanAesScorer"),
    "HumanAesExpertModel": ("humanaes.models.expert.modeling", "HumanAesExpertModel"),
    "default_threads": ("humanaes.runtime", "default_threads"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'humanaes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "load",
    "create_model",
    "list_models",
    "list_presets",
    "get_preset",
    "BaseScorer",
    "HumanAesScorer",
    "HumanAesExpertModel",
    "HumanAesConfig",
    "save_checkpoint",
    "default_threads",
    "DIMENSIONS",
    "LEVELS",
    "SCORE_MODES",
    "ScoreResult",
    "score_to_level",
    "HumanAesError",
    "ImageLoadError",
    "ModelNotFoundError",
    "CheckpointError",
    "ConfigError",
    "DataError",
]
