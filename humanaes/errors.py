"""User-facing errors. Each carries one sentence naming the thing at fault and the fix.

The CLI and the service print `str(error)` for these and exit non-zero / answer 4xx; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HumanAesError(Exception):
    """Base class of errors caused by user input (paths, models, options, data)."""


class ImageLoadError(HumanAesError):
    """An image could not be read; the message names the item and the cause."""

    def __init__(self, item: str, cause: str):
        self.item = item
        self.cause = cause
        super().__init__(f"{item}: {cause}")


class ModelNotFoundError(HumanAesError):
    """The model name or path does not resolve to a model."""


class CheckpointError(HumanAesError):
    """A checkpoint exists but cannot be loaded as asked (keys, shapes, format)."""


class ConfigError(HumanAesError):
    """A configuration key or value is not valid."""


class DataError(HumanAesError):
    """A data set file or row is malformed."""
