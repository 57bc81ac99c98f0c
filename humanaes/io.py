"""Input discovery and result writers for `humanaes score`.

Inputs: files, folders (searched recursively for image files) and manifests (`.txt`: one path
per line; `.jsonl`: rows with an "image", "image_name" or "path" field), all resolved to
absolute paths. The resolved path string is each image's key: it is the `image` column of every
output row and what a resumed run matches against.

Outputs: CSV, JSONL and Parquet files written batch by batch so that an interrupted run loses at
most the batch in flight and a rerun with the same `--out` resumes where it stopped:

- CSV and JSONL are appended to; each batch is written with one `write`, flushed and fsynced.
  A torn last row left by a crash is detected on the next open and cut off with a warning.
- Parquet files cannot be appended to, so new rows go to a journal next to the output
  (`<out>.partial.jsonl`, fsynced per batch). When the run ends (also on Ctrl-C) the old Parquet
  rows and the journal are written to a temporary file that atomically replaces the output, and
  the journal is removed. After a hard kill the journal stays and the next run picks it up, so the
  Parquet file itself is never half-written.
"""

from __future__ import annotations

import abc
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from humanaes.errors import DataError, HumanAesError
from humanaes.schema import DIMENSIONS, LEVELS, ScoreResult

# -- input discovery ----------------------------------------------------------------------------

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
MANIFEST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".jsonl"})
#: fields of a JSONL manifest row that name the image, in order of preference
MANIFEST_KEYS: tuple[str, ...] = ("image", "image_name", "path")

Warn = Callable[[str], None]


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def enable_optional_decoders() -> None:
    """Register the HEIF/HEIC opener when pillow-heif is installed (Pillow lacks HEIF itself)."""
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        return
    pillow_heif.register_heif_opener()


def discover_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders and manifests into a list of resolved image paths.

    Order: the order of `paths`; within a folder, sorted by relative path (deterministic across
    machines). Duplicates (the same resolved path reached twice) are kept once, at their first
    place. Hidden files and folders (names starting with ".", e.g. macOS "._x.jpg" forks) are
    skipped when scanning folders. An explicitly named file is used whatever its extension;
    manifest entries that do not exist are kept so that they end up as error rows rather than
    aborting a long run.

    Raises HumanAesError for a path that does not exist, a folder without images and an empty or
    malformed manifest.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise HumanAesError(f"{os.fspath(raw)}: no such file or folder")
        if path.is_dir():
            items = scan_folder(path)
            if not items:
                exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
                raise HumanAesError(f"{os.fspath(raw)}: no images in this folder (looked for {exts})")
        elif path.suffix.lower() in MANIFEST_EXTENSIONS:
            items = read_manifest(path)
        else:
            items = [path]
        for item in items:
            resolved = item.resolve()
            key = str(resolved)
            if key not in seen:
                seen.add(key)
                found.append(resolved)
    return found


def scan_folder(folder: Path) -> list[Path]:
    """All image files under `folder`, recursively, sorted by their relative path parts."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(root, name))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def read_manifest(manifest: Path) -> list[Path]:
    """Paths listed by a `.txt` or `.jsonl` manifest, resolved relative to the manifest's folder.

    `.txt`: one path per line; blank lines and lines starting with "#" are ignored.
    `.jsonl`: one JSON object per line with an "image", "image_name" or "path" field. When the
    path does not exist next to the manifest but does under its `images/` folder it is taken from
    there, so HumanBeauty's `<subset>/label.jsonl` (bare file names) works as a manifest too.
    """
    base = manifest.parent
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{manifest}: manifest is not UTF-8 text") from None
    except OSError as exc:
        raise HumanAesError(f"{manifest}: cannot read manifest ({exc.strerror or exc})") from None
    entries: list[Path] = []
    is_jsonl = manifest.suffix.lower() == ".jsonl"
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or (not is_jsonl and line.startswith("#")):
            continue
        if is_jsonl:
            entry = _manifest_row_path(manifest, lineno, line)
            path = base / entry
            if not path.exists() and (base / "images" / entry).exists():
                path = base / "images" / entry
        else:
            entry = Path(line).expanduser()
            path = entry if entry.is_absolute() else base / entry
        entries.append(path)
    if not entries:
        raise HumanAesError(f"{manifest}: the manifest lists no images")
    return entries


def _manifest_row_path(manifest: Path, lineno: int, line: str) -> Path:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest}, line {lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(row, dict):
        for key in MANIFEST_KEYS:
            value = row.get(key)
            if isinstance(value, str) and value:
                return Path(value).expanduser()
    raise DataError(f"{manifest}, line {lineno}: no 'image', 'image_name' or 'path' field naming the image")


# -- rows ---------------------------------------------------------------------------------------


def dimension_column(name: str) -> str:
    """Column name of a dimension: "Facial Skin Tone" -> "facial_skin_tone"."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


