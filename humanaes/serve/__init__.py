"""`humanaes serve`: the HTTP scoring service (needs the `serve` extra: `pip install humanaes[serve]`).

Public API:
  create_app(scorer=None, *, settings=None, model=None, load_options=None) -> FastAPI app
  ServeSettings   the per-worker limits (frozen dataclass; to_json/from_json for workers)
  MicroBatcher    asyncio micro-batcher feeding one model thread (no web framework needed)
  load_api_keys   keys from HUMANAES_API_KEYS and/or a keys file

Names resolve lazily so that the batcher and settings work without FastAPI installed.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_app": "humanaes.serve.app",
    "ServeSettings": "humanaes.serve.settings",
    "load_api_keys": "humanaes.serve.settings",
    "MicroBatcher": "humanaes.serve.batcher",
    "BatcherClosed": "humanaes.serve.batcher",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'humanaes.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = sorted(_EXPORTS)
