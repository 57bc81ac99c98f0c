"""Typed scoring options: each scorer declares the options it takes as a frozen dataclass.

A scorer's `options_class` lists every keyword its `score()` / `iter_score()` accept besides
`mode`, `batch_size` and `names`, with a type, a default and a help text. From that one
declaration come:

- validation (`parse_options`): an unknown or ill-typed option is a `HumanAesError` naming it,
  never silently ignored;
- a plain-data description (`describe_options`, `options_json_schema`) that the HTTP service
  publishes in `/v1/models` and validates requests against;
- a record of a run (`dataclasses.asdict(options)`), e.g. for a batch job's fingerprint.

Options shared by every scorer (decoding) live in `ScoreOptions`; a model family subclasses it.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Union

from humanaes.errors import HumanAesError

# Our own per-call bomb limit (the same number as Pillow's hard limit: 2 x MAX_IMAGE_PIXELS).
# Pillow's limit is a process-wide global, so we never set it; see `humanaes.io.images._open_lazy` for how a larger
# `max_pixels` is honoured.
DEFAULT_MAX_PIXELS = 178_956_970


def option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    client: bool = True,
) -> Any:
    """A dataclass field of an options class.

    `client=False` marks an option that whoever runs the scorer sets (e.g. a decompression-bomb
    limit): the HTTP service neither publishes it nor lets a request change it.
    """
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, "client": client})


@dataclass(frozen=True)
class ScoreOptions:
    """Options every scorer takes: how images are decoded."""

    apply_exif: bool = option(
        True, "Rotate/flip by the EXIF orientation tag (false reproduces the official code, which ignores it)."
    )
    max_pixels: int | None = option(
        DEFAULT_MAX_PIXELS,
        "Refuse images with more pixels than this before decoding them (decompression-bomb guard); null = no limit.",
        minimum=1,
        client=False,
    )

    def check_mode(self, mode: str) -> None:
        """Refuse settings that would have no effect in `mode` (HumanAesError), so that none is
        silently ignored; e.g. sampling settings in a mode that writes no text. An options class
        whose settings apply to some modes only overrides this."""


@dataclass(frozen=True)
class _Kind:
    """What values one option accepts, read from its type annotation."""

    base: str  # "boolean" | "integer" | "number" | "string"
    nullable: bool
    choices: tuple[Any, ...] | None = None


_BASES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _kind_of(annotation: Any, where: str) -> _Kind:
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"{where}: only X or X | None option types are supported, got {annotation!r}")
        annotation = members[0]
        origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        base = {type(c) for c in choices}
        if len(base) != 1 or next(iter(base)) not in _BASES:
            raise TypeError(f"{where}: Literal options must be all of one plain type, got {choices!r}")
        return _Kind(_BASES[next(iter(base))], nullable, tuple(choices))
    if annotation not in _BASES:
        raise TypeError(f"{where}: option type {annotation!r} is not bool, int, float, str or a Literal")
    return _Kind(_BASES[annotation], nullable)


@lru_cache(maxsize=None)
def _fields(options_class: type) -> tuple[tuple[dataclasses.Field, _Kind], ...]:
    if not (isinstance(options_class, type) and issubclass(options_class, ScoreOptions)):
        raise TypeError(f"{options_class!r} is not a ScoreOptions dataclass")
    hints = typing.get_type_hints(options_class)
    return tuple(
        (f, _kind_of(hints[f.name], f"{options_class.__name__}.{f.name}")) for f in dataclasses.fields(options_class)
    )


def describe_options(options_class: type[ScoreOptions], *, client_only: bool = False) -> list[dict[str, Any]]:
    """One plain dict per option: name, type, nullable, default, help, and minimum/maximum/choices
    when the option has them. `client_only` leaves out options a service client may not set."""
    rows = []
    for f, kind in _fields(options_class):
        if client_only and not f.metadata.get("client", True):
            continue
        row: dict[str, Any] = {
            "name": f.name,
            "type": kind.base,
            "nullable": kind.nullable,
            "default": f.default,
            "help": f.metadata.get("help", ""),
        }
        for key in ("minimum", "maximum"):
            if f.metadata.get(key) is not None:
                row[key] = f.metadata[key]
        if kind.choices is not None:
            row["choices"] = list(kind.choices)
        rows.append(row)
    return rows


def options_json_schema(options_class: type[ScoreOptions], *, client_only: bool = False) -> dict[str, Any]:
    """The options as a JSON Schema object (no other properties allowed)."""
    properties: dict[str, Any] = {}
    for row in describe_options(options_class, client_only=client_only):
        prop: dict[str, Any] = {"type": [row["type"], "null"] if row["nullable"] else row["type"]}
        prop.update(default=row["default"], description=row["help"])
        for key in ("minimum", "maximum"):
            if key in row:
                prop[key] = row[key]
        if "choices" in row:
            prop["enum"] = row["choices"] + ([None] if row["nullable"] else [])
        properties[row["name"]] = prop
    return {"type": "object", "properties": properties, "additionalProperties": False}


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NULL = ("", "none", "null")


def _from_text(text: str, kind: _Kind) -> Any:
    """A form field or query value (always text) -> the option's type; ValueError if it is not one."""
    lowered = text.strip().lower()
    if kind.nullable and lowered in _NULL:
        return None
    if kind.base == "boolean":
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError
    if kind.base == "integer":
        return int(text.strip())
    if kind.base == "number":
        return float(text.strip())
    return text


