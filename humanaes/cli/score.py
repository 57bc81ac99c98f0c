"""`humanaes score` (score images, resumably) and `humanaes models` (what can score them).

Exit status of `score`: 0 when every image of this run was scored, 1 when any failed (their
rows carry an `error`), 2 for usage errors (bad paths, formats, models, flags), 130 when
interrupted (the rows written so far are kept; rerun the same command to resume).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from humanaes.errors import HumanAesError
from humanaes.schema import SCORE_MODES, ScoreResult
from humanaes.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from humanaes.io import DiscoveredImage
    from humanaes.io.writers import ResumableOutput

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


#: The largest --batch-size. A batch's decoded inputs and activations are held at once: measured
#: with the bundled model (benchmarks/batch_memory.py, 1 thread) peak RSS is 544 MiB at batch 8
#: and 1408 MiB at 128 (128 photos), 2091 MiB at 256 (256 photos): 6-8 MiB more per image in a
#: batch, and HumanAesExpert's tiles cost far more. Batches past a few dozen images are no faster
#: on a CPU (256 photos: 41 s at 8, 43 s at 64, 66 s at 256).
MAX_BATCH_SIZE = 128
#: How many failed items the summary names before pointing at the output for the rest.
NAMED_FAILURES = 3


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """One `humanaes score` run as its flags set it (one field per flag); `checked()` before use.

    `fmt` None means "from --out's extension" until `checked()` resolves it.
    """

    paths: tuple[Path, ...]
    model: str | None = None
    mode: str | None = None
    batch_size: int = 8
    max_tiles: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    out: Path | None = None
    fmt: str | None = None
    report: Path | None = None
    no_exif: bool = False
    retry_errors: bool = False
    quiet: bool = False
    threads: int | None = None
    extra_options: tuple[str, ...] = ()

    def checked(self) -> "ScoreSettings":
        """These settings with the output format resolved and mode, device and dtype lower-cased;
        HumanAesError for any flag that cannot work, checked in the order a user meets them and
        without the model: fail in a second, not after a minute of model loading."""
        from humanaes import io as hio

        batch_size, max_tiles, out, report = self.batch_size, self.max_tiles, self.out, self.report
        if batch_size < 1:
            raise HumanAesError(f"--batch-size must be at least 1, got {batch_size}")
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
        fmt = hio.resolve_output_format(out, self.fmt)
        if out is not None:
            hio.check_output_path(out, "--out")
        if out is not None and report is not None and hio.image_key(out) == hio.image_key(report):
            raise HumanAesError(f"--out and --report are the same file ({out}); give them different names")
        return dataclasses.replace(self, fmt=fmt, mode=self.mode.lower() if self.mode else None,
                                   device=self.device.lower(), dtype=self.dtype.lower())

    def scoring_options(self, scorer: Any) -> dict[str, Any]:
        """The scorer options these flags set, typed against `scorer`'s options (only the ones
        given: the model's defaults stay). HumanAesError for an option the model cannot use
        (e.g. --max-tiles with a model that has no tiles) or an ill-typed `-o` value."""
        from humanaes.options import option_pairs, parse_options

        given: dict[str, Any] = dict(option_pairs(self.extra_options))  # text: typed below
        if self.max_tiles is not None:
            given["max_tiles"] = self.max_tiles
        if self.no_exif:
            given["apply_exif"] = False
        typed = parse_options(scorer.options_class, given, defaults={"apply_exif": scorer.apply_exif},
                              owner=f"model {scorer.name!r}", from_text=True)
        return {name: getattr(typed, name) for name in given}


def _load_scorer(model: str | None, device: str, dtype: str, *, threads: int | None = None, quiet: bool = False) -> Any:
    """Load the model, saying so on stderr (it can take a while), and set the CPU threads:
    `threads` (--threads N), or runtime.default_threads() measured over the load (which load()
    also applies; setting it here keeps --threads authoritative)."""
    # Imported lazily: loading torch/transformers must not slow down `--help` or input errors.
    import humanaes
    from humanaes.runtime import CpuLoadProbe, apply_threads

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
@click.option("--option", "-o", "extra_options", multiple=True, metavar="NAME=VALUE",
              help="A typed option of the model (see `humanaes models --json` or /v1/models), e.g. "
                   "-o max_new_tokens=300 -o do_sample=true -o seed=0 for a sampled annotation. Repeatable.")
@click.option("--retry-errors", is_flag=True,
              help="When resuming, score again the images whose rows have an error (their rows are replaced).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for PyTorch. Default: the usable CPUs minus those other processes keep busy "
                   "while the model loads (a quiet 2-core machine gets 2, a busy one 1); N forces N.")
@click.pass_context
def score_command(ctx: click.Context, **flags: Any) -> None:
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

    settings = ScoreSettings(**flags).checked()  # one field per flag
    with ExitStack() as stack:
        # One writer per output: a second run on the same file is refused at once (the kernel
        # drops the lock when this process dies, so a killed run never leaves it stuck).
        if settings.out is not None:
            stack.enter_context(OutputLock(settings.out, what="--out"))
        if settings.report is not None:
            stack.enter_context(OutputLock(settings.report, what="--report"))
        hio.enable_optional_decoders()
        items = hio.discover_inputs(settings.paths)
        output = stack.enter_context(
            hio.open_output(settings.out, settings.fmt or "table", retry_errors=settings.retry_errors, warn=_warn)
        )
        _run(ctx, settings, output, items)


def _run(ctx: click.Context, settings: ScoreSettings, output: "ResumableOutput", items: "list[DiscoveredImage]") -> None:
    """Score what `output` does not hold yet, then write the report and print the summary."""
    todo = output.remaining(items)
    skipped = len(items) - len(todo)
    if not todo:
        # Nothing left to score: no need to load a model (which can take a minute).
        if settings.mode:
            output.check_mode(settings.mode)
        if not settings.quiet:
            failed = output.earlier_failures
            note = f" ({failed} of them with errors; use --retry-errors)" if failed else ""
            click.echo(f"nothing to do: all {len(items)} images are already in {settings.out}{note}", err=True)
        output.close()
        if settings.report is not None:
            _write_report(output.all_rows(), settings)
        return

    scorer, mode, model_name, options = _prepare_scorer(settings, output)
    if not settings.quiet and skipped:
        click.echo(f"resuming {settings.out}: {skipped} images already scored, {len(todo)} to go", err=True)
    start = time.monotonic()
    interrupted = _score_into(output, scorer, todo, settings, mode=mode, model_name=model_name, options=options)
    elapsed = time.monotonic() - start
    output.close()  # flush/finish the output (one row per image) before the report reads images again

    if interrupted:
        _say_interrupted(output, len(todo), settings.out)
        ctx.exit(130)
    if settings.report is not None:
        _write_report(output.all_rows(), settings)
    failed = [r for r in output.written if r.error]
    if not settings.quiet:
        displays = {item.key: item.display for item in todo}
        _print_summary(output, settings, skipped=skipped, elapsed=elapsed, displays=displays)
    if failed:
        ctx.exit(1)


def _prepare_scorer(settings: ScoreSettings, output: "ResumableOutput") -> tuple[Any, str, str, dict[str, Any]]:
    """(scorer, mode, model name, typed options): the model loaded and every flag checked against
    it before any image is read (a bad flag or a mode that would mix with the output's is exit 2 at once)."""
    scorer = _load_scorer(settings.model, settings.device, settings.dtype, threads=settings.threads,
                          quiet=settings.quiet)
    mode = scorer.check_mode(settings.mode)
    options = settings.scoring_options(scorer)  # e.g. --max-tiles with a model that has no tiles
    output.check_mode(mode)
    model_name = str(getattr(scorer, "name", settings.model or "default"))
    if output.mixes_models(model_name):
        _warn(f"--out {settings.out} holds results of model {', '.join(sorted(output.earlier_models))}; "
              f"appending {model_name}")
    return scorer, mode, model_name, options


def _score_into(output: "ResumableOutput", scorer: Any, todo: "list[DiscoveredImage]", settings: ScoreSettings, *,
                mode: str, model_name: str, options: dict[str, Any]) -> bool:
    """Score `todo` into `output` with a progress bar; True when interrupted (Ctrl-C, SIGTERM).

    Items discovery already refused (FIFOs, loops, dangling links, missing manifest entries)
    become error rows without being opened; runs of the others go to the model. Rows keep the
    input order and are written every batch_size results (one fsync per model batch).
    """
    from tqdm import tqdm

    displays = {item.key: item.display for item in todo}
    pending: list[ScoreResult] = []
    # delay: short runs show no bar at all; long runs show images/s.
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=settings.quiet, delay=1.0, dynamic_ncols=True,
               smoothing=0.1)

    def write() -> None:
        output.write(pending, model=model_name, mode=mode, displays=[displays.get(r.image) for r in pending])
        pending.clear()

    def add(result: ScoreResult) -> None:
        pending.append(result)
        bar.update(1)
        if len(pending) >= settings.batch_size:
            write()

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
                results = scorer.iter_score([item.path for item in group], mode=mode, batch_size=settings.batch_size,
                                            names=[item.display for item in group], **options)
                for item, result in zip(group, results):
                    result.image = item.key
                    add(result)
            if pending:
                write()
    except KeyboardInterrupt:
        return True
    finally:
        bar.close()
    return False


