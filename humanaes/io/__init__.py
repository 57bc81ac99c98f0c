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
rewrites, older layouts upgraded).
"""

from __future__ import annotations

from humanaes.io.discovery import (
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
from humanaes.io.keys import (
    BYTES_KEY_PREFIX,
    clean_text,
    display_name,
    image_key,
    key_to_path,
)
from humanaes.io.rows import (
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
from humanaes.io.tables import (
    DIMENSION_SHORT,
    display_path,
    format_text_table,
    render_results_table,
    row_display,
)
from humanaes.io.writers import (
    EXTENSION_FORMATS,
    OUTPUT_FORMATS,
    CsvWriter,
    JsonlWriter,
    ParquetWriter,
    ResultWriter,
    StreamWriter,
    TableWriter,
    Warn,
    check_output_path,
    journal_path,
    open_writer,
    parquet_schema,
    render_csv,
    resolve_output_format,
)

__all__ = [
    "BOOL_COLUMNS", "BYTES_KEY_PREFIX", "COLUMNS", "DIMENSION_COLUMNS", "DIMENSION_SHORT", "EXTENSION_FORMATS",
    "FLOAT_COLUMNS", "IMAGE_EXTENSIONS", "JSONL_KEYS", "KNOWN_LAYOUTS", "LEGACY_COLUMNS", "MANIFEST_EXTENSIONS",
    "MANIFEST_KEYS", "OLDER_LAYOUTS", "OUTPUT_FORMATS", "PROB_COLUMNS", "SCORE_COLUMNS",
    "CsvWriter", "DiscoveredImage", "JsonlWriter", "ParquetWriter", "ResultWriter", "Row", "StreamWriter",
    "TableWriter", "Warn",
    "check_output_path", "classify_file", "clean_text", "dimension_column", "discover_images", "discover_inputs",
    "display_name", "display_path", "enable_optional_decoders", "flat_from_nested", "flat_row", "flat_row_checked",
    "format_text_table", "image_key", "journal_path", "key_to_path", "latest_by_key", "nested_row",
    "normalize_nested", "open_writer", "parquet_schema", "read_manifest", "read_manifest_items", "render_csv",
    "render_results_table", "resolve_output_format", "row_display", "scan_folder", "scan_folder_items",
]
