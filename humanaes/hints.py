"""Fix-it hints that name what the caller can actually change.

The same mistake is fixed with different words depending on who made it: a Python caller passes
`device="cpu"` to `humanaes.load`, a CLI user passes `--device cpu`, a training config sets
`init: ...`. Library code raises with `hint(api=..., cli=..., config=...)`; the CLI commands
declare their style with `hint_style("cli")` (or "config" for `humanaes train`), and everyone
else gets the API wording. A context variable, so threads and async servers keep their own style.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterator
from typing import Any

HINT_STYLES = ("api", "cli", "config")
_style: contextvars.ContextVar[str] = contextvars.ContextVar("humanaes_hint_style", default="api")


def current_style() -> str:
    """The hint style in force: "api" unless a CLI command set another."""
    return _style.get()


@contextlib.contextmanager
def hint_style(style: str) -> Iterator[None]:
    """Phrase hints raised inside this block for `style` ("api", "cli" or "config")."""
    if style not in HINT_STYLES:
        raise ValueError(f"unknown hint style {style!r}; one of {', '.join(HINT_STYLES)}")
    token = _style.set(style)
    try:
        yield
    finally:
        _style.reset(token)


def hint(*, api: str, cli: str, config: str | None = None) -> str:
    """The wording for the current caller; a config file's wording falls back to the CLI's
    (`humanaes train` is a command too) when no config-specific one is given."""
    style = _style.get()
    if style == "cli":
        return cli
    if style == "config":
        return config if config is not None else cli
    return api


# Optional imports -> (pip distribution, humanaes extra that installs it). Keep in step with
# pyproject.toml's [project.optional-dependencies].
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "peft": ("peft", "train"),
    "accelerate": ("accelerate", "train"),
    "yaml": ("PyYAML", "train"),
    "pyarrow": ("pyarrow", "parquet"),
    "deepspeed": ("deepspeed", "deepspeed"),
    "pillow_heif": ("pillow-heif", "heif"),
    "sentencepiece": ("sentencepiece", "internlm2"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "multipart": ("python-multipart", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "ray": ("ray", "ray"),
}


def missing_extra_message(module: str | None, purpose: str) -> str | None:
    """A one-line fix for an optional module that is not installed, or None when `module` is
    not one of humanaes' optional dependencies (then it is a bug, not a missing extra)."""
    top = (module or "").split(".")[0]
    if top not in OPTIONAL_MODULES:
        return None
    distribution, extra = OPTIONAL_MODULES[top]
    return f"{purpose} needs {distribution}, which is not installed: pip install 'humanaes[{extra}]'"


def import_optional(module: str, purpose: str) -> Any:
    """`importlib.import_module(module)`, or a HumanAesError naming the extra to install."""
    from humanaes.errors import HumanAesError

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc.name or module, purpose)
        if message is None:
            raise
        raise HumanAesError(message) from None
