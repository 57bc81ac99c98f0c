"""Inputs and outputs of `humanaes score`: discovery, image keys, result rows and writers.

Inputs (`discover_inputs`): files, folders (searched recursively for image files) and manifests
(`.txt`: one path per line; `.jsonl`: rows with an "image", "image_name" or "path" field). Each
becomes a `DiscoveredImage`; FIFOs, sockets, devices, symlink loops, dangling links and missing
manifest entries are items with an `error` and are never opened.

**Keys and names** (one convention for the table, CSV, JSONL, Parquet and resume):

- `image` (every format) is the item's **key**: its absolute path, NOT symlink-resolved (a link
  is keyed by its own path), made absolute against the working directory of the run that found
  it and normalised like `os.path.abspath`, so a resume from another working directory still
  matches. `image_key(path)` computes it.
- Paths that are not valid UTF-8 (POSIX names are bytes) get the key `bytes:` + the path's bytes,
  with every byte outside printable ASCII, and `%` itself, written `%XX`
  (`/d/l_\\xe9.jpg` -> `bytes:/d/l_%E9.jpg`). A valid UTF-8 path is its own key and starts
  with `/`, so no two distinct byte paths share a key; `key_to_path(key)` gives the path back.
- `display` (CSV/Parquet column, JSONL key) is the path as the user gave it (relative stays
  relative; undecodable bytes shown as `\\xNN`); the terminal table shows it. It is for people
  and never used to match rows.
- `person_found` (every format): true/false from the model's person (face) detector, empty/null
  when the model has none; false means the scores are not meaningful.

Outputs: see `humanaes.io.writers` (resumable CSV/JSONL/Parquet, one row per image, atomic
rewrites, older layouts upgraded; `open_output` adds the resume policy).

The names below are loaded from their submodule on first use, so `import humanaes.io.images`
(decoding, used by every scorer) does not pull in the writers, tables or discovery, and pandas
and pyarrow load only inside the functions that write or read tables.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: submodule -> the public names it gives `humanaes.io`
_EXPORTS: dict[str, tuple[str, ...]] = {
    "discovery": (
        "IMAGE_EXTENSIONS", "MANIFEST_EXTENSIONS", "MANIFEST_KEYS", "DiscoveredImage", "classify_file",
        "discover_images", "discover_inputs", "enable_optional_decoders", "read_manifest", "read_manifest_items",
        "scan_folder", "scan_folder_items",
    ),
    "keys": ("BYTES_KEY_PREFIX", "clean_text", "display_name", "image_key", "key_to_path"),
    "rows": (
        "BOOL_COLUMNS", "COLUMNS", "DIMENSION_COLUMNS", "FLOAT_COLUMNS", "JSONL_KEYS", "KNOWN_LAYOUTS",
        "LEGACY_COLUMNS", "OLDER_LAYOUTS", "PROB_COLUMNS", "SCORE_COLUMNS", "Row", "dimension_column",
        "flat_from_nested", "flat_row", "flat_row_checked", "latest_by_key", "nested_row", "normalize_nested",
    ),
    "tables": ("DIMENSION_SHORT", "display_path", "format_text_table", "render_results_table", "row_display"),
    "writers": (
        "EXTENSION_FORMATS", "OUTPUT_FORMATS", "CsvWriter", "JsonlWriter", "ParquetWriter", "ResultWriter",
        "ResumableOutput", "StreamWriter", "TableWriter", "Warn", "check_output_path", "journal_path",
        "open_output", "open_writer", "parquet_schema", "render_csv", "resolve_output_format",
    ),
}
_HOME: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what static checkers and IDEs see: the same names, imported eagerly
    from humanaes.io.discovery import (  # noqa: F401
        IMAGE_EXTENSIONS,
        MANIFEST_EXTENSIONS,
        MANIFEST_KEYS,
        DiscoveredImage,
        classify_file,
        discover_images,
        discover_inputs,
        enable_optional_decoders,
        read_manifest,
        read_manifest_items,
        scan_folder,
        scan_folder_items,
    )
    from humanaes.io.keys import BYTES_KEY_PREFIX, clean_text, display_name, image_key, key_to_path  # noqa: F401
    from humanaes.io.rows import (  # noqa: F401
        BOOL_COLUMNS,
        COLUMNS,
        DIMENSION_COLUMNS,
        FLOAT_COLUMNS,
        JSONL_KEYS,
        KNOWN_LAYOUTS,
        LEGACY_COLUMNS,
        OLDER_LAYOUTS,
        PROB_COLUMNS,
        SCORE_COLUMNS,
        Row,
        dimension_column,
        flat_from_nested,
        flat_row,
        flat_row_checked,
        latest_by_key,
        nested_row,
        normalize_nested,
    )
    from humanaes.io.tables import (  # noqa: F401
        DIMENSION_SHORT,
        display_path,
        format_text_table,
        render_results_table,
        row_display,
    )
    from humanaes.io.writers import (  # noqa: F401
        EXTENSION_FORMATS,
        OUTPUT_FORMATS,
        CsvWriter,
        JsonlWriter,
        ParquetWriter,
        ResultWriter,
        ResumableOutput,
        StreamWriter,
        TableWriter,
        Warn,
        check_output_path,
        journal_path,
        open_output,
        open_writer,
        parquet_schema,
        render_csv,
        resolve_output_format,
    )
