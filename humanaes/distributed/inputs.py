"""INPUT arguments of `humanaes batch` -> a table of (id, path, location, remote) items.

Accepted, in any mix:
- everything `humanaes score` accepts: image files, folders (recursive), `.txt` manifests (one
  path per line) and `.jsonl` manifests (rows with an "image", "image_name" or "path" field);
- a glob (`photos/**/*.jpg`, quoted so the shell leaves it alone);
- `.csv` and `.parquet` manifests with the same column names (or `--path-column`);
- URIs that `pyarrow.fs` reads (`s3://bucket/prefix/`, `gs://...`): a prefix is listed for image
  files, a manifest URI is read; credentials come from the user's environment.

Relative paths in a manifest are relative to the manifest's folder. Each item's `id` is the
manifest's id column when there is one (`--id-column`, or a column named `id`), else the same
stable key `humanaes score` uses to resume (so ids of the two commands agree). Paths that do not
exist stay in the table: they become error rows, never a failed job.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humanaes.errors import DataError, HumanAesError
from humanaes.io.jsonl import json_lines

#: manifest columns that name the image, in order of preference (as `humanaes score`)
PATH_COLUMNS: tuple[str, ...] = ("image", "image_name", "path")
DEFAULT_ID_COLUMN = "id"
TABLE_MANIFESTS: frozenset[str] = frozenset({".csv", ".parquet", ".pq"})
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputItem:
    """One image to score: `id` (unique in the job), `path` (display text), `location` (what to
    open: the file-system bytes of a local path, or the UTF-8 of a URI), `remote` (a URI) and
    `error` (set when discovery already knows the item cannot be read: it is never opened)."""

    id: str
    path: str
    location: bytes
    remote: bool = False
    error: str | None = None


def _local_item(path: Path, item_id: str | None = None) -> InputItem:
    from humanaes import io as hio

    key = hio.image_key(path)  # the key `humanaes score` records (its resume key)
    return InputItem(id=item_id if item_id is not None else key, path=key, location=os.fsencode(str(path.absolute())))


def is_uri(text: str) -> bool:
    """A `scheme://...` location (not a Windows drive letter)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").isalnum()


