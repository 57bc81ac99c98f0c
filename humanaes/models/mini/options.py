"""The typed scoring options of humanaes-mini (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from humanaes.options import ScoreOptions, option


@dataclass(frozen=True)
class MiniOptions(ScoreOptions):
    """Options of humanaes-mini."""

    use_face: bool = option(True, "Use the face branch when a face is found (false: whole-picture CNNs only).")
    tta_flip: bool | None = option(None, "Also score the mirrored picture and average (null: as the checkpoint was exported).")