DIMENSION_COLUMNS: tuple[str, ...] = tuple(dimension_column(d) for d in DIMENSIONS)
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{level}" for level in LEVELS)
SCORE_COLUMNS: tuple[str, ...] = ("overall", "lm_score", "regression_score", "metavoter_score")
FLOAT_COLUMNS: frozenset[str] = frozenset(SCORE_COLUMNS + PROB_COLUMNS + DIMENSION_COLUMNS)
COLUMNS: tuple[str, ...] = (
    "image",
    "overall",
    "level",
    "lm_score",
    "regression_score",
    "metavoter_score",
    *PROB_COLUMNS,
    *DIMENSION_COLUMNS,
    "annotation",
    "error",
    "model",
    "mode",
    "extra",  # model-specific facts as JSON text, e.g. the bundled model's {"face_found": true, ...}
)
#: The columns of files written before `extra` existed: such files are still resumed, in their layout.
LEGACY_COLUMNS: tuple[str, ...] = COLUMNS[:-1]

Row = dict[str, Any]


def flat_row(result: ScoreResult, *, model: str | None, mode: str | None) -> Row:
    """One result as a flat row with exactly COLUMNS (missing values are None)."""
    row: Row = dict.fromkeys(COLUMNS)
    row.update(
        image=result.image,
        overall=result.overall,
        level=result.level,
        lm_score=result.lm_score,
        regression_score=result.regression_score,
        metavoter_score=result.metavoter_score,
        annotation=result.annotation,
        error=result.error,
        model=model,
        mode=mode,
        extra=json.dumps(result.extra, sort_keys=True, separators=(",", ":")) if result.extra else None,
    )
    if result.level_probs:
        for level, column in zip(LEVELS, PROB_COLUMNS):
            row[column] = result.level_probs.get(level)
    if result.expert:
        for name, column in zip(DIMENSIONS, DIMENSION_COLUMNS):
            row[column] = result.expert.get(name)
    return row


def nested_row(result: ScoreResult, *, model: str | None, mode: str | None) -> Row:
    """One result as ScoreResult.to_dict() plus model and mode (the JSONL row)."""
    row = result.to_dict()
    row["model"] = model
    row["mode"] = mode
    return row


def flat_from_nested(row: Mapping[str, Any]) -> Row:
    """A JSONL row (nested) back to a flat row."""
    return flat_row(ScoreResult.from_dict(dict(row)), model=row.get("model"), mode=row.get("mode"))


