"""`humanaes score` (score images, resumably) and `humanaes models` (what can score them).

Exit status of `score`: 0 when every image of this run was scored, 1 when any failed (their
rows carry an `error`), 2 for usage errors (bad paths, formats, models, flags), 130 when
interrupted (the rows written so far are kept; rerun the same command to resume).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from humanaes.errors import HumanAesError
from humanaes.signals import sigterm_as_interrupt
from humanaes.schema import SCORE_MODES, ScoreResult

if TYPE_CHECKING:
    from humanaes.io import DiscoveredImage, ResultWriter

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


def _previous_failures(rows: list[dict[str, Any]]) -> int:
    # writer.existing holds one row per image already (the latest)
    return sum(1 for r in rows if r.get("error"))


#: The largest --batch-size. A batch's decoded inputs and activations are held at once: measured
#: with the bundled model (benchmarks/batch_memory.py, 1 thread) peak RSS is 544 MiB at batch 8
#: and 1408 MiB at 128 (128 photos), 2091 MiB at 256 (256 photos): 6-8 MiB more per image in a
#: batch, and HumanAesExpert's tiles cost far more. Batches past a few dozen images are no faster
#: on a CPU (256 photos: 41 s at 8, 43 s at 64, 66 s at 256).
MAX_BATCH_SIZE = 128
#: How many failed items the summary names before pointing at the output for the rest.
NAMED_FAILURES = 3


@click.command("score")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model", default=None, metavar="NAME|DIR",
              help="Preset name, checkpoint folder or hub id (default: the bundled model).")
@click.option("--mode", type=click.Choice(SCORE_MODES, case_sensitive=False), default=None,
              help="What to compute (default: the model's default mode).")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help=f"Images per forward pass (1 to {MAX_BATCH_SIZE}).")
@click.option("--max-tiles", type=int, default=None, help="Most 448px tiles per image (default: the model's).")
@click.option("--device", type=click.Choice(DEVICES, case_sensitive=False), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES, case_sensitive=False), default="auto", show_default=True,
              help="Compute dtype. auto: the checkpoint's half precision on GPUs; for the bundled model, bfloat16 "
                   "on CPUs with bfloat16 units (2-3x faster, scores within ~0.002 of float32), else float32.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Output file (.csv, .jsonl or .parquet); an existing one is resumed. One run at a time per file.")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "jsonl", "parquet"), case_sensitive=False),
              default=None, help="Output format (default: from --out's extension; a table without --out).")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a self-contained HTML report (all rows of --out, when resuming).")
@click.option("--no-exif", is_flag=True, help="Ignore EXIF orientation (the official code's behaviour).")
@click.option("--retry-errors", is_flag=True,
              help="When resuming, score again the images whose rows have an error (their rows are replaced).")
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

    Every row's `image` is the file's absolute path (not symlink-resolved; names that are not
    UTF-8 are written `bytes:` + percent-encoded bytes) and is what a resume matches; `display`
    is the path as you gave it. FIFOs, devices, symlink loops and dangling links get error rows
    without being opened. A second run on the same --out or --report is refused while one runs.
    """
    from humanaes import io as hio
    from humanaes.fsutil import OutputLock

    # Everything that can be checked without the model is checked first: fail in a second, not
    # after a minute of model loading.
    if batch_size < 1:
        raise HumanAesError(f"--batch-size must be at least 1, got {batch_size}")
    # Applied when the model loads (_load_scorer): torch stays unimported until then.
    ctx.meta["humanaes.threads"] = threads
    ctx.meta["humanaes.quiet"] = quiet
    if max_tiles is not None and max_tiles < 1:
        raise HumanAesError(f"--max-tiles must be at least 1, got {max_tiles}")
    if batch_size > MAX_BATCH_SIZE:
        raise HumanAesError(
            f"--batch-size {batch_size} is above the maximum of {MAX_BATCH_SIZE}: a batch is held in memory at once "
            "and larger batches are not faster; use a smaller one"
        )
    if report is not None and report.suffix.lower() not in (".html", ".htm"):
        raise HumanAesError(f"--report {report} should be an .html file")
    if report is not None:
        hio.check_output_path(report, "--report")
    fmt = hio.resolve_output_format(out, fmt)
    if out is not None:
        hio.check_output_path(out, "--out")
    if out is not None and report is not None and hio.image_key(out) == hio.image_key(report):
        raise HumanAesError(f"--out and --report are the same file ({out}); give them different names")
    with ExitStack() as locks:
        # One writer per output: a second run on the same file is refused at once (the kernel
        # drops the lock when this process dies, so a killed run never leaves it stuck).
        if out is not None:
            locks.enter_context(OutputLock(out, what="--out"))
        if report is not None:
            locks.enter_context(OutputLock(report, what="--report"))
        hio.enable_optional_decoders()
        items = hio.discover_inputs(paths)
        writer = hio.open_writer(out, fmt, warn=_warn)
        try:
            _run(ctx, writer, items, model=model, mode=mode, batch_size=batch_size, max_tiles=max_tiles,
                 device=device.lower(), dtype=dtype.lower(), out=out, report=report, no_exif=no_exif,
                 retry_errors=retry_errors, quiet=quiet)
        finally:
            writer.close()


