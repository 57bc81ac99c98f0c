"""humanaes-mini: the small model shipped inside the package (see docs/model-card-humanaes-mini.md).

Importing the package registers the family (`family.py`, no torch); the model classes and
loaders below import torch, so they load on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from humanaes.models.mini import family  # noqa: F401 - registers the family with the model registry

# Public name -> module, imported on first access.
_LAZY: dict[str, str] = {
    "HumanAesMini": "humanaes.models.mini.modeling",
    "MiniConfig": "humanaes.models.mini.modeling",
    "MiniEnsemble": "humanaes.models.mini.modeling",
    "BundledScorer": "humanaes.models.mini.scorer",
    "load_bundled": "humanaes.models.mini.scorer",
    "load_mini_model": "humanaes.models.mini.weights",
    "load_model": "humanaes.models.mini.weights",
    "save_bundled": "humanaes.models.mini.scorer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["BundledScorer", "HumanAesMini", "MiniConfig", "MiniEnsemble", "load_bundled", "load_mini_model", "load_model", "save_bundled"]
