"""The service's limits and switches, per worker process (each worker has its own model and queue)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humanaes.config_keys import check_keys
from humanaes.errors import HumanAesError

#: environment variable holding comma-separated API keys
API_KEYS_ENV = "HUMANAES_API_KEYS"
#: a service never decodes images larger than this by default (a 40 MP photo is ~120 MB as RGB);
#: larger ones are an error entry for that item
DEFAULT_SERVE_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ServeSettings:
    """Limits of one worker. Memory is bounded by about max_queue x max_upload_mb of request
    bodies (spooled to disk above 1 MB per file) plus one model batch of decoded images."""

    max_batch: int = 8  # images per model call
    max_wait_ms: float = 10.0  # how long the first image of a batch waits for company
    max_queue: int = 32  # requests admitted at once (reading, waiting or being scored); more get 429
    max_upload_mb: float = 20.0  # request body limit; larger gets 413 without being read
    max_files: int = 16  # images per request; more gets 413
    timeout_s: float = 30.0  # whole request (body read, queue, model); past it: 408 (body) or 504
    max_pixels: int = DEFAULT_SERVE_MAX_PIXELS  # per image; larger is an error entry for that item
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = [
            ("max_batch", self.max_batch >= 1, "at least 1"),
            ("max_wait_ms", self.max_wait_ms >= 0, "0 or more"),
            ("max_queue", self.max_queue >= 1, "at least 1"),
            ("max_upload_mb", self.max_upload_mb > 0, "more than 0"),
            ("max_files", self.max_files >= 1, "at least 1"),
            ("timeout_s", self.timeout_s > 0, "more than 0"),
            ("max_pixels", self.max_pixels >= 1, "at least 1"),
        ]
        for name, ok, need in checks:
            if not ok:
                raise HumanAesError(f"--{name.replace('_', '-')} must be {need}, got {getattr(self, name)!r}")
        if any(not k or k != k.strip() for k in self.api_keys):
            raise HumanAesError("API keys must be non-empty and carry no surrounding spaces")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_json(self) -> str:
        """For handing the settings to worker processes (keys included: keep it in the environment)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        data: dict[str, Any] = json.loads(text)
        check_keys(cls, data, "service settings")  # settings of another humanaes version: say which key
        for key in ("api_keys", "cors_origins"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


def load_api_keys(keys_file: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Keys from HUMANAES_API_KEYS (comma-separated) and/or a file (one per line, # comments)."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(API_KEYS_ENV, "").split(",") if k.strip()]
    if keys_file is not None:
        path = Path(keys_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise HumanAesError(f"--api-keys-file {path}: cannot read it ({exc.strerror or exc})") from None
        file_keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not file_keys:
            raise HumanAesError(f"--api-keys-file {path} holds no keys")
        keys.extend(file_keys)
    return tuple(dict.fromkeys(keys))
