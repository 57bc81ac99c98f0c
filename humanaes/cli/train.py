"""`humanaes train`, `humanaes train-metavoter`, `humanaes merge-lora` (formerly `humanaes export`)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("train")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--resume", default=None, help="'auto' (latest checkpoint in the output folder) or a checkpoint folder.")
def train_cmd(config_file: Path, overrides: tuple[str, ...], resume: str | None) -> None:
    """Fine-tune HumanAesExpert (LoRA + heads) from a YAML/JSON CONFIG_FILE.

    OVERRIDES are key=value pairs, e.g. trainer.lr=5e-5 data.max_tiles=6 lora.r=16.
    The merged model is written to <trainer.output_dir>/final in humanaes format.
    """
    from humanaes.hints import hint_style, import_optional
    from humanaes.training.finetune import FinetuneConfig, run_training

    with hint_style("config"):  # `train` has no --model/--device: hints name the config keys
        config = FinetuneConfig.from_file(config_file, list(overrides))
        if config.lora.r > 0:  # fail in a second, not after the model has loaded
            import_optional("peft", "`humanaes train` with LoRA (lora.r > 0)")
        summary = run_training(config, resume=resume)
    click.echo(json.dumps(summary, indent=2, default=str))


@click.command("train-metavoter")
@click.option("--model", "model", required=True, help="The stage-1 model (folder, e.g. <run>/final).")
@click.argument("data")
@click.option("--split", default="train", show_default=True, help="Split to read when DATA is a HumanBeauty folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the model with the fitted MetaVoter.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--max-tiles", default=None, type=click.IntRange(min=1, max=40))
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def train_metavoter_cmd(model: str, data: str, split: str, out: Path, batch_size: int, max_tiles: int | None,
                        steps: int, seed: int, device: str) -> None:
    """Fit the MetaVoter on held-out training rows DATA (e.g. <run>/metavoter_holdout.jsonl)."""
    from humanaes.training.metavoter import train_metavoter

    path, report = train_metavoter(model, data, out, split=split, batch_size=batch_size, max_tiles=max_tiles,
                                   steps=steps, seed=seed, device=device)
    val = report.get("validation", {})
    for name, metrics in val.items():
        click.echo(f"{name:14s} PLCC {metrics['plcc']:.4f}  SRCC {metrics['srcc']:.4f}  RMSE {metrics['rmse']:.4f}")
    click.echo(f"saved {path}")


@click.command("merge-lora")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("checkpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
def merge_lora_cmd(config_file: Path, checkpoint: Path, out: Path) -> None:
    """Merge a training CHECKPOINT's LoRA adapters into the weights; save in humanaes format."""
    from humanaes.training.finetune import FinetuneConfig, export_checkpoint

    click.echo(f"saved {export_checkpoint(FinetuneConfig.from_file(config_file), checkpoint, out)}")


# The old name, easy to confuse with `humanaes data export`: still works, hidden from --help.
export_alias_cmd = click.Command(
    "export", callback=merge_lora_cmd.callback, params=merge_lora_cmd.params, hidden=True,
    help="Old name of `humanaes merge-lora`.",
)

COMMANDS = [train_cmd, train_metavoter_cmd, merge_lora_cmd, export_alias_cmd]
