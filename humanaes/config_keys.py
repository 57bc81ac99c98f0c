"""The one check that a mapping read from JSON/YAML (or a command line) has only known keys."""

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
    check_known_keys(data, field_names(cls), what)


def check_known_keys(data: Mapping[str, Any] | Iterable[str], valid: Iterable[str], what: str) -> None:
    """`check_keys` for settings that are not one dataclass (a YAML section read key by key, a
    command's key=value arguments): the same ConfigError, with `valid` listed sorted."""
    valid = sorted(valid)
    unknown = [key for key in data if key not in valid]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ConfigError(f"unknown {what} key{'s' if len(unknown) > 1 else ''} {keys}; valid keys: {', '.join(valid)}")
