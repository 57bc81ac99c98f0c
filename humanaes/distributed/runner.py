"""The driver of a batch job: inputs -> lock -> job record -> what is left -> engine -> shards.

Both engines feed the same `ShardCommitter`; the driver is the only writer of the output folder
(see `humanaes.distributed.job` for the exactly-once protocol).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humanaes.distributed import job as jobdir
from humanaes.distributed.inputs import InputItem, fingerprint, gather_inputs
from humanaes.distributed.stages import FAULT_ENV, BatchScorer, items_table, parse_fault, prepare_images, read_images
from humanaes.errors import HumanAesError
from humanaes.fsutil import OutputLock

ENGINES: tuple[str, ...] = ("local", "ray")
#: rows per committed shard by default: about 1-2 MB of Parquet, a few seconds of GPU work
DEFAULT_SHARD_ROWS = 4096
#: commit at least this often (seconds) so that a killed job loses little, however slow it is
COMMIT_INTERVAL_S = 60.0
MAX_BATCH_SIZE = 1024

Warn = Callable[[str], None]


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class BatchConfig:
    """Everything `humanaes batch` was asked to do (the CLI's flags, typed)."""

    inputs: list[str]
    out: Path
    model: str | None = None
    mode: str | None = None
    #: scoring options as given (the model's typed options; text values are converted)
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    engine: str = "local"
    address: str | None = None
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    concurrency: int = 1
    batch_size: int = 8
    threads: int | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS
    retry_errors: bool = False
    force: bool = False
    path_column: str | None = None
    id_column: str | None = None
    local_cpus: int | None = None
    object_store_mb: int | None = None
    quiet: bool = False

    def given_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if v is not None}

    def check(self) -> None:
        """Flag errors that need neither inputs nor a model (fail in a second)."""
        if self.engine not in ENGINES:
            raise HumanAesError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise HumanAesError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.concurrency < 1:
            raise HumanAesError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.shard_rows < 1:
            raise HumanAesError(f"--shard-rows must be at least 1, got {self.shard_rows}")
        if self.num_gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise HumanAesError("--num-gpus-per-actor must be >= 0 and --cpus-per-actor > 0")
        if self.engine == "local" and (self.address or self.num_gpus_per_actor or self.concurrency != 1):
            raise HumanAesError("--address, --num-gpus-per-actor and --concurrency need --engine ray")
        if not self.out.parent.exists():
            raise HumanAesError(f"--out {self.out}: folder {self.out.parent} does not exist")


@dataclass
class BatchSummary:
    total: int = 0
    skipped: int = 0
    scored: int = 0
    failed: int = 0
    duplicates_dropped: int = 0
    interrupted: bool = False
    seconds: float = 0.0


def job_spec(config: BatchConfig) -> jobdir.JobSpec:
    """The job's record: every typed option of the model with its value (given or default),
    all without loading the model (the driver of a cluster job may have no GPU for it)."""
    import dataclasses

    from humanaes.models.registry import model_identity
    from humanaes.options import parse_options

    identity = model_identity(config.model)
    mode = config.mode or identity.default_mode
    parsed = parse_options(identity.options_class, config.given_options(), owner=f"model {identity.name!r}",
                           from_text=True)
    if mode != "default":
        parsed.check_mode(mode.lower())  # refused before the job starts, not per batch
    return jobdir.JobSpec(model=identity.name, model_sha256=identity.weights_sha256, mode=mode.lower(),
                          options=dataclasses.asdict(parsed), dtype=config.dtype)


def scorer_kwargs(config: BatchConfig, spec: jobdir.JobSpec) -> dict[str, Any]:
    """Constructor arguments of `BatchScorer` (handed to every actor)."""
    device = config.device
    if config.engine == "ray" and device == "auto":
        device = "cuda" if config.num_gpus_per_actor > 0 else "cpu"
    threads = config.threads
    if threads is None and config.engine == "ray":
        threads = max(1, int(config.cpus_per_actor))
    return {
        "model": config.model,
        "mode": None if spec.mode == "default" else spec.mode,
        # the options given, as parsed into the job record (typed values, not command-line text)
        "options": {k: spec.options[k] for k in config.given_options()},
        "device": device,
        "dtype": config.dtype,
        "threads": threads,
        "fault": parse_fault(os.environ.get(FAULT_ENV)),
    }


