"""Result writers for `humanaes score`: CSV, JSONL and Parquet files (resumable), stdout, table.

Files are written batch by batch so that an interrupted run loses at most the batch in flight,
and a rerun with the same `--out` resumes where it stopped:

- CSV (RFC 4180: CRLF line ends, fields with quotes, commas, CR or LF quoted) and JSONL are
  appended to; each batch is one `write`, flushed and fsynced. A torn last row left by a crash is
  detected on the next open and cut off with a warning.
- Parquet cannot be appended to, so new rows go to a journal next to the output
  (`<out>.partial.jsonl`, fsynced per batch). When the run ends (also on Ctrl-C) the Parquet rows
  and the journal are written to a private temp file that atomically replaces the output
  (`humanaes.fsutil.atomic_write`), and the journal is removed. After a hard kill the journal
  stays and the next run picks it up, so the Parquet file itself is never half-written.
- **One row per image**: when an image is scored again (`--retry-errors`) its new row is
  appended during the run (so a crash loses nothing) and the file is rewritten atomically when
  the run ends, the new row in the old row's place. A file holding two rows for one image (a
  crash before that rewrite, or an older humanaes) reads as its last row per image and is
  compacted the same way when a run opens it.
- **Older layouts** (before `extra`, before `person_found`/`display`) are still resumed: a run
  that opens one rewrites it atomically in the current layout first (with a warning).

`open_output` wraps a writer in a `ResumableOutput`, which holds the rest of the resume policy:
which images the output already holds (`remaining(items)` leaves them out; with
`retry_errors` an image whose row has an error is scored again), which modes and models
earlier runs used, and how many of its rows are failures. The CLI only asks and reports.

The caller holds the output's lock (`humanaes.fsutil.output_lock`) for the whole run, so no
other process appends to or rewrites the file meanwhile.
"""

from __future__ import annotations

import abc
import csv
import io
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from humanaes.errors import HumanAesError
from humanaes.fsutil import atomic_write, fsync_dir
from humanaes.io.discovery import special_file_kind
from humanaes.io.jsonl import json_lines
from humanaes.io.rows import (
    BOOL_COLUMNS,
    COLUMNS,
    FLOAT_COLUMNS,
    JSONL_KEYS,
    KNOWN_LAYOUTS,
    Row,
    flat_from_nested,
    flat_row,
    flat_row_checked,
    latest_by_key,
    nested_row,
    normalize_nested,
)
from humanaes.io.tables import render_results_table
from humanaes.schema import ScoreResult

Warn = Callable[[str], None]


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


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


