"""`humanaes data export --format swift` and the swift side of `humanaes data import`: the bridge
to the official fine-tuning's ms-swift training file (humanaes/swift.py)."""

from __future__ import annotations

from pathlib import Path

import click

from humanaes.cli.data import data
from humanaes.errors import DataError


@data.command("export")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(["swift"]), required=True,
              help="swift: the QA-pair JSONL of the official fine-tuning (ms-swift).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .jsonl file to write.")
@click.option("--split", default="train", show_default=True, help="Split of ROOT to export (ROOT/<split>_label.jsonl).")
def export_cmd(root: Path, export_format: str, out: Path, split: str) -> None:
    """Write ROOT's training rows (a HumanBeauty root or one label file) for ms-swift.

    One JSON line per row with the keys query (""), response (the answer text), history ([]),
    images ([absolute path]), scores (twelve floats; overall-only rows are eleven zeros and the
    overall score) and is_expert (0/1), as the release's prepare_data_for_swift.py writes them.
    """
    from humanaes.data.swift import export_swift

    result = export_swift(root, out, split=split)
    click.echo(
        f"wrote {result['rows']} rows ({result['overall_rows']} overall-only, {result['expert_rows']} 12-dimension) "
        f"to {result['out']}"
    )


def import_swift_file(
    file: Path, *, out: Path, images_root: Path | None, images: Path | None, scale: tuple[float, float] | None,
    source: str | None, copy: bool, force: bool,
) -> None:
    """`humanaes data import --format swift FILE --out ROOT --images-root DIR`."""
    from humanaes.data.swift import import_swift

    if scale is not None:
        raise DataError("--scale does not apply to --format swift: its scores are already in [0, 1]")
    if images is not None:
        raise DataError("--format swift takes --images-root (the folder the absolute image paths lie under), not --images")
    if images_root is None:
        raise DataError("--format swift needs --images-root: the folder every image path in the file must lie under")
    result = import_swift(file, out=out, images_root=images_root, source=source, copy=copy, force=force)
    parts = ", ".join(f"{n} to {subset}" for subset, n in result["per_subset"].items())
    click.echo(
        f"imported {result['rows']} rows of source {result['source']!r} into {result['out']} ({parts}); "
        f"split file {result['split_file']}; images {result['images']}"
    )


COMMANDS: list[click.Command] = []  # the command attaches to the `data` group above
