"""`humanaes data build SPEC --out ROOT`: attaches the data-set builder to the `data` group."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from humanaes.cli.data import data


@data.command("build")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="HumanBeauty root to publish (a new or empty folder, or a previous build).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None, help="Probing processes [default: all cores].")
@click.option("--copy", is_flag=True, help="Copy the images (default: relative symlinks to the source files).")
@click.option("--force", is_flag=True, help="Replace a different build already in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages, only the summary line.")
def build_cmd(spec: Path, out: Path, workers: int | None, copy: bool, force: bool, quiet: bool) -> None:
    """Build a HumanBeauty-style data set from public data sets listed in SPEC (YAML).

    Filters (undecodable, resolution, human present, max faces, near-duplicates) drop images with a
    reason; scores are min-max normalised per source; the split is seeded, 90/10 per source. The set
    is built beside --out and published in one step; an interrupted build keeps `<out>.work/` and
    resumes. See docs/data-build.md.
    """
    from humanaes.data.build import BuildInterrupted, build_dataset

    log = None if quiet else (lambda message: click.echo(message, err=True))
    try:
        result = build_dataset(spec, out, workers=workers, copy=copy, force=force,
                               progress=not quiet and sys.stderr.isatty(), log=log)
    except BuildInterrupted as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:  # after probing: writing or publishing was stopped
        click.echo(f"error: interrupted; nothing was published (the probe cache in {out}.work is kept)", err=True)
        sys.exit(130)
    totals = result.report["totals"]
    dropped = {}
    for source in result.report["sources"].values():
        for reason, n in source["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    drops = ", ".join(f"{reason}: {n}" for reason, n in dropped.items()) or "none"
    click.echo(
        f"built {result.out}: {totals['kept']} of {totals['rows_in']} rows kept ({totals['train']} train, {totals['test']} test); "
        f"dropped {totals['dropped']} ({drops}); report {result.out / 'build_report.md'}"
    )


COMMANDS: list[click.Command] = []  # `build` lives in the `data` group registered by humanaes.cli.data
