"""`humanaes score` (score images, resumably) and `humanaes models` (what can score them).

Exit status of `score`: 0 when every image of this run was scored, 1 when any failed (their
rows carry an `error`), 2 for usage errors (bad paths, formats, models, flags), 130 when
interrupted (the rows written so far are kept; rerun the same command to resume).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from humanaes.errors import HumanAesError
from humanaes.schema import SCORE_MODES, ScoreResult

if TYPE_CHECKING:
    from humanaes.io import ResultWriter

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _load_scorer(model: str | None, device: str, dtype: str) -> Any:
    """Load the model, saying so on stderr (it can take a while), and set the CPU threads:
    --threads N, or runtime.default_threads() measured over the load (which load() also applies;
    setting it here keeps --threads authoritative). The `score` command stores both settings in
    the click context so that the callers' signatures stay unchanged."""
    # Imported lazily: loading torch/transformers must not slow down `--help` or input errors.
    import humanaes
    from humanaes.runtime import CpuLoadProbe, apply_threads

    meta = click.get_current_context().meta
    quiet = bool(meta.get("humanaes.quiet"))
    threads = meta.get("humanaes.threads")
    name = model or "humanaes-mini (the bundled default)"
    # On a terminal the "loading" line shows while the load runs and is then completed (or wiped,
    # when loading fails, so that the error is the only line). Logs and pipes get no status lines:
    # the run's summary says what happened.
    live = not quiet and sys.stderr.isatty()
    if live:
        click.echo(f"loading model {name} ...", err=True, nl=False)
    start = time.monotonic()
    probe = CpuLoadProbe()
    try:
        scorer = humanaes.load(model, device=device, dtype=dtype)
    finally:
        if live:
            click.echo("\r\x1b[K", err=True, nl=False)
    device_used = getattr(scorer, "device", None) or getattr(getattr(scorer, "model", None), "device", "cpu")
    on_cpu = str(device_used).startswith("cpu")
    chosen = apply_threads(threads if threads is not None else "auto", probe) if on_cpu else None
    if live:
        how = "" if chosen is None else f", {chosen} CPU thread{'s' if chosen != 1 else ''}"
        how += " (--threads)" if threads is not None and chosen is not None else ""
        click.echo(f"loaded model {name} in {time.monotonic() - start:.1f} s{how}", err=True)
    return scorer


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (plain `kill`) like Ctrl-C so the writer can close cleanly."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _previous_failures(rows: list[dict[str, Any]]) -> int:
    from humanaes.report import latest_rows

    return sum(1 for r in latest_rows(rows) if r.get("error"))


@click.command("score")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model", default=None, metavar="NAME|DIR",
              help="Preset name, checkpoint folder or hub id (default: the bundled model).")
@click.option("--mode", type=click.Choice(SCORE_MODES, case_sensitive=False), default=None,
              help="What to compute (default: the model's default mode).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per forward pass.")
@click.option("--max-tiles", type=int, default=None, help="Most 448px tiles per image (default: the model's).")
@click.option("--device", type=click.Choice(DEVICES, case_sensitive=False), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES, case_sensitive=False), default="auto", show_default=True,
              help="Compute dtype. auto: the checkpoint's half precision on GPUs; for the bundled model, bfloat16 "
                   "on CPUs with bfloat16 units (2-3x faster, scores within ~0.002 of float32), else float32.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Output file (.csv, .jsonl or .parquet); an existing one is resumed.")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "jsonl", "parquet"), case_sensitive=False),
              default=None, help="Output format (default: from --out's extension; a table without --out).")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a self-contained HTML report (all rows of --out, when resuming).")
@click.option("--no-exif", is_flag=True, help="Ignore EXIF orientation (the official code's behaviour).")
@click.option("--retry-errors", is_flag=True, help="When resuming, score again the images whose rows have an error.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for PyTorch. Default: the usable CPUs minus those other processes keep busy "
                   "while the model loads (a quiet 2-core machine gets 2, a busy one 1); N forces N.")
