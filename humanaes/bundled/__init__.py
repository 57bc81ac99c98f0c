"""humanaes-mini: the small model shipped inside the package (see docs/model-card-humanaes-mini.md)."""

from __future__ import annotations

from humanaes.bundled.model import HumanAesMini, MiniConfig, MiniEnsemble
from humanaes.bundled.scorer import BundledScorer, load_bundled, load_model, save_bundled

__all__ = ["BundledScorer", "HumanAesMini", "MiniConfig", "MiniEnsemble", "load_bundled", "load_model", "save_bundled"]