def _run(
    ctx: click.Context,
    writer: "ResultWriter",
    items: "list[DiscoveredImage]",
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
    todo = [item for item in items if item.key not in done]
    skipped = len(items) - len(todo)

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
            click.echo(f"nothing to do: all {len(items)} images are already in {out}{note}", err=True)
        writer.close()
        if report is not None:
            _write_report(writer.all_rows(), report, no_exif=no_exif, quiet=quiet)
        return

    scorer = _load_scorer(model, device, dtype)
    options: dict[str, Any] = {}
    if max_tiles is not None:
        options["max_tiles"] = max_tiles
    if no_exif:
        options["apply_exif"] = False
    mode = scorer.check_mode(mode)  # before any work: bad flags fail fast
    scorer.parse_options(**options)  # e.g. --max-tiles with a model that has no tiles: exit 2
    check_resumed_mode(mode)
    model_name = str(getattr(scorer, "name", model or "default"))
    earlier_models = {r.get("model") for r in writer.existing if r.get("model")}
    if earlier_models and earlier_models != {model_name}:
        _warn(f"--out {out} holds results of model {', '.join(sorted(earlier_models))}; appending {model_name}")

    if not quiet and skipped:
        click.echo(f"resuming {out}: {skipped} images already scored, {len(todo)} to go", err=True)

    # Items discovery already refused (FIFOs, loops, dangling links, missing manifest entries)
    # become error rows without being opened; runs of the others go to the model. Rows keep the
    # input order and are written every batch_size results (one fsync per model batch).
    displays = {item.key: item.display for item in todo}
    new_rows: list[ScoreResult] = []
    pending: list[ScoreResult] = []
    start = time.monotonic()
    # delay: short runs show no bar at all; long runs show images/s.
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=quiet, delay=1.0, dynamic_ncols=True,
               smoothing=0.1)

    def write() -> None:
        writer.write_batch(pending, model=model_name, mode=mode, displays=[displays.get(r.image) for r in pending])
        new_rows.extend(pending)
        pending.clear()

    def add(result: ScoreResult) -> None:
        pending.append(result)
        bar.update(1)
        if len(pending) >= batch_size:
            write()

    interrupted = False
    try:
        with sigterm_as_interrupt():
            for refused, run in itertools.groupby(todo, key=lambda item: item.error is not None):
                group = list(run)
                if refused:
                    for item in group:
                        add(ScoreResult.failed(item.key, f"{item.display}: {item.error}"))
                    continue
                # The model names results (and their errors) by the path as given; the row's
                # image is the key. iter_score yields one result per input, in order.
                results = scorer.iter_score([item.path for item in group], mode=mode, batch_size=batch_size,
                                            names=[item.display for item in group], **options)
                for item, result in zip(group, results):
                    result.image = item.key
                    add(result)
            if pending:
                write()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    writer.close()  # flush/finish the output (one row per image) before the report reads images again

    if interrupted:
        if not new_rows:
            where = f"; {out} is unchanged" if out and out.exists() else ("; nothing was written" if out else "")
            click.echo(f"interrupted before any of {len(todo)} images was scored{where}", err=True)
        else:
            where = f"; {len(new_rows)} new rows are in {out}, rerun the same command to resume" if out else ""
            click.echo(f"interrupted after {len(new_rows)} of {len(todo)} images{where}", err=True)
        ctx.exit(130)

    if report is not None:
        _write_report(writer.all_rows(), report, no_exif=no_exif, quiet=quiet)

    failed = [r for r in new_rows if r.error]
    if not quiet:
        elapsed = time.monotonic() - start
        ok = len(new_rows) - len(failed)
        parts = [f"scored {ok} image{'' if ok == 1 else 's'}"]
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
            click.echo(_failure_summary(failed, displays, out), err=True)
        no_person = sum(1 for r in new_rows if r.person_found is False)
        if no_person:
            click.echo(
                f"{no_person} image{' has' if no_person == 1 else 's had'} no detectable person: "
                f"{'its scores are' if no_person == 1 else 'their scores are'} not meaningful"
                f"{'' if out is None else ' (person_found is false in ' + str(out) + ')'}",
                err=True,
            )
    if failed:
        ctx.exit(1)


def _failure_summary(failed: list[ScoreResult], displays: dict[str, str], out: Path | None) -> str:
    """'2 failed: a.jpg (why), b.jpg (why)' naming the first few, and where the rest are."""
    from humanaes.io import clean_text

    def why(result: ScoreResult) -> str:
        name = displays.get(result.image, result.image)
        cause = (result.error or "").replace("\n", " ")
        if cause.startswith(name + ": "):
            cause = cause[len(name) + 2:]
        elif cause.startswith(result.image + ": "):
            cause = cause[len(result.image) + 2:]
        return clean_text(f"{name} ({cause})")

    named = "; ".join(why(r) for r in failed[:NAMED_FAILURES])
    text = f"{len(failed)} failed: {named}"
    rest = len(failed) - NAMED_FAILURES
    where = f"the error column of {out}" if out is not None else "the error column above"
    if rest > 0:
        text += f"; and {rest} more, see {where}"
    elif out is not None:
        text += f" (also in {where})"
    return text


def _write_report(rows: list[dict[str, Any]], report: Path, *, no_exif: bool, quiet: bool) -> None:
    from tqdm import tqdm

    from humanaes.io.report import write_report

    if not rows:
        _warn("no rows to report; --report not written")
        return
    with tqdm(total=len(rows), unit="img", desc="report", file=sys.stderr, disable=quiet, delay=1.0) as bar:
        write_report(rows, report, apply_exif=not no_exif, on_thumbnail=lambda: bar.update(1))


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(as_json: bool) -> None:
    """List the registered models (one row per name: bundled, presets, any other family) and what their scores mean."""
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
