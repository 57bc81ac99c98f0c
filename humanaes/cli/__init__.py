"""The `humanaes` command line. Each concern's commands live in a sibling module.

User errors (HumanAesError) print one line and exit 2; everything else keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from humanaes import __version__
from humanaes.errors import HumanAesError
from humanaes.hints import hint_style, missing_extra_message


class _Group(click.Group):
    """Turns user errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            with hint_style("cli"):  # fix-it hints name flags, not Python arguments
                return super().invoke(ctx)
        except HumanAesError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except ModuleNotFoundError as exc:
            # An optional extra that is not installed is a set-up problem, not a bug: say which
            # `pip install 'humanaes[...]'` fixes it. Any other missing module keeps its traceback.
            command = ctx.invoked_subcommand or ctx.info_name or "humanaes"
            message = missing_extra_message(exc.name, f"`humanaes {command}`")
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="humanaes")
def main() -> None:
    """HumanAesExpert human image aesthetic assessment."""


def _register() -> None:
    # Imported here so that `humanaes --help` stays fast and one broken optional module does
    # not take the whole CLI down.
    import importlib

    for module in ("score", "data", "databuild", "data_swift", "evaluate", "train", "serve", "batch"):
        try:
            mod = importlib.import_module(f"humanaes.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"humanaes.cli.{module}":
                continue
            raise
        for command in getattr(mod, "COMMANDS", []):
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
