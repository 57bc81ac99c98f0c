"""humanaes-mini: the small model shipped inside the package (see docs/model-card-humanaes-mini.md)."""

from __future__ import annotations

from humanaes.models.mini.modeling import HumanAesMini, MiniConfig, MiniEnsemble
from humanaes.models.mini.scorer import BundledScorer, load_bundled, load_model, save_bundled

__all__ = ["BundledScorer", "HumanAesMini", "MiniConfig", "MiniEnsemble", "load_bundled", "load_model", "save_bundled"]