def gather_inputs(
    paths: Sequence[str | os.PathLike[str]], *, path_column: str | None = None, id_column: str | None = None
) -> list[InputItem]:
    """Every image the INPUT arguments name, in order, each id once.

    Raises HumanAesError for an argument that names nothing (no such path, a glob or folder
    without images), a manifest without the path column (naming the columns it has), and two
    different images given the same id.
    """
    items: list[InputItem] = []
    for raw in paths:
        text = os.fspath(raw)
        if is_uri(text):
            items.extend(_remote_items(text, path_column, id_column))
            continue
        path = Path(text).expanduser()
        if not path.exists() and not path.is_symlink() and GLOB_CHARS & set(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            files = [Path(m) for m in matches if not Path(m).is_dir()]
            if not files:
                raise HumanAesError(f"{text}: the glob matches no files")
            items.extend(_local_item(f) for f in files)
        elif path.suffix.lower() in TABLE_MANIFESTS or (path.suffix.lower() == ".jsonl" and path.is_file()):
            items.extend(_manifest_items(path, path_column, id_column))
        else:
            items.extend(_score_style_items(path))
    return _unique(items)


def _score_style_items(path: Path) -> list[InputItem]:
    """Files, folders and .txt manifests exactly as `humanaes score` discovers them."""
    from humanaes import io as hio

    # keys and error items (FIFOs, loops, missing manifest entries) come from score's discovery
    return [InputItem(id=d.key, path=d.key, location=os.fsencode(d.path), error=d.error)
            for d in hio.discover_inputs([path])]


def _unique(items: Iterable[InputItem]) -> list[InputItem]:
    by_id: dict[str, InputItem] = {}
    for item in items:
        earlier = by_id.get(item.id)
        if earlier is None:
            by_id[item.id] = item
        elif earlier.location != item.location:
            raise DataError(f"id {item.id!r} names two different images ({earlier.path} and {item.path}); ids must be unique")
    return list(by_id.values())


# -- manifests ----------------------------------------------------------------------------------


def _manifest_items(path: Path, path_column: str | None, id_column: str | None) -> list[InputItem]:
    rows = read_manifest_table(str(path), _read_local(path), path.suffix.lower())
    base = path.parent
    items = []
    for entry, item_id in _manifest_entries(str(path), rows, path_column, id_column):
        if is_uri(entry):
            items.append(InputItem(id=item_id or entry, path=entry, location=entry.encode("utf-8"), remote=True))
            continue
        target = Path(entry).expanduser()
        if not target.is_absolute():
            target = base / target
            # HumanBeauty's label.jsonl names bare files that live in images/ (as `score` reads it)
            if not target.exists() and (base / "images" / entry).exists():
                target = base / "images" / entry
        items.append(_local_item(target, item_id))
    if not items:
        raise HumanAesError(f"{path}: the manifest lists no images")
    return items


def _read_local(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HumanAesError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None


def read_manifest_table(name: str, data: bytes, suffix: str) -> list[dict[str, Any]]:
    """Rows of a .csv, .parquet or .jsonl manifest (all values as read)."""
    if suffix in (".jsonl", ".csv"):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"{name}: manifest is not UTF-8 text") from None
    if suffix == ".csv":
        import csv

        # every value stays text: ids like 007 must not become 7
        reader = csv.DictReader(text.splitlines())
        return [{k: (v if v != "" else None) for k, v in row.items() if k is not None} for row in reader]
    if suffix == ".jsonl":
        rows = []
        for lineno, row, problem in json_lines(text, objects=True):
            if problem:
                raise DataError(f"{name}, line {lineno}: {problem}")
            rows.append(row)
        return rows
    import io as _io

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HumanAesError(f"{name}: Parquet manifests need pyarrow: pip install 'humanaes[parquet]'") from None
    try:
        table = pq.read_table(_io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: not a readable Parquet manifest ({first})") from None
    return table.to_pylist()


def _manifest_entries(
    name: str, rows: list[dict[str, Any]], path_column: str | None, id_column: str | None
) -> list[tuple[str, str | None]]:
    columns = list(rows[0].keys()) if rows else []
    for row in rows[1:]:
        columns.extend(k for k in row if k not in columns)
    if path_column is not None:
        if path_column not in columns:
            raise DataError(f"{name}: no column {path_column!r} (--path-column); its columns are: {', '.join(map(str, columns)) or 'none'}")
        column = path_column
    else:
        present = [c for c in PATH_COLUMNS if c in columns]
        if not present:
            raise DataError(
                f"{name}: no 'image', 'image_name' or 'path' column naming the images; its columns are: "
                f"{', '.join(map(str, columns)) or 'none'} (pass --path-column)"
            )
        column = present[0]
    if id_column is not None and id_column not in columns:
        raise DataError(f"{name}: no column {id_column!r} (--id-column); its columns are: {', '.join(map(str, columns))}")
    ids = id_column or (DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in columns and DEFAULT_ID_COLUMN != column else None)
    entries = []
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{name}, row {number}: column {column!r} is empty; every row must name an image")
        item_id = None
        if ids is not None:
            raw_id = row.get(ids)
            if raw_id is None or str(raw_id) == "":
                raise DataError(f"{name}, row {number}: id column {ids!r} is empty")
            item_id = str(raw_id)
        entries.append((value.strip(), item_id))
    return entries


# -- remote (pyarrow.fs) ------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")


def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise HumanAesError(f"{uri}: reading URIs needs pyarrow: pip install 'humanaes[ray]'") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad URIs/credentials
        raise HumanAesError(f"{uri}: cannot open this location ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def read_uri(uri: str) -> bytes:
    """The bytes of one object a `pyarrow.fs` URI names (used by the read stage too)."""
    filesystem, path = _filesystem(uri)
    with filesystem.open_input_file(path) as fh:
        return fh.read()


def _remote_items(uri: str, path_column: str | None, id_column: str | None) -> list[InputItem]:
    from pyarrow import fs as pafs

    filesystem, path = _filesystem(uri)
    info = filesystem.get_file_info(path)
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.NotFound:
        raise HumanAesError(f"{uri}: no such file or prefix")
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(path, recursive=True)
        found = sorted(
            i.path for i in filesystem.get_file_info(selector)
            if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_SUFFIXES)
        )
        if not found:
            raise HumanAesError(f"{uri}: no images under this prefix")
        return [_remote_item(f"{scheme}://{p}") for p in found]
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TABLE_MANIFESTS or suffix == ".jsonl":
        rows = read_manifest_table(uri, read_uri(uri), suffix)
        base = uri.rsplit("/", 1)[0]
        return [
            _remote_item(entry if is_uri(entry) else f"{base}/{entry}", item_id)
            for entry, item_id in _manifest_entries(uri, rows, path_column, id_column)
        ]
    return [_remote_item(uri)]


def _remote_item(uri: str, item_id: str | None = None) -> InputItem:
    return InputItem(id=item_id or uri, path=uri, location=uri.encode("utf-8"), remote=True)


def fingerprint(items: Sequence[InputItem]) -> str:
    """sha256 over the sorted (id, location) pairs: the same input gives the same fingerprint."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.id):
        digest.update(item.id.encode("utf-8") + b"\0" + item.location + b"\n")
    return digest.hexdigest()
