"""The ``medops`` command line.

The library's own commands live here; services and pipelines add theirs through the
``medops.commands`` entry-point group, so the library never imports them.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

from medops.data.cli import data
from medops.errors import MedopsError
from medops.registry.cli import models
from medops.settings import MedopsSettings
from medops.tasks.cli import tasks


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """medops: MLOps for medical imaging AI."""
    ctx.obj = MedopsSettings()


cli.add_command(data)
cli.add_command(models)
cli.add_command(tasks)


def _register_plugins() -> None:
    """Each entry point is a command; ``group.name`` adds it to that group of the library's
    (``models.import``: ``medops models import``)."""
    for ep in entry_points(group="medops.commands"):
        command = ep.load()
        group, _, name = ep.name.rpartition(".")
        parent = cli.commands.get(group) if group else cli
        if isinstance(parent, click.Group):
            parent.add_command(command, name=name)


def main() -> None:
    _register_plugins()
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MedopsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
