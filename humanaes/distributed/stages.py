"""The three stages of a batch job, shared by both engines so their results are identical.

1. `read_images` (CPU tasks): fetch each image's encoded bytes (local file or `pyarrow.fs` URI).
   Non-regular files (FIFOs, sockets, devices) are never read (opened non-blocking and checked),
   missing or unreadable files and oversized ones become an `error`, never a failed task.
2. `prepare_images` (CPU tasks): decode and preprocess each image with the model family's
   `Preprocessor` (`BaseScorer.preprocessor()`, obtained by the driver through
   `humanaes.models.registry.load_preprocessor`, without the model's weights): the very object
   `BaseScorer.score` runs in process, so inputs are identical. The prepared tensors travel to
   the actors as a safetensors blob per row (`pack_prepared`; no pickle). A bad image becomes
   an `error`, worded as `score` words it.
3. `BatchScorer` (model actors): loads the scorer once and runs only the batched forward
   (`BaseScorer.score_prepared_batch`) on the prepared rows, returning flat rows
   (`humanaes.io.flat_row`) plus `id` and `path`. When the driver has no preprocessor for the
   model (a subclass with its own `decode`/`prepare`, a HumanAesExpert hub id not yet in a local
   folder), stage 2 is left out and the actor decodes and prepares the bytes itself through
   `iter_score`.

Test-only hooks (read by the driver and handed to the stages; never set them otherwise):
`HUMANAES_BATCH_FAULT="exit-after=K,marker=PATH"` makes the first scorer that has scored K rows,
while PATH does not exist, create PATH and exit the process at once (`os._exit`), like a worker
lost to a node failure, so that the tests can prove the resume protocol.
`HUMANAES_BATCH_TRACE=PATH` appends one line per batch, `prepare PID N` where N images were
decoded and prepared and `score PID N` where N were scored, so that tests can prove in which
processes each stage ran.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from humanaes.errors import HumanAesError
from humanaes.fsutil import NotRegularFileError, open_regular

#: larger files are refused (an error row) before they are read into memory
MAX_IMAGE_BYTES = 256 * 1024 * 1024
FAULT_ENV = "HUMANAES_BATCH_FAULT"
TRACE_ENV = "HUMANAES_BATCH_TRACE"
#: the key of a packed input that records its structure (a tensor, or a tuple with None holes)
STRUCTURE_KEY = "__structure__"


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
    try:
        fd = open_regular(location)  # never blocks: FIFOs, sockets and devices are refused unopened
    except FileNotFoundError:
        raise HumanAesError("file not found") from None
    except NotRegularFileError:
        if os.path.isdir(location):
            raise HumanAesError("is a folder, not an image file") from None
        raise HumanAesError("not a regular file (FIFO, socket or device); not read") from None
    except PermissionError:
        raise HumanAesError("permission denied reading the file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HumanAesError("symlink loop") from None
        raise HumanAesError(f"cannot open the file ({exc.strerror or exc})") from None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_IMAGE_BYTES:
            raise HumanAesError(f"file is {size / 2**20:.0f} MiB, over the {MAX_IMAGE_BYTES // 2**20} MiB limit per image")
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


def pack_prepared(prepared: Any) -> bytes:
    """A prepared input (a tensor, or a tuple/list of tensors and None) -> safetensors bytes."""
    import json

    import torch
    from safetensors.torch import save

    if isinstance(prepared, torch.Tensor):
        tensors, structure = {"0": prepared}, {"kind": "tensor"}
    elif isinstance(prepared, (tuple, list)) and all(p is None or isinstance(p, torch.Tensor) for p in prepared):
        tensors = {str(i): p for i, p in enumerate(prepared) if p is not None}
        structure = {"kind": "tuple", "length": len(prepared)}
    else:
        raise HumanAesError(f"cannot send a prepared input of type {type(prepared).__name__} to the model actors")
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    tensors[STRUCTURE_KEY] = torch.frombuffer(bytearray(json.dumps(structure).encode()), dtype=torch.uint8)
    return save(tensors)


def unpack_prepared(blob: bytes) -> Any:
    """The inverse of `pack_prepared` (bit-identical tensors)."""
    import json

    from safetensors.torch import load

    tensors = load(blob)
    structure = json.loads(bytes(tensors.pop(STRUCTURE_KEY).tolist()).decode())
    if structure["kind"] == "tensor":
        return tensors["0"]
    return tuple(tensors.get(str(i)) for i in range(structure["length"]))


def trace(stage: str, count: int) -> None:
    """Append `stage pid count` to $HUMANAES_BATCH_TRACE when it is set (tests; see above)."""
    path = os.environ.get(TRACE_ENV)
    if not path or not count:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{stage} {os.getpid()} {count}\n".encode())  # one small O_APPEND write: lines never mix
    finally:
        os.close(fd)


def prepare_images(batch: Any, *, preprocessor: Any, options: Any) -> Any:
    """Stage 2: decode + preprocess the read bytes (`data` -> `prepared`); errors keep their row.

    `preprocessor`: a `humanaes.scorer.Preprocessor`; `options`: the job's typed
    ScoreOptions (decoding options such as apply_exif and max_pixels, and the family's own)."""
    import pyarrow as pa

    from humanaes.scorer import prepare_items

    paths = batch.column("path").to_pylist()
    data = batch.column("data").to_pylist()
    errors = batch.column("error").to_pylist()
    todo = [i for i, e in enumerate(errors) if e is None]
    failed, ready = prepare_items(preprocessor, [(paths[i], data[i]) for i in todo], options)
    prepared: list[bytes | None] = [None] * len(paths)
    for position, result in enumerate(failed):
        if result is not None:
            errors[todo[position]] = result.error
    for position, _, value in ready:
        try:
            prepared[todo[position]] = pack_prepared(value)
        except HumanAesError as exc:
            errors[todo[position]] = f"{paths[todo[position]]}: {exc}"
    trace("prepare", len(ready))
    return pa.table(
        {"id": batch.column("id"), "path": batch.column("path"),
         "prepared": pa.array(prepared, type=pa.binary()), "error": pa.array(errors, type=pa.string())}
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
    """Stage 3, one per model actor: load the scorer once, score batches of prepared items."""

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
    ):
        import humanaes

        # threads N forces N CPU threads; None: humanaes.load's choice from how busy the node is
        self.scorer = scorer = humanaes.load(model, device=device, dtype=dtype, threads=threads or "auto")
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
        errors = batch.column("error").to_pylist()
        ready = [i for i, e in enumerate(errors) if e is None]
        results: list[Any] = [None] * len(ids)
        for i, e in enumerate(errors):
            if e is not None:
                results[i] = ScoreResult.failed(paths[i], e)
        if ready and "prepared" in batch.column_names:  # stage 2 ran: the forward only
            blobs = batch.column("prepared").to_pylist()
            scored = self.scorer.score_prepared_batch(
                [unpack_prepared(blobs[i]) for i in ready], [paths[i] for i in ready], mode=self.mode, **self.options
            )
        elif ready:  # no preprocessor outside the scorer: decode and prepare here
            data = batch.column("data").to_pylist()
            scored = list(self.scorer.iter_score(
                [data[i] for i in ready], mode=self.mode, batch_size=len(ready),
                names=[paths[i] for i in ready], **self.options,
            ))
            trace("prepare", len(ready))
        for i, result in zip(ready, scored if ready else []):
            results[i] = result
        trace("score", len(ready))
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
