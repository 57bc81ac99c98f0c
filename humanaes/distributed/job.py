"""A batch job's output directory: its record, its committed shards, and the exactly-once rules.

Layout of `--out DIR`:

    DIR/job.json                        the job record: model, mode, typed options, dtype, input
    DIR/shards/part-00000001-<rand>.parquet   committed result shards (flat columns + id, path)
    DIR/shards/.part-*.tmp              a shard being written (private temp name; never read)
    DIR.lock                            held (flock) by the one driver writing DIR

Commit protocol (why every id ends up exactly once):

1. Only the driver writes DIR, and only while it holds `DIR.lock` (a second driver is refused).
2. A shard is written completely to a private temp file in `shards/`, fsynced, then renamed to
   its final `part-*.parquet` name: the rename is the commit. A crash leaves either a committed
   shard or a temp file that the next run deletes; never half a shard under a final name.
3. The done-id set is derived from the committed shards alone (their `id` column): there is no
   second bookkeeping file that could disagree with them.
4. Before a row is buffered for the next shard, the driver drops it when its id is already done
   or already buffered, so a task that Ray retried after a lost worker (and any other repeat)
   cannot add a second row for an id.
5. `--retry-errors` first rewrites (atomically, shard by shard) the shards without their error
   rows; those ids are then missing and are scored again. No moment holds two rows of one id.
6. `--verify` reads the shards and reports missing ids (of the given INPUT), duplicate ids and
   unreadable shards; it exits non-zero when there are any.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from humanaes.errors import HumanAesError
from humanaes.fsutil import atomic_write, fsync_dir

JOB_FILE = "job.json"
SHARD_DIR = "shards"
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
FORMAT = "humanaes-batch"
FORMAT_VERSION = 1
#: fields of the job record that must match for a run to resume a directory
SPEC_FIELDS: tuple[str, ...] = ("model", "model_sha256", "mode", "options", "dtype")

Warn = Callable[[str], None]


@dataclass(frozen=True)
class JobSpec:
    """What decides the scores: a directory only ever holds rows of one spec."""

    model: str
    mode: str
    options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    model_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def id_columns() -> tuple[str, ...]:
    """Columns of a shard: id and path, then exactly the flat columns of `score --format parquet`."""
    from humanaes import io as hio

    return ("id", "path", *hio.COLUMNS)


def shard_schema() -> Any:
    import pyarrow as pa

    from humanaes import io as hio

    base = hio.parquet_schema()
    return pa.schema([pa.field("id", pa.string()), pa.field("path", pa.string()), *base])


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise HumanAesError("humanaes batch writes Parquet shards and needs pyarrow: pip install 'humanaes[parquet]'") from None


# -- the record ---------------------------------------------------------------------------------


def read_record(out: Path) -> dict[str, Any] | None:
    """The job record of DIR; None when DIR does not exist or is empty (a new job).

    Raises HumanAesError when DIR is a file, or holds anything but a humanaes batch job.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise HumanAesError(f"--out {out} is a file; give a folder for the job's shards")
    record_path = out / JOB_FILE
    if not record_path.is_file():
        if not any(out.iterdir()):
            return None
        raise HumanAesError(f"--out {out} is not a humanaes batch job (no {JOB_FILE}) and is not empty; choose a new or empty folder")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HumanAesError(f"--out {out}: {JOB_FILE} is not readable JSON ({exc}); is this a humanaes batch job?") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise HumanAesError(f"--out {out}: {JOB_FILE} is not a humanaes batch job record; choose another --out")
    if int(record.get("format_version", 0)) > FORMAT_VERSION:
        raise HumanAesError(f"--out {out} was written by a newer humanaes (job format {record.get('format_version')}); upgrade humanaes")
    return record


def spec_differences(record: dict[str, Any], spec: JobSpec) -> list[str]:
    """Human-readable differences between a recorded job and this run's spec."""
    recorded = record.get("spec", {})
    mine = spec.to_dict()
    return [
        f"{name} {json.dumps(recorded.get(name), sort_keys=True)} -> {json.dumps(mine.get(name), sort_keys=True)}"
        for name in SPEC_FIELDS
        if recorded.get(name) != mine.get(name)
    ]


