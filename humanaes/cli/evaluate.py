"""`humanaes eval`: score a labelled data set with a model and write the evaluation report."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from humanaes.schema import SCORE_MODES


def _default_out(model: str, data: Path, split: str, mode: str) -> Path:
    # e.g. eval/HumanAesExpert-1B_HumanBeauty_test_metavoter: readable and unique per run setup
    model_name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name) or "model"
    data_name = data.parent.name + "-" + data.stem if data.is_file() else data.resolve().name
    return Path("eval") / f"{model_name}_{data_name}_{split}_{mode}"


@click.command("eval")
@click.option("--model", "-m", required=True, help="Model name or checkpoint path (as for `humanaes score`).")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split of a HumanBeauty root (ignored for a .jsonl file).")
@click.option("--mode", default="metavoter", show_default=True, type=click.Choice(SCORE_MODES), help="Scoring mode.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Report folder [default: eval/<model>_<data>_<split>_<mode>].")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--device", default=None, help="Device, e.g. cuda, cuda:1, cpu [default: best available].")
@click.option("--dtype", default=None, help="Weight dtype, e.g. float16, bfloat16, float32 [default: per device].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N items (quick check).")
def eval_cmd(
    model: str,
    data: Path,
    split: str,
    mode: str,
    out: Path | None,
    batch_size: int,
    device: str | None,
    dtype: str | None,
    limit: int | None,
) -> None:
    """Evaluate MODEL on DATA: a HumanBeauty root (its --split file) or one label .jsonl file.

    Writes report.json, report.md, predictions.jsonl, scatter.png and confusion.png. Items that
    cannot be scored are listed in the report and counted; they do not stop the run.
    """
    import humanaes
    from humanaes.data import load_samples
    from humanaes.errors import HumanAesError
    from humanaes.evaluation.evaluator import evaluate

    # Read the labels before loading the model: a bad path should fail in a second, not minutes.
    samples = load_samples(data, split)
    if limit is not None:
        samples = samples[:limit]
    load = getattr(humanaes, "load", None)
    if load is None:
        raise HumanAesError("this installation of humanaes has no model loader (humanaes.load); reinstall humanaes")
    scorer = load(model, device=device, dtype=dtype)
    out = out or _default_out(model, data, split, mode)
    title = f"{model} on {data}" + ("" if data.is_file() else f" ({split})")
    report = evaluate(scorer, samples, mode=mode, batch_size=batch_size, out_dir=out, progress=sys.stderr.isatty(), title=title)
    click.echo(report.summary())
    click.echo(f"report: {report.files['markdown']} (also report.json, predictions.jsonl, scatter.png, confusion.png)")
    if report.n_errors:
        first = report.errors[0]
        click.echo(
            f"warning: {report.n_errors} of {report.n_total} items could not be scored "
            f"(first: {first['image']}: {first['error']}); metrics use the {report.n_scored} scored items",
            err=True,
        )


COMMANDS = [eval_cmd]
