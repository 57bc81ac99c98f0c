"""`humanaes data ...`: validate, split, describe and import data sets in the HumanBeauty layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from humanaes import data as D
from humanaes.errors import DataError


@click.group("data")
def data() -> None:
    """Work with data sets in the HumanBeauty layout (label files + images)."""


@data.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--no-open", is_flag=True, help="Only check that image files exist; do not decode them (fast).")
@click.option("--quiet", "-q", is_flag=True, help="Print problems only, no warnings.")
def validate_cmd(path: Path, no_open: bool, quiet: bool) -> None:
    """Check every row of every label file under PATH (a HumanBeauty root or one label file).

    Exits 1 if any problem is found; each is printed as FILE:LINE: message.
    """
    report = D.validate_dataset(path, open_images=not no_open, progress=sys.stderr.isatty())
    for finding in report.problems:
        click.echo(f"{finding}")
    if not quiet:
        for finding in report.warnings:
            click.echo(f"warning: {finding}")
    checked = "existence checked" if no_open else "decoded"
    click.echo(
        f"{len(report.files)} label files, {report.rows} rows, {report.images_checked} images {checked}: "
        f"{len(report.problems)} problems, {len(report.warnings)} warnings",
        err=True,
    )
    if not report.ok:
        sys.exit(1)


@data.command("split")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--test-ratio", default=0.1, show_default=True, type=float, help="Share of each source put in test.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the reproducible shuffle.")
@click.option("--force", is_flag=True, help="Overwrite existing train_label.jsonl / test_label.jsonl.")
def split_cmd(root: Path, test_ratio: float, seed: int, force: bool) -> None:
    """Split ROOT's <subset>/label.jsonl files per source into train/test label files."""
    result = D.split_dataset(root, test_ratio=test_ratio, seed=seed, force=force)
    for group, counts in result["groups"].items():
        click.echo(f"{group}: {counts['train']} train, {counts['test']} test")
    click.echo(f"wrote {result['files']['train']} ({result['train']} rows) and {result['files']['test']} ({result['test']} rows)")


@data.command("stats")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats_cmd(path: Path, as_json: bool) -> None:
    """Counts per source and split, score histogram and level balance of PATH."""
    stats = D.dataset_stats(path)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        click.echo(D.format_stats(stats))


@data.command("import")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("--images", default=None, type=click.Path(path_type=Path), help="Folder the image names are relative to (table format).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="HumanBeauty root to write (created if absent).")
@click.option("--scale", default=None, nargs=2, type=float, metavar="MIN MAX", help="Raw score scale, e.g. 1 10 (table format).")
@click.option("--source", default=None, help="Source name of the rows (default: the table's file name).")
@click.option("--copy", is_flag=True, help="Copy the images (default: relative symlinks, no copy).")
@click.option("--force", is_flag=True, help="Replace rows of the same source already in OUT (swift: replace OUT).")
@click.option("--format", "table_format", type=click.Choice(["table", "swift"]), default="table", show_default=True,
              help="table: image + raw scores; swift: an ms-swift JSONL (see `humanaes data export`).")
@click.option("--images-root", default=None, type=click.Path(path_type=Path),
              help="swift format: the folder every absolute image path must lie under.")
def import_cmd(
    table: Path, images: Path | None, out: Path, scale: tuple[float, float] | None, source: str | None, copy: bool,
    force: bool, table_format: str, images_root: Path | None,
) -> None:
    """Import TABLE (.csv/.tsv with a header, or .jsonl) of image, score[, 12 dimension scores].

    CSV columns: `image` and `score`, and optionally the twelve dimension names as columns
    (e.g. `Facial Brightness`); JSONL rows: {"image": ..., "score": number or [12 numbers]}.
    Scores are min-max normalised from the declared --scale to [0, 1]. Run `humanaes data split OUT`
    afterwards to make train/test files.

    Only files under --images whose content is an image are read (`../`, absolute names and
    symlinks leading out are refused); every row is checked before anything is written, and the
    new OUT is built beside it and swapped in whole, so a failed import leaves OUT as it was.

    With --format swift, TABLE is an ms-swift JSONL (the official fine-tuning's training rows)
    and OUT gets the HumanBeauty layout with a train split; needs --images-root, no --scale.
    """
    if table_format == "swift":
        from humanaes.cli.data_swift import import_swift_file

        import_swift_file(table, out=out, images_root=images_root, images=images, scale=scale, source=source, copy=copy, force=force)
        return
    if images is None or scale is None:
        raise DataError("--images and --scale are required to import a table (or pass --format swift)")
    result = D.import_table(table, images=images, out=out, scale=scale, source=source, copy=copy, force=force)
    parts = ", ".join(f"{n} to {s}" for s, n in result["per_subset"].items() if n)
    click.echo(f"imported {result['rows']} rows of source {result['source']!r} into {result['out']} ({parts}); images {result['images']}")
    for message in result["messages"]:
        click.echo(f"note: {message}")


COMMANDS = [data]