def check_output_path(path: Path, what: str = "--out") -> None:
    """HumanAesError unless `path` can be an output file: its folder exists, and it is absent or a
    regular file (a FIFO or device would block or be clobbered; it is never opened)."""
    if not path.parent.exists():
        raise HumanAesError(f"{what} {path}: folder {path.parent} does not exist")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HumanAesError(f"{what} {path}: cannot use it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise HumanAesError(f"{what} {path} is a folder; give a file name")
    if not stat.S_ISREG(mode):
        raise HumanAesError(f"{what} {path} is a {special_file_kind(mode)}, not a regular file; give a file name")


# -- writers ------------------------------------------------------------------------------------


class ResultWriter(abc.ABC):
    """Writes batches of results.

    `existing` holds the flat rows already in the output (one per image: the latest),
    `new_rows` the flat rows this writer wrote.
    """

    def __init__(self) -> None:
        self.existing: list[Row] = []
        self.new_rows: list[Row] = []

    def done_keys(self, *, retry_errors: bool = False) -> set[str]:
        """Images already in the output (only those without an error when `retry_errors`)."""
        return {r["image"] for r in self.existing if not (retry_errors and r.get("error"))}

    def all_rows(self) -> list[Row]:
        """Every image's latest flat row: the existing ones, replaced or followed by the new ones."""
        return latest_by_key([*self.existing, *self.new_rows])

    def write_batch(
        self,
        results: Sequence[ScoreResult],
        *,
        model: str | None,
        mode: str | None,
        displays: Sequence[str | None] | None = None,
    ) -> None:
        """Write one batch durably (flush + fsync for files).

        `displays`: the user-given name of each result (default: its key, `result.image`).
        """
        if not results:
            return
        names = list(displays) if displays is not None else [None] * len(results)
        if len(names) != len(results):
            raise ValueError(f"{len(results)} results but {len(names)} display names")
        self._write(results, names, model=model, mode=mode)

    @abc.abstractmethod
    def _write(self, results: Sequence[ScoreResult], displays: list[str | None], *, model: str | None,
               mode: str | None) -> None:
        """Format-specific part of write_batch (results non-empty, displays aligned)."""

    def close(self) -> None:
        """Finish the output (idempotent)."""

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AppendFile:
    """An append-only text file; every `append` is one write, flushed and fsynced.

    The file is opened (created) on the first append, so a run that fails before producing any
    row (model not found, bad flags) leaves no empty output behind.
    """

    def __init__(self, path: Path, *, follow_symlink: bool = True):
        self.path = path
        self._fh: IO[str] | None = None
        self._closed = False
        self._nofollow = 0 if follow_symlink else getattr(os, "O_NOFOLLOW", 0)

    def append(self, text: str) -> None:
        if self._closed:
            raise ValueError(f"{self.path} is already closed")
        if self._fh is None:
            created = not self.path.exists()
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | self._nofollow | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(self.path, flags, 0o666)
            except OSError as exc:
                raise HumanAesError(f"{self.path}: cannot write it ({exc.strerror or exc})") from None
            self._fh = open(fd, "a", encoding="utf-8", newline="")
            if created:
                fsync_dir(self.path.parent)
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


class _CompactingFileWriter(ResultWriter):
    """CSV/JSONL file writer: rows are appended per batch; the file is rewritten atomically when
    it must be (an older layout or two rows for one image at open; a replaced row at close).

    Subclasses read the file into native records (dicts with an "image" key), say whether its
    layout is older, render records, and turn a record into a flat row.
    """

    def __init__(self, path: Path, *, warn: Warn = _stderr_warning):
        super().__init__()
        self.path = path
        self._warn = warn
        self._records: list[Row] = []
        self._replaced = False
        self._closed = False
        if path.exists() and path.stat().st_size > 0:
            records, older = self._read(path, warn)
            self._records = latest_by_key(records)
            if older or len(self._records) < len(records):
                why = older or f"it holds {len(records) - len(self._records)} superseded rows (an interrupted retry?)"
                warn(f"{path}: {why}; rewriting it with one row per image in the current layout")
                self._rewrite()
        self._keys = {r["image"] for r in self._records}
        self.existing = [self._flat(r) for r in self._records]
        self._file = _AppendFile(path)

    @abc.abstractmethod
    def _read(self, path: Path, warn: Warn) -> tuple[list[Row], str | None]:
        """(records in file order, why the layout is older or None)."""

    @abc.abstractmethod
    def _record(self, result: ScoreResult, display: str | None, model: str | None, mode: str | None) -> Row:
        """The native record of a result."""

    @abc.abstractmethod
    def _render(self, records: Sequence[Row], *, whole_file: bool) -> str:
        """Text of records (a whole file includes any header)."""

    @abc.abstractmethod
    def _flat(self, record: Row) -> Row:
        """A native record as a flat row."""

    def _rewrite(self) -> None:
        atomic_write(self.path, self._render(self._records, whole_file=True))

    def _write(self, results: Sequence[ScoreResult], displays: list[str | None], *, model: str | None,
               mode: str | None) -> None:
        records = [self._record(r, d, model, mode) for r, d in zip(results, displays)]
        empty = not self.path.exists() or self.path.stat().st_size == 0
        text = self._render(records, whole_file=empty)
        self._file.append(text)  # appended first: a crash before the rewrite loses nothing
        for record in records:
            if record["image"] in self._keys:
                self._replaced = True
            self._keys.add(record["image"])
        self._records.extend(records)
        self.new_rows.extend(self._flat(r) for r in records)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._file.close()
        if self._replaced:
            self._records = latest_by_key(self._records)
            self._rewrite()


# -- CSV --


def _csv_value(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in FLOAT_COLUMNS:
        try:
            return float(text)
        except ValueError:
            return None
    if column in BOOL_COLUMNS:
        return {"true": True, "false": False}.get(text.lower())
    return text


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def render_csv(records: Iterable[Sequence[Any]]) -> str:
    """CSV text (RFC 4180: CRLF line ends, so fields holding CR or LF are always quoted)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for record in records:
        writer.writerow([_csv_cell(v) for v in record])
    return buf.getvalue()


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


class CsvWriter(_CompactingFileWriter):
    """Appendable CSV with exactly COLUMNS and one header (older layouts are upgraded on open)."""

    def _render(self, records: Sequence[Row], *, whole_file: bool) -> str:
        lines = [[r[c] for c in COLUMNS] for r in records]
        return render_csv(([list(COLUMNS)] if whole_file else []) + lines)

    def _record(self, result: ScoreResult, display: str | None, model: str | None, mode: str | None) -> Row:
        return flat_row(result, model=model, mode=mode, display=display)

    def _flat(self, record: Row) -> Row:
        return record

    def _read(self, path: Path, warn: Warn) -> tuple[list[Row], str | None]:
        raw = _read_bytes(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HumanAesError(f"--out {path} exists but is not a CSV file; choose another --out") from None
        complete = _csv_complete_length(text)
        if complete == 0 and any(render_csv([list(cols)]).replace("\r\n", "\n").startswith(text.replace("\r", ""))
                                 for cols in KNOWN_LAYOUTS):
            # A run was killed while writing the header: start the file again.
            _truncate(path, 0)
            return [], None
        if complete < len(text):
            if complete == 0:
                raise HumanAesError(f"--out {path} exists but is not a humanaes CSV output; choose another --out")
            warn(f"{path}: its last row was cut off (an interrupted run?); removing it, that image is scored again")
            _truncate(path, len(text[:complete].encode("utf-8")))
            text = text[:complete]
        records = list(csv.reader(io.StringIO(text, newline="")))
        if not records or tuple(records[0]) not in KNOWN_LAYOUTS:
            raise HumanAesError(
                f"--out {path} exists but is not a humanaes CSV output (its header differs); choose another --out"
            )
        columns = tuple(records[0])
        rows: list[Row] = []
        for number, record in enumerate(records[1:], start=2):
            if len(record) != len(columns) or not record[0]:
                raise HumanAesError(f"--out {path}: record {number} is malformed; fix or remove it, or choose another --out")
            rows.append(flat_row_checked({c: _csv_value(c, v) for c, v in zip(columns, record)}))
        return rows, _older_layout_note(columns)


def _older_layout_note(columns: Sequence[str]) -> str | None:
    if tuple(columns) == COLUMNS:
        return None
    missing = [c for c in COLUMNS if c not in columns]
    return f"it was written by an older humanaes, without the {', '.join(missing)} column(s)"


# -- JSONL --


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
    for lineno, row, not_json in json_lines(text):
        if not_json:
            raise HumanAesError(
                f"--out {path} exists but line {lineno} is not JSON, so it is not a humanaes {kind} output; "
                "choose another --out"
            )
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise HumanAesError(
                f"--out {path} exists but line {lineno} has no 'image' field, so it is not a humanaes {kind} output; "
                "choose another --out"
            )
        rows.append(row)
    return rows


def _json_line(row: Mapping[str, Any]) -> str:
    # ensure_ascii=False keeps names readable; U+2028/U+2029 are valid inside JSON strings
    return json.dumps(row, ensure_ascii=False) + "\n"


class JsonlWriter(_CompactingFileWriter):
    """Appendable JSONL; every row has exactly JSONL_KEYS (nested dicts kept; older rows upgraded)."""

    def _read(self, path: Path, warn: Warn) -> tuple[list[Row], str | None]:
        raw_rows = _read_jsonl_rows(path, "JSONL", warn)
        older = [r for r in raw_rows if tuple(r) != JSONL_KEYS]
        note = None
        if older:
            missing = sorted({k for r in older for k in JSONL_KEYS if k not in r})
            what = f"without {', '.join(missing)}" if missing else "with keys in another order"
            note = f"{len(older)} of its rows were written by an older humanaes ({what})"
        return [normalize_nested(r) for r in raw_rows], note

    def _record(self, result: ScoreResult, display: str | None, model: str | None, mode: str | None) -> Row:
        return nested_row(result, model=model, mode=mode, display=display)

    def _render(self, records: Sequence[Row], *, whole_file: bool) -> str:
        return "".join(_json_line(r) for r in records)

    def _flat(self, record: Row) -> Row:
        return flat_from_nested(record)


# -- Parquet --


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
    """The Arrow schema of a Parquet output: floats, a boolean `person_found`, strings."""
    import pyarrow as pa

    def kind(column: str) -> Any:
        if column in FLOAT_COLUMNS:
            return pa.float64()
        return pa.bool_() if column in BOOL_COLUMNS else pa.string()

    return pa.schema([(c, kind(c)) for c in COLUMNS])


def journal_path(path: Path) -> Path:
    """Where a Parquet output's rows are journaled while a run is in progress."""
    return path.with_name(path.name + ".partial.jsonl")


class ParquetWriter(ResultWriter):
    """Parquet output via a fsynced JSONL journal that is merged in atomically on close."""

    def __init__(self, path: Path, *, warn: Warn = _stderr_warning):
        super().__init__()
        self._pq = _require_pyarrow()
        self.path = path
        self.journal = journal_path(path)
        self._warn = warn
        check_output_path(self.journal, "--out journal")
        if self.journal.is_symlink():
            # a fixed name beside the output: never read or append through a planted link
            raise HumanAesError(f"--out {path}: its journal {self.journal} is a symlink; remove it (humanaes never "
                                "writes through one)")
        parquet_rows: list[Row] = []
        self._dirty = False  # the Parquet file must be rewritten on close
        if path.exists() and path.stat().st_size > 0:
            parquet_rows = self._read_parquet(path)
        journaled: list[Row] = []
        if self.journal.exists() and self.journal.stat().st_size > 0:
            journaled = [flat_row_checked(r) for r in _read_jsonl_rows(self.journal, "journal", warn)]
            warn(f"{self.journal}: picking up {len(journaled)} rows of an interrupted run")
            self._dirty = True
        rows = [*parquet_rows, *journaled]
        self.existing = latest_by_key(rows)
        self._dirty |= len(self.existing) < len(rows)
        self._file: _AppendFile | None = _AppendFile(self.journal, follow_symlink=False)

    def _read_parquet(self, path: Path) -> list[Row]:
        try:
            table = self._pq.read_table(path)
        except Exception:  # noqa: BLE001 - pyarrow raises several types for "not parquet"
            raise HumanAesError(f"--out {path} exists but is not a Parquet file; choose another --out") from None
        if tuple(table.column_names) not in KNOWN_LAYOUTS:
            raise HumanAesError(
                f"--out {path} exists but is not a humanaes Parquet output (its columns differ); choose another --out"
            )
        note = _older_layout_note(table.column_names)
        if note:
            self._warn(f"{path}: {note}; it is rewritten in the current layout when this run ends")
            self._dirty = True
        return [flat_row_checked(row) for row in table.to_pylist()]

    def _write(self, results: Sequence[ScoreResult], displays: list[str | None], *, model: str | None,
               mode: str | None) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is already closed")
        rows = [flat_row(r, model=model, mode=mode, display=d) for r, d in zip(results, displays)]
        self._file.append("".join(_json_line(row) for row in rows))
        self.new_rows.extend(rows)
        self._dirty = True

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._dirty:
            import pyarrow as pa

            table = pa.Table.from_pylist(self.all_rows(), schema=parquet_schema())
            # private temp file beside the output, renamed over it: readers see old or new, never half
            atomic_write(self.path, lambda tmp: self._pq.write_table(table, tmp))
        self.journal.unlink(missing_ok=True)


# -- stdout and the terminal table --


class StreamWriter(ResultWriter):
    """CSV or JSONL to a stream (stdout); nothing to resume."""

    def __init__(self, stream: IO[str], fmt: str):
        super().__init__()
        self._stream = stream
        self._fmt = fmt
        if fmt == "csv":
            self._stream.write(render_csv([list(COLUMNS)]))

    def _write(self, results: Sequence[ScoreResult], displays: list[str | None], *, model: str | None,
               mode: str | None) -> None:
        rows = [flat_row(r, model=model, mode=mode, display=d) for r, d in zip(results, displays)]
        if self._fmt == "csv":
            self._stream.write(render_csv([[row[c] for c in COLUMNS] for row in rows]))
        else:
            self._stream.write("".join(
                _json_line(nested_row(r, model=model, mode=mode, display=d)) for r, d in zip(results, displays)
            ))
        self._stream.flush()
        self.new_rows.extend(rows)


class TableWriter(ResultWriter):
    """Collects rows and prints an aligned table (and any annotations) on close."""

    def __init__(self, stream: IO[str]):
        super().__init__()
        self._stream = stream
        self._closed = False

    @property
    def rows(self) -> list[Row]:
        return self.new_rows

    def _write(self, results: Sequence[ScoreResult], displays: list[str | None], *, model: str | None,
               mode: str | None) -> None:
        self.new_rows.extend(flat_row(r, model=model, mode=mode, display=d) for r, d in zip(results, displays))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.new_rows:
            self._stream.write(render_results_table(self.new_rows))
            self._stream.flush()


def open_writer(out: Path | None, fmt: str, *, warn: Warn = _stderr_warning, stream: IO[str] | None = None) -> ResultWriter:
    """The writer for `--out`/`--format` (validated with resolve_output_format first).

    The caller should hold `humanaes.fsutil.output_lock(out)` while the writer is open.
    """
    stream = stream if stream is not None else sys.stdout
    if out is None:
        return TableWriter(stream) if fmt == "table" else StreamWriter(stream, fmt)
    check_output_path(out)
    if fmt == "csv":
        return CsvWriter(out, warn=warn)
    if fmt == "jsonl":
        return JsonlWriter(out, warn=warn)
    if fmt == "parquet":
        return ParquetWriter(out, warn=warn)
    raise HumanAesError(f"unknown output format {fmt!r}")


# -- resuming -----------------------------------------------------------------------------------


class Keyed(Protocol):
    """Anything with an image key (a `DiscoveredImage`): what `ResumableOutput.remaining` sorts."""

    @property
    def key(self) -> str: ...


KeyedItem = TypeVar("KeyedItem", bound=Keyed)


class ResumableOutput:
    """An output opened for one run, with the resume policy of `humanaes score`.

    - `done`: the images the output already holds, each once (its latest row); with
      `retry_errors` the images whose row has an error are not done, so they are scored again
      and their new row replaces the old one when the output closes (the writers' atomic
      rewrite). Older layouts were upgraded and torn last rows cut off when the writer opened.
    - `remaining(items)`: the items still to score, in their order.
    - `earlier_modes` / `earlier_models` / `earlier_failures`: what the rows already there say,
      so a resume never mixes modes (`check_mode`) and can warn about mixed models.
    - `write(...)`: one batch of new results, written durably; `written` keeps them in order.
    """

    def __init__(self, writer: ResultWriter, *, path: Path | None = None, retry_errors: bool = False):
        self.writer = writer
        self.path = path
        self.retry_errors = retry_errors
        existing = writer.existing
        self.done: frozenset[str] = frozenset(writer.done_keys(retry_errors=retry_errors))
        self.earlier_modes: frozenset[str] = frozenset(r["mode"] for r in existing if r.get("mode"))
        self.earlier_models: frozenset[str] = frozenset(r["model"] for r in existing if r.get("model"))
        self.earlier_failures: int = sum(1 for r in existing if r.get("error"))
        self.written: list[ScoreResult] = []

    def remaining(self, items: Sequence[KeyedItem]) -> list[KeyedItem]:
        """The items whose image the output does not hold yet (see `done`), in their order."""
        return [item for item in items if item.key not in self.done]

    def check_mode(self, mode: str) -> None:
        """HumanAesError when earlier rows were scored in another mode: one file, comparable scores."""
        if self.earlier_modes and self.earlier_modes != {mode}:
            raise HumanAesError(
                f"--out {self.path} holds results of mode {', '.join(sorted(self.earlier_modes))}, not {mode}; "
                "use another --out, or the same --mode to resume"
            )

    def mixes_models(self, model: str) -> bool:
        """True when earlier rows came from another model than `model` (the new rows are still appended)."""
        return bool(self.earlier_models) and self.earlier_models != {model}

    def write(self, results: Sequence[ScoreResult], *, model: str | None, mode: str | None,
              displays: Sequence[str | None] | None = None) -> None:
        """Write one batch durably (see `ResultWriter.write_batch`) and remember it in `written`."""
        self.writer.write_batch(results, model=model, mode=mode, displays=displays)
        self.written.extend(results)

    def all_rows(self) -> list[Row]:
        """Every image's latest flat row, old and new (what a report of the whole output shows)."""
        return self.writer.all_rows()

    def close(self) -> None:
        """Finish the output: flush, and rewrite it once if a retried image's row was replaced."""
        self.writer.close()

    def __enter__(self) -> "ResumableOutput":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_output(out: Path | None, fmt: str, *, retry_errors: bool = False, warn: Warn = _stderr_warning,
                stream: IO[str] | None = None) -> ResumableOutput:
    """`open_writer(out, fmt)` wrapped in the resume policy (`ResumableOutput`).

    The caller should hold `humanaes.fsutil.output_lock(out)` until the output is closed.
    """
    return ResumableOutput(open_writer(out, fmt, warn=warn, stream=stream), path=out, retry_errors=retry_errors)