@click.pass_context
def score_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    model: str | None,
    mode: str | None,
    batch_size: int,
    max_tiles: int | None,
    device: str,
    dtype: str,
    out: Path | None,
    fmt: str | None,
    report: Path | None,
    no_exif: bool,
    retry_errors: bool,
    quiet: bool,
    threads: int | None,
) -> None:
    """Score the human images in PATH... (files, folders, .txt/.jsonl manifests).

    Folders are searched recursively. With --out, rows are written batch by batch and a rerun with
    the same --out skips the images already in it, so an interrupted run loses at most one batch.
    Parquet cannot be appended to: its rows are journaled to OUT.partial.jsonl during the run and
    the Parquet file is replaced atomically at the end (a journal left by a crash is picked up).
    """
    from humanaes import io as hio

    # Everything that can be checked without the model is checked first: fail in a second, not
    # after a minute of model loading.
    if batch_size < 1:
        raise HumanAesError(f"--batch-size must be at least 1, got {batch_size}")
    # Applied when the model loads (_load_scorer): torch stays unimported until then.
    ctx.meta["humanaes.threads"] = threads
    ctx.meta["humanaes.quiet"] = quiet
    if max_tiles is not None and max_tiles < 1:
        raise HumanAesError(f"--max-tiles must be at least 1, got {max_tiles}")
    if report is not None and report.suffix.lower() not in (".html", ".htm"):
        raise HumanAesError(f"--report {report} should be an .html file")
    if report is not None and not report.parent.exists():
        raise HumanAesError(f"--report {report}: folder {report.parent} does not exist")
    fmt = hio.resolve_output_format(out, fmt)
    hio.enable_optional_decoders()
    images = hio.discover_images(paths)
    writer = hio.open_writer(out, fmt, warn=_warn)
    try:
        _run(ctx, writer, images, model=model, mode=mode, batch_size=batch_size, max_tiles=max_tiles,
             device=device.lower(), dtype=dtype.lower(), out=out, report=report, no_exif=no_exif,
             retry_errors=retry_errors, quiet=quiet)
    finally:
        writer.close()