def write_record(out: Path, spec: JobSpec, *, input_count: int, input_fingerprint: str) -> None:
    from humanaes import __version__

    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "humanaes_version": __version__,
        "spec": spec.to_dict(),
        "columns": list(id_columns()),
        "input": {"count": input_count, "fingerprint": input_fingerprint},
    }
    atomic_write(out / JOB_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def open_job(
    out: Path, spec: JobSpec, *, input_count: int, input_fingerprint: str, force: bool, warn: Warn
) -> None:
    """Make DIR the job directory of `spec` (the caller holds DIR's lock).

    A new or empty DIR is initialised. A DIR of the same spec is resumed (a changed input is a
    note: new ids are scored, done ones kept). A DIR of another spec is refused unless `force`,
    which deletes its shards first (said, never silent).
    """
    record = read_record(out)
    if record is not None:
        differences = spec_differences(record, spec)
        if differences:
            if not force:
                raise HumanAesError(
                    f"--out {out} holds a job with a different {'; '.join(differences)}; "
                    "resume it with the same settings, choose another --out, or pass --force to discard its results"
                )
            removed = len(committed_shards(out))
            shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
            warn(f"--force: discarded {removed} shards of the earlier job in {out} ({'; '.join(differences)})")
        elif record.get("input", {}).get("fingerprint") != input_fingerprint:
            warn(
                f"{out}: the input differs from the recorded job's ({record.get('input', {}).get('count')} ids then, "
                f"{input_count} now); ids already done are kept, the others are scored"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    write_record(out, spec, input_count=input_count, input_fingerprint=input_fingerprint)


# -- shards -------------------------------------------------------------------------------------


def committed_shards(out: Path) -> list[Path]:
    """Committed shards in commit order (their sequence number)."""
    folder = out / SHARD_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(SHARD_PREFIX) and p.name.endswith(SHARD_SUFFIX))


def remove_stale_temps(out: Path) -> int:
    """Delete shard temp files left by a killed driver (only call while holding DIR's lock)."""
    folder = out / SHARD_DIR
    removed = 0
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(f".{SHARD_PREFIX}") and path.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


def _read_shard(path: Path, columns: Sequence[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=list(columns) if columns else None)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise HumanAesError(f"shard {path} is not readable Parquet ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


@dataclass
class DoneState:
    """What the committed shards hold: id -> row count, and the ids whose row has an error."""

    counts: Counter = field(default_factory=Counter)
    error_ids: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return set(self.counts)


def read_done(out: Path, *, strict: bool = True) -> DoneState:
    """The done-id set, derived from the committed shards (see the module docstring).

    strict: an unreadable shard raises HumanAesError; otherwise it is listed in `unreadable`.
    """
    state = DoneState()
    for shard in committed_shards(out):
        try:
            table = _read_shard(shard, ("id", "error"))
        except HumanAesError as exc:
            if strict:
                raise HumanAesError(f"{exc}; move it away to score its ids again") from None
            state.unreadable.append(str(exc))
            continue
        ids = table.column("id").to_pylist()
        errors = table.column("error").to_pylist()
        state.counts.update(ids)
        state.error_ids.update(i for i, e in zip(ids, errors) if e)
    return state


class ShardCommitter:
    """Buffers result rows on the driver and commits them as shards (see the module docstring)."""

    def __init__(self, out: Path, done: Iterable[str], *, shard_rows: int):
        self.out = out
        self.folder = out / SHARD_DIR
        self.seen: set[str] = set(done)
        self.shard_rows = shard_rows
        self._buffer: list[Any] = []
        self._buffered = 0
        self.rows_committed = 0
        self.errors_committed = 0
        self.duplicates_dropped = 0
        shards = committed_shards(out)
        self._sequence = max((_sequence_of(p) for p in shards), default=0)

    def add(self, table: Any) -> int:
        """Buffer a result table's new rows (ids not seen before); commits full shards. Returns
        the number of rows accepted."""
        import pyarrow as pa

        ids = table.column("id").to_pylist()
        keep = []
        for index, item_id in enumerate(ids):
            if item_id in self.seen:
                self.duplicates_dropped += 1
                continue
            self.seen.add(item_id)
            keep.append(index)
        if len(keep) != len(ids):
            table = table.take(pa.array(keep, type=pa.int64()))
        if table.num_rows:
            self._buffer.append(table)
            self._buffered += table.num_rows
        while self._buffered >= self.shard_rows:
            self.flush(self.shard_rows)
        return table.num_rows

    def flush(self, limit: int | None = None) -> Path | None:
        """Commit the buffered rows (the first `limit` of them) as one shard; None when empty."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffered:
            return None
        buffered = pa.concat_tables(self._buffer).cast(shard_schema())
        count = buffered.num_rows if limit is None else min(limit, buffered.num_rows)
        table, rest = buffered.slice(0, count), buffered.slice(count)
        self._sequence += 1
        target = self.folder / f"{SHARD_PREFIX}{self._sequence:08d}-{secrets.token_hex(4)}{SHARD_SUFFIX}"
        atomic_write(target, lambda tmp: pq.write_table(table, tmp))
        self.errors_committed += table.num_rows - table.column("error").null_count  # null error = scored
        self.rows_committed += table.num_rows
        self._buffer = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows
        return target


def _sequence_of(path: Path) -> int:
    try:
        return int(path.name[len(SHARD_PREFIX):].split("-", 1)[0])
    except ValueError:
        return 0


def drop_ids(out: Path, ids: set[str]) -> int:
    """Rewrite the shards without the rows of `ids` (atomically, one shard at a time); a shard
    left empty is deleted. Returns the number of rows removed."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not ids:
        return 0
    removed = 0
    wanted = pa.array(sorted(ids), type=pa.string())
    for shard in committed_shards(out):
        table = _read_shard(shard)
        drop = pc.is_in(table.column("id"), value_set=wanted)
        count = pc.sum(drop).as_py() or 0
        if not count:
            continue
        kept = table.filter(pc.invert(drop))
        if kept.num_rows:
            atomic_write(shard, lambda tmp, kept=kept: pq.write_table(kept, tmp))
        else:
            shard.unlink()
            fsync_dir(shard.parent)
        removed += count
    return removed


def read_rows(out: Path) -> list[dict[str, Any]]:
    """All committed rows (for tests, reports and small jobs; large jobs read the shards with any
    Parquet reader: `pyarrow.dataset.dataset(DIR / "shards")`)."""
    rows: list[dict[str, Any]] = []
    for shard in committed_shards(out):
        rows.extend(_read_shard(shard).to_pylist())
    return rows


# -- verify -------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    expected: int
    done: int
    missing: list[str]
    duplicates: dict[str, int]
    extra: list[str]
    errors: int
    unreadable: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicates and not self.unreadable

    def lines(self, limit: int = 10) -> list[str]:
        out = [
            f"{self.expected} ids in the input, {self.done} done ({self.errors} of them error rows), "
            f"{len(self.missing)} missing, {len(self.duplicates)} duplicated"
            + (f", {len(self.extra)} not in this input" if self.extra else "")
        ]
        out += [f"missing: {i}" for i in self.missing[:limit]]
        if len(self.missing) > limit:
            out.append(f"... and {len(self.missing) - limit} more missing")
        out += [f"duplicate: {i} ({n} rows)" for i, n in list(self.duplicates.items())[:limit]]
        out += [f"unreadable: {u}" for u in self.unreadable]
        return out


def verify(out: Path, expected_ids: Sequence[str]) -> VerifyReport:
    """Check DIR against the input's ids without scoring anything."""
    if read_record(out) is None:
        raise HumanAesError(f"--out {out} holds no batch job to verify")
    state = read_done(out, strict=False)
    expected = set(expected_ids)
    return VerifyReport(
        expected=len(expected),
        done=len(state.counts),
        missing=sorted(expected - state.ids),
        duplicates={i: n for i, n in sorted(state.counts.items()) if n > 1},
        extra=sorted(state.ids - expected),
        errors=len(state.error_ids),
        unreadable=state.unreadable,
    )