def _check_value(name: str, value: Any, f: dataclasses.Field, kind: _Kind, from_text: bool) -> Any:
    expected = {"boolean": "true or false", "integer": "an integer", "number": "a number", "string": "a string"}[kind.base]
    if kind.choices is not None:
        expected = "one of " + ", ".join(repr(c) for c in kind.choices)
    bounds = [f"{op} {f.metadata[key]}" for key, op in (("minimum", ">="), ("maximum", "<=")) if f.metadata.get(key) is not None]
    if bounds:
        expected += " " + " and ".join(bounds)
    if kind.nullable:
        expected += " (or null)"

    def bad() -> HumanAesError:
        shown = repr(value)
        if len(shown) > 60:  # a request may send megabytes where a flag belongs: keep the message one short line
            shown = shown[:57] + "..."
        return HumanAesError(f"option {name!r} must be {expected}, got {shown}")

    if from_text and isinstance(value, str):
        try:
            value = _from_text(value, kind)
        except ValueError:
            raise bad() from None
    if value is None:
        if kind.nullable:
            return None
        raise bad()
    if kind.base == "boolean":
        if not isinstance(value, bool):
            raise bad()
    elif kind.base == "integer":
        # bool is an int in Python; True as a tile count is a bug, not a 1
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad()
        value = int(value)
    elif kind.base == "number":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:  # NaN fails
            raise bad()
        value = float(value)
    elif not isinstance(value, str):
        raise bad()
    if kind.choices is not None and value not in kind.choices:
        raise bad()
    if f.metadata.get("minimum") is not None and value < f.metadata["minimum"]:
        raise bad()
    if f.metadata.get("maximum") is not None and value > f.metadata["maximum"]:
        raise bad()
    return value


def option_pairs(texts: Iterable[str], flag: str = "--option") -> dict[str, str]:
    """`NAME=VALUE` texts (the CLI's repeatable `-o`) -> {name: text value}; names may use dashes.
    The values stay text: `parse_options(..., from_text=True)` types them against the model's
    options. HumanAesError for an item without `=` or without a name."""
    pairs: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise HumanAesError(f"{flag} {text!r}: expected NAME=VALUE, e.g. use_face=false")
        pairs[name.strip().replace("-", "_")] = value.strip()
    return pairs


def parse_options(
    options_class: type[ScoreOptions],
    values: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    owner: str = "this model",
    from_text: bool = False,
    client_only: bool = False,
) -> ScoreOptions:
    """Validate `values` into an `options_class` instance; unset options take `defaults`, then
    the declared defaults.

    Raises HumanAesError naming every unknown option (and what `owner` takes instead), or the
    first ill-typed one with what it must be. `from_text` converts text values ("true", "6",
    "null") first, as form fields arrive; `client_only` refuses options a service client may
    not set as unknown."""
    known = {f.name: (f, kind) for f, kind in _fields(options_class)}
    allowed = {n for n, (f, _) in known.items() if not client_only or f.metadata.get("client", True)}
    unknown = [name for name in values if name not in allowed]
    if unknown:
        takes = ", ".join(sorted(allowed)) or "none"
        listed = ", ".join(repr(n) for n in unknown)
        noun = "option" if len(unknown) == 1 else "options"
        raise HumanAesError(f"{noun} {listed} not available with {owner} (it takes: {takes})")
    merged: dict[str, Any] = {}
    for name, value in {**(defaults or {}), **values}.items():
        f, kind = known[name]
        merged[name] = _check_value(name, value, f, kind, from_text and name in values)
    return options_class(**merged)


def model_options(options: ScoreOptions) -> dict[str, Any]:
    """The options a model family added on top of `ScoreOptions` (what its hooks receive)."""
    shared = {f.name for f in dataclasses.fields(ScoreOptions)}
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in shared}


__all__ = ["ScoreOptions", "describe_options", "model_options", "option", "options_json_schema", "parse_options"]