def _csv_value(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in FLOAT_COLUMNS:
        try:
            return float(text)
        except ValueError:
            return None
    return text


# -- output format ------------------------------------------------------------------------------

OUTPUT_FORMATS: tuple[str, ...] = ("table", "csv", "jsonl", "parquet")
EXTENSION_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def resolve_output_format(out: Path | None, fmt: str | None) -> str:
    """The output format from --out's extension and --format; HumanAesError when they clash."""
    fmt = fmt.lower() if fmt else None
    if out is None:
        if fmt == "parquet":
            raise HumanAesError("--format parquet writes a file; pass --out FILE.parquet")
        return fmt or "table"
    if fmt == "table":
        raise HumanAesError("--format table prints to the terminal; pick csv, jsonl or parquet for --out")
    by_extension = EXTENSION_FORMATS.get(out.suffix.lower())
    if fmt and by_extension and fmt != by_extension:
        raise HumanAesError(f"--out {out} is a {by_extension} file name but --format is {fmt}; make them agree")
    if not fmt and not by_extension:
        raise HumanAesError(
            f"cannot tell the output format of --out {out} from its extension; "
            "name it .csv, .jsonl or .parquet, or pass --format"
        )
    return fmt or by_extension  # type: ignore[return-value]


# -- writers ------------------------------------------------------------------------------------


class ResultWriter(abc.ABC):
    """Writes batches of results; `existing` holds the flat rows already in the output."""

    def __init__(self) -> None:
        self.existing: list[Row] = []

    def done_keys(self, *, retry_errors: bool = False) -> set[str]:
        """Images already in the output (only those without an error when `retry_errors`)."""
        return {r["image"] for r in self.existing if not (retry_errors and r.get("error"))}

    @abc.abstractmethod
    def write_batch(self, results: Sequence[ScoreResult], *, model: str | None, mode: str | None) -> None:
        """Write one batch durably (flush + fsync for files)."""

    def close(self) -> None:
        """Finish the output (idempotent)."""

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    # Makes a newly created file's directory entry durable too; not possible on every OS.
    try:
        fd = os.open(path.parent or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _AppendFile:
    """An append-only text file; every `append` is one write, flushed and fsynced.

    The file is opened (created) on the first append, so a run that fails before producing any
    row (model not found, bad flags) leaves no empty output behind.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fh: IO[str] | None = None
        self._closed = False

    def append(self, text: str) -> None:
        if self._closed:
            raise ValueError(f"{self.path} is already closed")
        if self._fh is None:
            created = not self.path.exists()
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
            if created:
                _fsync_dir(self.path)
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HumanAesError(f"{path}: cannot read the existing output ({exc.strerror or exc})") from None


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


def _csv_complete_length(data: str) -> int:
    """Length of the prefix of `data` made of complete CSV records (ending in a newline).

    Quote-aware: a newline inside a quoted field (annotations span lines) does not end a record.
    Python's csv writer doubles quotes inside quoted fields, so a newline ends a record exactly
    when an even number of quotes precedes it. Only the last few newlines are examined, each
    with a C-speed count, so big outputs open quickly.
    """
    end = len(data)
    while end > 0:
        newline = data.rfind("\n", 0, end)
        if newline < 0:
            return 0
        if data.count('"', 0, newline) % 2 == 0:
            return newline + 1
        end = newline
    return 0


class CsvWriter(ResultWriter):
    """Appendable CSV with exactly COLUMNS (or LEGACY_COLUMNS when resuming such a file); the
    header is written once."""

    def __init__(self, path: Path, *, warn: Warn = _stderr_warning):
        super().__init__()
        self.path = path
        self._need_header = True
        self.columns = COLUMNS
        if path.exists() and path.stat().st_size > 0:
            self.existing, self.columns = self._read_existing(path, warn)
            self._need_header = path.stat().st_size == 0  # a torn header was removed
        self._file = _AppendFile(path)

    @staticmethod
    def _render(records: list[list[Any]]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for record in records:
            writer.writerow(["" if v is None else v for v in record])
        return buf.getvalue()

    @staticmethod
    def _read_existing(path: Path, warn: Warn) -> tuple[list[Row], tuple[str, ...]]:
        """(rows, the file's columns) of an existing output."""
        raw = _read_bytes(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HumanAesError(f"--out {path} exists but is not a CSV file; choose another --out") from None
        complete = _csv_complete_length(text)
        header = CsvWriter._render([list(COLUMNS)])
        if complete == 0 and header.startswith(text):
            # A run was killed while writing the header: start the file again.
            _truncate(path, 0)
            return [], COLUMNS
        if complete < len(text):
            if complete == 0:
                raise HumanAesError(f"--out {path} exists but is not a humanaes CSV output; choose another --out")
            warn(f"{path}: its last row was cut off (an interrupted run?); removing it, that image is scored again")
            _truncate(path, len(text[:complete].encode("utf-8")))
            text = text[:complete]
        records = list(csv.reader(io.StringIO(text, newline="")))
        if not records or tuple(records[0]) not in (COLUMNS, LEGACY_COLUMNS):
            raise HumanAesError(
                f"--out {path} exists but is not a humanaes CSV output (its header differs); choose another --out"
            )
        columns = tuple(records[0])
        if columns == LEGACY_COLUMNS:
            warn(f"{path} was written by an older humanaes, without the `extra` column; new rows keep its columns")
        rows: list[Row] = []
        for number, record in enumerate(records[1:], start=2):
            if len(record) != len(columns) or not record[0]:
                raise HumanAesError(f"--out {path}: record {number} is malformed; fix or remove it, or choose another --out")
            rows.append(flat_row_checked({c: _csv_value(c, v) for c, v in zip(columns, record)}))
        return rows, columns

    def write_batch(self, results: Sequence[ScoreResult], *, model: str | None, mode: str | None) -> None:
        if results:
            rows = [flat_row(r, model=model, mode=mode) for r in results]
            records = [[row[c] for c in self.columns] for row in rows]
            if self._need_header:
                records.insert(0, list(self.columns))  # header and first rows in one write
            self._file.append(self._render(records))
            self._need_header = False

    def close(self) -> None:
        self._file.close()


def _read_jsonl_rows(path: Path, kind: str, warn: Warn) -> list[dict[str, Any]]:
    """Rows of an existing JSONL output; a torn last line is cut off with a warning."""
    raw = _read_bytes(path)
    cut = raw.rfind(b"\n") + 1
    tail = raw[cut:]
    if tail.strip():
        try:
            last = json.loads(tail.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            last = None
        if isinstance(last, dict) and isinstance(last.get("image"), str):
            # Only the newline is missing: keep the row, finish the line.
            with open(path, "ab") as fh:
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            cut = len(raw) + 1
            raw = raw + b"\n"
        elif cut == 0 and not tail.startswith(b'{"image"'):
            raise HumanAesError(f"--out {path} exists but is not a humanaes {kind} output; choose another --out")
        else:
            warn(f"{path}: its last line was cut off (an interrupted run?); removing it, that image is scored again")
            _truncate(path, cut)
            raw = raw[:cut]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HumanAesError(f"--out {path} exists but is not a {kind} file; choose another --out") from None
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise HumanAesError(
                f"--out {path} exists but line {lineno} is not JSON, so it is not a humanaes {kind} output; "
                "choose another --out"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise HumanAesError(
                f"--out {path} exists but line {lineno} has no 'image' field, so it is not a humanaes {kind} output; "
                "choose another --out"
            )
        rows.append(row)
    return rows


def _json_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


class JsonlWriter(ResultWriter):
    """Appendable JSONL; each row is ScoreResult.to_dict() plus model and mode (nested dicts kept)."""

    def __init__(self, path: Path, *, warn: Warn = _stderr_warning):
        super().__init__()
        self.path = path
        if path.exists() and path.stat().st_size > 0:
            self.existing = [flat_from_nested(r) for r in _read_jsonl_rows(path, "JSONL", warn)]
        self._file = _AppendFile(path)

    def write_batch(self, results: Sequence[ScoreResult], *, model: str | None, mode: str | None) -> None:
        if results:
            self._file.append("".join(_json_line(nested_row(r, model=model, mode=mode)) for r in results))

    def close(self) -> None:
        self._file.close()


def _require_pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise HumanAesError(
            "Parquet output needs pyarrow: pip install 'humanaes[parquet]' (or write .csv/.jsonl)"
        ) from None
    return pq


def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(c, pa.float64() if c in FLOAT_COLUMNS else pa.string()) for c in COLUMNS])


class ParquetWriter(ResultWriter):
    """Parquet output via a fsynced JSONL journal that is merged in atomically on close."""

    def __init__(self, path: Path, *, warn: Warn = _stderr_warning):
        super().__init__()
        self._pq = _require_pyarrow()
        self.path = path
        self.journal = journal_path(path)
        self._warn = warn
        self._parquet_rows: list[Row] = []
        if path.exists() and path.stat().st_size > 0:
            self._parquet_rows = self._read_parquet(path)
        journaled: list[Row] = []
        if self.journal.exists() and self.journal.stat().st_size > 0:
            journaled = [flat_row_checked(r) for r in _read_jsonl_rows(self.journal, "journal", warn)]
            warn(f"{self.journal}: picking up {len(journaled)} rows of an interrupted run")
        self.existing = self._parquet_rows + journaled
        self._file: _AppendFile | None = _AppendFile(self.journal)

    def _read_parquet(self, path: Path) -> list[Row]:
        try:
            table = self._pq.read_table(path)
        except Exception:  # noqa: BLE001 - pyarrow raises several types for "not parquet"
            raise HumanAesError(f"--out {path} exists but is not a Parquet file; choose another --out") from None
        if tuple(table.column_names) not in (COLUMNS, LEGACY_COLUMNS):
            raise HumanAesError(
                f"--out {path} exists but is not a humanaes Parquet output (its columns differ); choose another --out"
            )
        # a file from before the `extra` column is rewritten with it (empty) when the run closes
        return [flat_row_checked(row) for row in table.to_pylist()]

    def write_batch(self, results: Sequence[ScoreResult], *, model: str | None, mode: str | None) -> None:
        if results and self._file is not None:
            rows = [flat_row(r, model=model, mode=mode) for r in results]
            self._file.append("".join(_json_line(row) for row in rows))

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self.journal.exists():
            rows = self._parquet_rows + [
                flat_row_checked(r) for r in _read_jsonl_rows(self.journal, "journal", self._warn)
            ]
            import pyarrow as pa

            table = pa.Table.from_pylist(rows, schema=parquet_schema())
            tmp = self.path.with_name(self.path.name + ".tmp")
            self._pq.write_table(table, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)  # atomic: readers see the old or the new file, never half of one
            _fsync_dir(self.path)
        self.journal.unlink(missing_ok=True)


def journal_path(path: Path) -> Path:
    """Where a Parquet output's rows are journaled while a run is in progress."""
    return path.with_name(path.name + ".partial.jsonl")


def flat_row_checked(row: Mapping[str, Any]) -> Row:
    """A flat row (journal, or a file from before `extra`) with exactly COLUMNS; missing ones are None."""
    return {c: row.get(c) for c in COLUMNS}


class StreamWriter(ResultWriter):
    """CSV or JSONL to a stream (stdout); nothing to resume."""

    def __init__(self, stream: IO[str], fmt: str):
        super().__init__()
        self._stream = stream
        self._fmt = fmt
        if fmt == "csv":
            self._stream.write(CsvWriter._render([list(COLUMNS)]))

    def write_batch(self, results: Sequence[ScoreResult], *, model: str | None, mode: str | None) -> None:
        if self._fmt == "csv":
            rows = [flat_row(r, model=model, mode=mode) for r in results]
            self._stream.write(CsvWriter._render([[row[c] for c in COLUMNS] for row in rows]))
        else:
            self._stream.write("".join(_json_line(nested_row(r, model=model, mode=mode)) for r in results))
        self._stream.flush()


class TableWriter(ResultWriter):
    """Collects rows and prints an aligned table (and any annotations) on close."""

    def __init__(self, stream: IO[str]):
        super().__init__()
        self._stream = stream
        self.rows: list[Row] = []
        self._closed = False

    def write_batch(self, results: Sequence[ScoreResult], *, model: str | None, mode: str | None) -> None:
        self.rows.extend(flat_row(r, model=model, mode=mode) for r in results)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.rows:
            self._stream.write(render_results_table(self.rows))
            self._stream.flush()


def open_writer(out: Path | None, fmt: str, *, warn: Warn = _stderr_warning, stream: IO[str] | None = None) -> ResultWriter:
    """The writer for `--out`/`--format` (validated with resolve_output_format first)."""
    stream = stream if stream is not None else sys.stdout
    if out is None:
        return TableWriter(stream) if fmt == "table" else StreamWriter(stream, fmt)
    if out.exists() and out.is_dir():
        raise HumanAesError(f"--out {out} is a folder; give a file name")
    if not out.parent.exists():
        raise HumanAesError(f"--out {out}: folder {out.parent} does not exist")
    if fmt == "csv":
        return CsvWriter(out, warn=warn)
    if fmt == "jsonl":
        return JsonlWriter(out, warn=warn)
    if fmt == "parquet":
        return ParquetWriter(out, warn=warn)
    raise HumanAesError(f"unknown output format {fmt!r}")


# -- text tables --------------------------------------------------------------------------------

# Short headers so that all twelve dimensions fit a wide terminal.
DIMENSION_SHORT: tuple[str, ...] = (
    "f_bright",
    "f_clarity",
    "f_skin",
    "f_struct",
    "f_contour",
    "facial",
    "outfit",
    "body",
    "looks",
    "environ",
    "appear",
    "compreh",
)


def format_text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """An aligned plain-text table; columns in `right` are right-aligned (numbers)."""
    right = set(right)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out) + "\n"


def display_path(image: str) -> str:
    """Path relative to the working directory when it is below it (shorter tables)."""
    try:
        rel = os.path.relpath(image)
    except ValueError:  # another drive on Windows
        return image
    return image if rel.startswith("..") else rel


def _fmt_score(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):.3f}"


def render_results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The terminal table of `humanaes score`: columns that have values, then annotations."""
    score_cols = [c for c in SCORE_COLUMNS[1:] if any(r.get(c) is not None for r in rows)]
    dim_cols = list(DIMENSION_COLUMNS) if any(r.get(DIMENSION_COLUMNS[0]) is not None for r in rows) else []
    has_error = any(r.get("error") for r in rows)
    headers = ["image", "overall", "level", *score_cols, *(DIMENSION_SHORT[DIMENSION_COLUMNS.index(c)] for c in dim_cols)]
    numeric = set(range(1, 2)) | set(range(3, len(headers)))
    if has_error:
        headers.append("error")
    table_rows = []
    for r in rows:
        cells = [display_path(str(r["image"])), _fmt_score(r.get("overall")), r.get("level") or ""]
        cells += [_fmt_score(r.get(c)) for c in score_cols + dim_cols]
        if has_error:
            cells.append(str(r.get("error") or "").replace("\n", " "))
        table_rows.append(cells)
    text = format_text_table(headers, table_rows, right=numeric)
    for r in rows:
        if r.get("annotation"):
            text += f"\n{display_path(str(r['image']))}:\n{r['annotation'].rstrip()}\n"
    return text
