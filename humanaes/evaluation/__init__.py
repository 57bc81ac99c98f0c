"""Evaluation: `evaluate` (a scorer on a labelled split -> EvalReport), `metrics`, `plots`.

`from humanaes.evaluation import evaluate, EvalReport` keeps working from when this was one
module (`humanaes/evaluation.py`); the names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    evaluator = importlib.import_module("humanaes.evaluation.evaluator")
    try:
        return getattr(evaluator, name)
    except AttributeError:
        raise AttributeError(f"module 'humanaes.evaluation' has no attribute {name!r}") from None
