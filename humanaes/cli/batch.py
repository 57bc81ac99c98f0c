"""`humanaes batch`: score millions of images into a resumable, exactly-once job folder.

Exit status: 0 when every image of this run was scored, 1 when any row of this run has an
`error` (or `--verify` found missing or duplicate ids), 2 for usage errors, 130 when
interrupted (Ctrl-C or SIGTERM: the rows received so far are committed; rerun to resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from humanaes.cli.score import DEVICES, DTYPES, _warn
from humanaes.schema import SCORE_MODES
from humanaes.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from humanaes.distributed.runner import BatchConfig


@click.command("batch")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Job folder: job.json and shards/part-*.parquet. An existing job of the same settings is resumed.")
@click.option("--model", default=None, metavar="NAME|DIR", help="Preset name, checkpoint folder or hub id (default: the bundled model).")
@click.option("--mode", type=click.Choice(SCORE_MODES, case_sensitive=False), default=None,
              help="What to compute (default: the model's default mode).")
@click.option("--max-tiles", type=click.IntRange(min=1), default=None, help="Most 448px tiles per image (HumanAesExpert).")
@click.option("--no-exif", is_flag=True, help="Ignore EXIF orientation (the official code's behaviour).")
@click.option("--option", "-o", "extra_options", multiple=True, metavar="NAME=VALUE",
              help="A typed option of the model (see `humanaes models --json`), e.g. -o use_face=false. Repeatable.")
@click.option("--engine", type=click.Choice(("local", "ray")), default="local", show_default=True,
              help="local: one process, no Ray. ray: Ray Data (a local Ray instance unless --address).")
@click.option("--address", default=None, metavar="auto|ray://HOST:PORT|HOST:PORT",
              help="Join this Ray cluster (--engine ray); default: start a local Ray instance for the job.")
@click.option("--num-gpus-per-actor", type=float, default=0.0, show_default=True, help="GPUs per model actor (0: CPU).")
@click.option("--cpus-per-actor", type=float, default=1.0, show_default=True, help="CPUs per model actor (the batched forward; decoding and preprocessing run in separate CPU tasks).")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Model actors (--engine ray).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per model batch (and per Ray Data batch).")
@click.option("--device", type=click.Choice(DEVICES, case_sensitive=False), default="auto", show_default=True,
              help="Model device; with --engine ray, auto means cuda when --num-gpus-per-actor > 0, else cpu.")
@click.option("--dtype", type=click.Choice(DTYPES, case_sensitive=False), default="auto", show_default=True,
              help="Compute dtype (recorded in the job: a resume must use the same).")
@click.option("--path-column", default=None, help="Manifest column with the image paths (default: image, image_name or path).")
@click.option("--id-column", default=None, help="Manifest column with the ids (default: 'id' when present, else the path key).")
@click.option("--shard-rows", type=int, default=None, help="Rows per committed shard (default 4096; also committed every 60 s).")
@click.option("--retry-errors", is_flag=True, help="Score again the ids whose rows have an error.")
@click.option("--force", is_flag=True, help="Discard the results of an earlier job with other settings in --out.")
@click.option("--verify", is_flag=True, help="Check --out against INPUT (missing, duplicate ids) without scoring.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="PyTorch CPU threads per model (actor).")
@click.option("--local-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local Ray instance started for the job (default: all).")
@click.option("--object-store-mb", type=click.IntRange(min=80), default=None,
              help="Object store size of the local Ray instance (default: Ray's, 30%% of memory).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.pass_context
def batch_command(ctx: click.Context, inputs: tuple[str, ...], out: Path, model: str | None, mode: str | None,
                  max_tiles: int | None, no_exif: bool, extra_options: tuple[str, ...], engine: str, address: str | None, num_gpus_per_actor: float,
                  cpus_per_actor: float, concurrency: int, batch_size: int, device: str, dtype: str,
                  path_column: str | None, id_column: str | None, shard_rows: int | None, retry_errors: bool,
                  force: bool, verify: bool, threads: int | None, local_cpus: int | None,
                  object_store_mb: int | None, quiet: bool) -> None:
    """Score INPUT... (files, folders, globs, .txt/.jsonl/.csv/.parquet manifests, pyarrow.fs URIs)
    into Parquet shards under --out, resumably and exactly once per id.

    Rerunning the same command after a crash, a kill or a lost worker scores only the ids that
    are not in --out yet. Read the results with any Parquet reader, e.g.
    pandas.read_parquet("OUT/shards").
    """
    from humanaes.distributed.runner import DEFAULT_SHARD_ROWS, BatchConfig

    options: dict[str, object] = {"max_tiles": max_tiles, "apply_exif": False if no_exif else None}
    from humanaes.options import option_pairs

    options.update(option_pairs(extra_options))
    config = BatchConfig(
        inputs=list(inputs), out=out, model=model, mode=mode.lower() if mode else None,
        options=options, device=device.lower(), dtype=dtype.lower(),
        engine=engine, address=address, num_gpus_per_actor=num_gpus_per_actor, cpus_per_actor=cpus_per_actor,
        concurrency=concurrency, batch_size=batch_size, threads=threads,
        shard_rows=shard_rows if shard_rows is not None else DEFAULT_SHARD_ROWS, retry_errors=retry_errors,
        force=force, path_column=path_column, id_column=id_column, local_cpus=local_cpus,
        object_store_mb=object_store_mb, quiet=quiet,
    )
    if verify:
        _verify(ctx, config)
        return
    _run(ctx, config)


def _verify(ctx: click.Context, config: "BatchConfig") -> None:
    from humanaes.distributed import job as jobdir
    from humanaes.distributed.runner import expected_ids

    jobdir.require_pyarrow()
    report = jobdir.verify(config.out, expected_ids(config))
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        ctx.exit(1)


def _run(ctx: click.Context, config: "BatchConfig") -> None:
    from humanaes.distributed.runner import run_batch

    try:
        with sigterm_as_interrupt():
            summary = run_batch(config, warn=_warn)
    except KeyboardInterrupt:
        click.echo(f"interrupted; the rows received so far are committed in {config.out}; "
                   "rerun the same command to resume", err=True)
        ctx.exit(130)
    if not config.quiet:
        ok = summary.scored - summary.failed
        parts = [f"scored {ok} image{'' if ok == 1 else 's'}"]
        if summary.scored and summary.seconds > 0:
            parts[0] += f" ({summary.scored / summary.seconds:.2f} images/s)"
        if summary.failed:
            parts.append(f"{summary.failed} failed (rows with an error; --retry-errors scores them again)")
        if summary.skipped:
            parts.append(f"{summary.skipped} already done")
        click.echo(", ".join(parts) + f" -> {config.out}", err=True)
    if summary.failed:
        ctx.exit(1)


COMMANDS = [batch_command]