def _run(
    ctx: click.Context,
    writer: "ResultWriter",
    images: list[Path],
    *,
    model: str | None,
    mode: str | None,
    batch_size: int,
    max_tiles: int | None,
    device: str,
    dtype: str,
    out: Path | None,
    report: Path | None,
    no_exif: bool,
    retry_errors: bool,
    quiet: bool,
) -> None:
    from tqdm import tqdm

    done = writer.done_keys(retry_errors=retry_errors)
    todo = [p for p in images if str(p) not in done]
    skipped = len(images) - len(todo)

    earlier_modes = {r.get("mode") for r in writer.existing if r.get("mode")}

    def check_resumed_mode(this_mode: str) -> None:
        # Resuming in another mode would mix incomparable scores in one file.
        if earlier_modes and earlier_modes != {this_mode}:
            raise HumanAesError(
                f"--out {out} holds results of mode {', '.join(sorted(earlier_modes))}, not {this_mode}; "
                "use another --out, or the same --mode to resume"
            )

    mode = mode.lower() if mode else None
    if not todo:
        # Nothing left to score: no need to load a model (which can take a minute).
        if mode:
            check_resumed_mode(mode)
        if not quiet:
            earlier_failed = _previous_failures(writer.existing)
            note = f" ({earlier_failed} of them with errors; use --retry-errors)" if earlier_failed else ""
            click.echo(f"nothing to do: all {len(images)} images are already in {out}{note}", err=True)
        writer.close()
        if report is not None:
            _write_report(list(writer.existing), report, no_exif=no_exif, quiet=quiet)
        return

    scorer = _load_scorer(model, device, dtype)
    if no_exif:
        scorer.apply_exif = False
    mode = scorer.check_mode(mode)  # before any work: bad flags fail fast
    check_resumed_mode(mode)
    model_name = str(getattr(scorer, "name", model or "default"))
    earlier_models = {r.get("model") for r in writer.existing if r.get("model")}
    if earlier_models and earlier_models != {model_name}:
        _warn(f"--out {out} holds results of model {', '.join(sorted(earlier_models))}; appending {model_name}")

    options: dict[str, Any] = {}
    if max_tiles is not None:
        options["max_tiles"] = max_tiles
    if not quiet and skipped:
        click.echo(f"resuming {out}: {skipped} images already scored, {len(todo)} to go", err=True)

    new_rows: list[ScoreResult] = []
    failed = 0
    start = time.monotonic()
    keys = [str(p) for p in todo]
    # delay: short runs show no bar at all; long runs show images/s.
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=quiet, delay=1.0, dynamic_ncols=True,
               smoothing=0.1)
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            batch: list[ScoreResult] = []
            # iter_score yields a batch's results together; writing every batch_size results keeps
            # one fsync per model batch.
            for result in scorer.iter_score(keys, mode=mode, batch_size=batch_size, names=keys, **options):
                batch.append(result)
                bar.update(1)
                if len(batch) == batch_size:
                    writer.write_batch(batch, model=model_name, mode=mode)
                    new_rows.extend(batch)
                    batch = []
            if batch:
                writer.write_batch(batch, model=model_name, mode=mode)
                new_rows.extend(batch)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    failed = sum(1 for r in new_rows if r.error)
    writer.close()  # flush/finish the output before the report reads images again

    if interrupted:
        where = f"; {len(new_rows)} new rows are in {out}, rerun the same command to resume" if out else ""
        click.echo(f"interrupted after {len(new_rows)} of {len(todo)} images{where}", err=True)
        ctx.exit(130)

    if report is not None:
        from humanaes.io import flat_row

        rows = list(writer.existing) + [flat_row(r, model=model_name, mode=mode) for r in new_rows]
        _write_report(rows, report, no_exif=no_exif, quiet=quiet)

    if not quiet:
        elapsed = time.monotonic() - start
        ok = len(new_rows) - failed
        parts = [f"scored {ok} image{'' if ok == 1 else 's'}"]
        if failed:
            parts.append(f"{failed} failed")
        if new_rows and elapsed > 0:
            parts[-1] += f" ({len(new_rows) / elapsed:.2f} images/s)"
        if skipped:
            parts.append(f"{skipped} skipped (already in {out})")
        earlier_failed = _previous_failures(writer.existing) if (skipped and not retry_errors) else 0
        if earlier_failed:
            parts.append(f"{earlier_failed} earlier rows have errors (use --retry-errors)")
        dest = f" -> {out}" if out else ""
        click.echo(", ".join(parts) + dest + (f"; report: {report}" if report else ""), err=True)
    if failed:
        ctx.exit(1)


def _write_report(rows: list[dict[str, Any]], report: Path, *, no_exif: bool, quiet: bool) -> None:
    from tqdm import tqdm

    from humanaes.report import write_report

    if not rows:
        _warn("no rows to report; --report not written")
        return
    with tqdm(total=len(rows), unit="img", desc="report", file=sys.stderr, disable=quiet, delay=1.0) as bar:
        write_report(rows, report, apply_exif=not no_exif, on_thumbnail=lambda: bar.update(1))


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(as_json: bool) -> None:
    """List model presets and bundled models, and what their scores mean."""
    import humanaes
    from humanaes.cli.wrap import format_wrapped_table

    entries = list(humanaes.list_models())
    if as_json:
        click.echo(json.dumps(entries, indent=2, ensure_ascii=False))
        return
    if not entries:
        click.echo("no models available", err=True)
        return
    headers = ["name", "kind", "score meaning", "licence", "description"]
    rows = [[str(e.get(k.replace(" ", "_"), "") or "") for k in headers] for e in entries]
    click.echo(format_wrapped_table(headers, rows), nl=False)  # fits the terminal's width


COMMANDS = [score_command, models_command]
