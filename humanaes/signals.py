"""Signal handling shared by the long-running commands (score, batch and its Ray driver)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (plain `kill`) like Ctrl-C inside the block, so writers close cleanly and
    keep every committed row. Outside the main thread (where handlers cannot be set) or on a
    platform without SIGTERM the block runs unchanged. Entering it again after a library has
    replaced the handler (ray.init installs one that aborts the process) restores ours."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
