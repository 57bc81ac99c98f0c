"""humanaes: HumanAesExpert human image aesthetic assessment as software."""

from __future__ import annotations

__version__ = "0.1.0"

from humanaes.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    HumanAesError,
    ImageLoadError,
    ModelNotFoundError,
)
from humanaes.schema import DIMENSIONS, LEVELS, ScoreResult, score_to_level

__all__ = [
    "__version__",
    "DIMENSIONS",
    "LEVELS",
    "ScoreResult",
    "score_to_level",
    "HumanAesError",
    "ImageLoadError",
    "ModelNotFoundError",
    "CheckpointError",
    "ConfigError",
    "DataError",
]