def _say_interrupted(output: "ResumableOutput", todo: int, out: Path | None) -> None:
    written = len(output.written)
    if not written:
        where = f"; {out} is unchanged" if out and out.exists() else ("; nothing was written" if out else "")
        click.echo(f"interrupted before any of {todo} images was scored{where}", err=True)
    else:
        where = f"; {written} new rows are in {out}, rerun the same command to resume" if out else ""
        click.echo(f"interrupted after {written} of {todo} images{where}", err=True)


def _print_summary(output: "ResumableOutput", settings: ScoreSettings, *, skipped: int, elapsed: float,
                   displays: dict[str, str]) -> None:
    """The run's summary on stderr: how many were scored, skipped and failed, and where they are."""
    out, new_rows = settings.out, output.written
    failed = [r for r in new_rows if r.error]
    ok = len(new_rows) - len(failed)
    parts = [f"scored {ok} image{'' if ok == 1 else 's'}"]
    if new_rows and elapsed > 0:
        parts[-1] += f" ({len(new_rows) / elapsed:.2f} images/s)"
    if skipped:
        parts.append(f"{skipped} skipped (already in {out})")
    earlier_failed = output.earlier_failures if (skipped and not settings.retry_errors) else 0
    if earlier_failed:
        parts.append(f"{earlier_failed} earlier rows have errors (use --retry-errors)")
    dest = f" -> {out}" if out else ""
    click.echo(", ".join(parts) + dest + (f"; report: {settings.report}" if settings.report else ""), err=True)
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


def _write_report(rows: list[dict[str, Any]], settings: ScoreSettings) -> None:
    from tqdm import tqdm

    from humanaes.io.report import write_report

    if not rows:
        _warn("no rows to report; --report not written")
        return
    with tqdm(total=len(rows), unit="img", desc="report", file=sys.stderr, disable=settings.quiet, delay=1.0) as bar:
        write_report(rows, settings.report, apply_exif=not settings.no_exif, on_thumbnail=lambda: bar.update(1))


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
