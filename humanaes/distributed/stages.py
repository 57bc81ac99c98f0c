"""The two stages of a batch job, shared by both engines so their results are identical.

1. `read_images` (CPU tasks): fetch each image's encoded bytes (local file or `pyarrow.fs` URI).
   Non-regular files (FIFOs, sockets, devices) are never read (opened non-blocking and checked),
   missing or unreadable files and oversized ones become an `error`, never a failed task.
2. `BatchScorer` (model actors): loads the scorer once, then per batch decodes and preprocesses
   the bytes and scores them through the scorer's public `iter_score` -- exactly the path
   `humanaes score` takes -- and returns flat rows (`humanaes.io.flat_row`) plus `id` and `path`.

Decoding stays with the scorer because models preprocess differently (the bundled model decodes
JPEGs at reduced size and detects faces; HumanAesExpert tiles), and only the scorer's own path
gives the same scores as `humanaes score`. The actor's CPU threads do it; on GPU nodes give each
actor a few CPUs (`--cpus-per-actor`).

Test-only fault injection: `HUMANAES_BATCH_FAULT="exit-after=K,marker=PATH"` (read by the driver
and handed to the scorers) makes the first scorer that has scored K rows, while PATH does not
exist, create PATH and exit the process at once (`os._exit`), like a worker lost to a node
failure. It exists so that the tests can prove the resume protocol; never set it otherwise.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from humanaes.errors import HumanAesError

#: larger files are refused (an error row) before they are read into memory
MAX_IMAGE_BYTES = 256 * 1024 * 1024
FAULT_ENV = "HUMANAES_BATCH_FAULT"


def read_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [("id", pa.string()), ("path", pa.string()), ("location", pa.binary()), ("remote", pa.bool_()),
         ("input_error", pa.string())]
    )


def items_table(items: list[Any]) -> Any:
    """InputItems -> the table the read stage takes."""
    import pyarrow as pa

    return pa.Table.from_pydict(
        {
            "id": [i.id for i in items],
            "path": [i.path for i in items],
            "location": [i.location for i in items],
            "remote": [i.remote for i in items],
            "input_error": [i.error for i in items],
        },
        schema=read_schema(),
    )


def _read_local(location: bytes) -> bytes:
    """The bytes of a regular file; HumanAesError (the cause, one line) otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(location, flags)
    except FileNotFoundError:
        raise HumanAesError("file not found") from None
    except IsADirectoryError:
        raise HumanAesError("is a folder, not an image file") from None
    except PermissionError:
        raise HumanAesError("permission denied reading the file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HumanAesError("symlink loop") from None
        raise HumanAesError(f"cannot open the file ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise HumanAesError("is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise HumanAesError("not a regular file (FIFO, socket or device); not read")
        if info.st_size > MAX_IMAGE_BYTES:
            raise HumanAesError(f"file is {info.st_size / 2**20:.0f} MiB, over the {MAX_IMAGE_BYTES // 2**20} MiB limit per image")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise HumanAesError(f"cannot read the file ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_images(batch: Any) -> Any:
    """Stage 1: add `data` (the encoded bytes, null on failure) and `error` to a batch of items."""
    import pyarrow as pa

    from humanaes.distributed.inputs import read_uri

    data: list[bytes | None] = []
    errors: list[str | None] = []
    for path, location, remote, known in zip(
        batch.column("path").to_pylist(), batch.column("location").to_pylist(),
        batch.column("remote").to_pylist(), batch.column("input_error").to_pylist(),
    ):
        if known:
            data.append(None)
            errors.append(known if known.startswith(path) else f"{path}: {known}")
            continue
        try:
            data.append(read_uri(location.decode("utf-8")) if remote else _read_local(location))
            errors.append(None)
        except HumanAesError as exc:
            data.append(None)
            errors.append(f"{path}: {exc}")
        except OSError as exc:  # remote reads
            data.append(None)
            errors.append(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    return pa.table(
        {"id": batch.column("id"), "path": batch.column("path"),
         "data": pa.array(data, type=pa.binary()), "error": pa.array(errors, type=pa.string())}
    )


def parse_fault(spec: str | None) -> dict[str, Any] | None:
    """`exit-after=K,marker=PATH` -> {"exit_after": K, "marker": PATH} (see the module docstring)."""
    if not spec:
        return None
    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    try:
        return {"exit_after": int(fields["exit-after"]), "marker": fields["marker"]}
    except (KeyError, ValueError):
        raise HumanAesError(f"{FAULT_ENV}={spec!r}: expected exit-after=K,marker=PATH") from None


class BatchScorer:
    """Stage 2, one per model actor: load the scorer once, score batches of read items."""

    def __init__(
        self,
        *,
        model: str | None,
        mode: str,
        options: dict[str, Any],
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        fault: dict[str, Any] | None = None,
        scorer: Any = None,
    ):
        if threads:
            import torch

            torch.set_num_threads(threads)
        if scorer is None:
            import humanaes

            scorer = humanaes.load(model, device=device, dtype=dtype)
        self.scorer = scorer
        self.mode = scorer.check_mode(mode)
        scorer.parse_options(**options)  # an option this model cannot use fails here, not per batch
        self.options = dict(options)
        self.model_name = str(getattr(scorer, "name", model or "default"))
        self.fault = fault
        self.rows_scored = 0

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from humanaes import io as hio
        from humanaes.distributed.job import shard_schema
        from humanaes.schema import ScoreResult

        self._maybe_fail()
        ids = batch.column("id").to_pylist()
        paths = batch.column("path").to_pylist()
        data = batch.column("data").to_pylist()
        errors = batch.column("error").to_pylist()
        ready = [i for i, e in enumerate(errors) if e is None]
        results: list[Any] = [None] * len(ids)
        for i, e in enumerate(errors):
            if e is not None:
                results[i] = ScoreResult.failed(paths[i], e)
        if ready:
            scored = self.scorer.iter_score(
                [data[i] for i in ready], mode=self.mode, batch_size=len(ready),
                names=[paths[i] for i in ready], **self.options,
            )
            for i, result in zip(ready, scored):
                results[i] = result
        rows = []
        for item_id, path, result in zip(ids, paths, results):
            row = hio.flat_row(result, model=self.model_name, mode=self.mode)
            row["id"], row["path"] = item_id, path
            rows.append(row)
        self.rows_scored += len(rows)
        return pa.Table.from_pylist(rows, schema=shard_schema())

    def _maybe_fail(self) -> None:
        if self.fault is None or self.rows_scored < self.fault["exit_after"]:
            return
        marker = Path(self.fault["marker"])
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # the fault already happened once
        os.close(fd)
        os._exit(17)