def preprocess_kwargs(config: BatchConfig, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Arguments of the CPU stage `prepare_images` (the model's Preprocessor and the typed
    options), obtained without loading the model's heavy weights; None when the model has no
    preprocessor apart from its scorer (then the actors decode and prepare)."""
    from humanaes.models.registry import load_preprocessor, model_identity
    from humanaes.options import parse_options

    preprocessor = load_preprocessor(config.model)
    if preprocessor is None:
        return None
    identity = model_identity(config.model)
    # as the actor's scorer parses them: humanaes.load's default is apply_exif=True
    typed = parse_options(identity.options_class, kwargs["options"], defaults={"apply_exif": True},
                          owner=f"model {identity.name!r}")
    return {"preprocessor": preprocessor, "options": typed}


def run_batch(config: BatchConfig, *, warn: Warn = _stderr_warning) -> BatchSummary:
    """Run (or resume) a batch job; KeyboardInterrupt (also SIGTERM, see the CLI) commits the
    rows received so far and is re-raised."""
    config.check()
    jobdir.require_pyarrow()
    items = gather_inputs(config.inputs, path_column=config.path_column, id_column=config.id_column)
    spec = job_spec(config)
    summary = BatchSummary(total=len(items))
    with OutputLock(config.out, what="--out"):  # acquired on entry, released by the kernel if killed
        jobdir.open_job(config.out, spec, input_count=len(items), input_fingerprint=fingerprint(items),
                        force=config.force, warn=warn)
        stale = jobdir.remove_stale_temps(config.out)
        if stale:
            warn(f"{config.out}: removed {stale} unfinished shard files of an interrupted run")
        done = jobdir.read_done(config.out)
        if config.retry_errors and done.error_ids:
            retry = done.error_ids & {i.id for i in items}
            jobdir.drop_ids(config.out, retry)
            done = jobdir.read_done(config.out)
        todo = [item for item in items if item.id not in done.counts]
        summary.skipped = len(items) - len(todo)
        if not todo:
            return summary
        committer = jobdir.ShardCommitter(config.out, done.ids, shard_rows=config.shard_rows)
        _execute(config, spec, todo, committer, summary)
    return summary


def _execute(
    config: BatchConfig, spec: jobdir.JobSpec, todo: list[InputItem], committer: jobdir.ShardCommitter,
    summary: BatchSummary,
) -> None:
    from tqdm import tqdm

    start = time.monotonic()
    last_commit = start
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=config.quiet, delay=1.0, dynamic_ncols=True)

    def on_result(table: Any) -> None:
        nonlocal last_commit
        accepted = committer.add(table)
        bar.update(accepted)
        now = time.monotonic()
        if now - last_commit >= COMMIT_INTERVAL_S:
            committer.flush()
            last_commit = now

    kwargs = scorer_kwargs(config, spec)
    try:
        if config.engine == "local":
            run_local(items_table(todo), kwargs, batch_size=config.batch_size, on_result=on_result)
        else:
            from humanaes.distributed.ray_engine import run_ray

            run_ray(items_table(todo), kwargs, preprocess_kwargs(config, kwargs), config=config, on_result=on_result)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        committer.flush()  # rows already received are complete: keep them
        summary.scored = committer.rows_committed
        summary.failed = committer.errors_committed
        summary.duplicates_dropped = committer.duplicates_dropped
        summary.seconds = time.monotonic() - start


def run_local(table: Any, kwargs: dict[str, Any], *, batch_size: int, on_result: Callable[[Any], None]) -> None:
    """The local engine: the three stages in this process, one batch at a time (no Ray). The
    preprocessor is the loaded scorer's own (the model is here anyway)."""
    scorer = BatchScorer(**kwargs)
    preprocessor = scorer.scorer.preprocessor()
    typed = scorer.scorer.parse_options(**scorer.options)
    for start in range(0, table.num_rows, batch_size):
        batch = read_images(table.slice(start, batch_size))
        if preprocessor is not None:
            batch = prepare_images(batch, preprocessor=preprocessor, options=typed)
        on_result(scorer(batch))


def expected_ids(config: BatchConfig) -> list[str]:
    """The ids of the INPUT (for --verify)."""
    return [i.id for i in gather_inputs(config.inputs, path_column=config.path_column, id_column=config.id_column)]
