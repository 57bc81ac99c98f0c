"""JSON Lines: the one reader of JSONL text and the one atomic writer of JSONL files.

Label files, source tables, ms-swift files and manifests all read their rows here, so every one
cuts lines the same way and words a bad row the same way; each caller adds its own prefix (file,
line, what the file is) and decides whether a bad row stops the read or is reported per row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from humanaes.fsutil import atomic_write


def json_lines(lines: Iterable[str] | str, *, objects: bool = False) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, None) or (line number, None, problem) for each non-blank line.

    `lines` is a text file handle or a whole text. A text is cut only at "\\n", "\\r\\n" and "\\r",
    as a file read in text mode is: str.splitlines() would also cut at U+2028, U+0085 ...,
    which JSON strings may hold raw, and so break a valid row in two. With `objects`, a value
    that is not a JSON object is a problem too.
    """
    if isinstance(lines, str):
        lines = io.StringIO(lines, newline=None)
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        if objects and not isinstance(value, dict):
            yield number, None, f"row must be a JSON object, got {type(value).__name__}"
        else:
            yield number, value, None


def write_json_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (`humanaes.fsutil.atomic_write`: a private random temp
    file beside it, never a fixed name that a planted symlink could redirect, fsynced and
    renamed), one UTF-8 row per line; readers see the old file or the new one."""
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
