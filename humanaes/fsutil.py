"""File-system helpers shared by everything that writes checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move a fully written folder `tmp` to `final`, replacing any previous one.

    Writers fill a temporary folder and publish it last, so a folder under its final name is
    always complete: an interrupted save leaves only a stray temporary folder behind.
    """
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final
