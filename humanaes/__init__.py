"""humanaes: HumanAesExpert human image aesthetic assessment as software.

    import humanaes
    scorer = humanaes.load("path/to/HumanAesExpert-1B")
    results = scorer.score(["a.jpg", "b.png"], mode="metavoter", batch_size=8)
"""

from __future__ import annotations

__version__ = "0.1.0"

from humanaes.api import BaseScorer
from humanaes.config import HumanAesConfig
from humanaes.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    HumanAesError,
    ImageLoadError,
    ModelNotFoundError,
)
from humanaes.registry import create_model, get_preset, list_models, list_presets, load
from humanaes.schema import DIMENSIONS, LEVELS, SCORE_MODES, ScoreResult, score_to_level


def __getattr__(name: str):
    # Heavier pieces load on first use so `import humanaes` stays fast for the CLI.
    if name == "HumanAesScorer":
        from humanaes.scoring import HumanAesScorer

        return HumanAesScorer
    if name == "HumanAesExpertModel":
        from humanaes.modeling import HumanAesExpertModel

        return HumanAesExpertModel
    if name in ("save_checkpoint", "save_humanaes"):
        from humanaes.checkpoint import save_humanaes

        return save_humanaes
    raise AttributeError(f"module 'humanaes' has no attribute {name!r}")


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
