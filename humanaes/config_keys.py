"""The one check that a mapping read from JSON/YAML has only keys a config dataclass knows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from humanaes.errors import ConfigError


def field_names(cls: type) -> list[str]:
    """The field names of dataclass `cls`, sorted."""
    return sorted(f.name for f in dataclasses.fields(cls))


def check_keys(cls: type, data: Mapping[str, Any] | Iterable[str], what: str) -> None:
    """Refuse keys that are not fields of dataclass `cls` with a ConfigError naming every
    unknown key (in the order given) and the valid ones: a misspelt key is never ignored."""
    valid = field_names(cls)
    unknown = [key for key in data if key not in valid]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ConfigError(f"unknown {what} key{'s' if len(unknown) > 1 else ''} {keys}; valid keys: {', '.join(valid)}")
