"""``medops tasks``: list and validate task files."""

from __future__ import annotations

from pathlib import Path

import click

from medops.settings import MedopsSettings
from medops.tasks.catalog import (
    SUFFIXES,
    data_path,
    data_problems,
    load_catalog,
    summary,
    task_files,
)
from medops.tasks.schema import Problem, TaskSpec


def _settings(ctx: click.Context) -> MedopsSettings:
    return ctx.find_object(MedopsSettings) or MedopsSettings()


@click.group("tasks")
def tasks() -> None:
    """Imaging tasks declared in task files."""


@tasks.command("list")
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of task files (default: MEDOPS_TASKS_DIR, else ./tasks).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data root the tasks' data paths are relative to (default: MEDOPS_DATA_DIR).",
)
@click.pass_context
def list_command(ctx: click.Context, folder: Path | None, data_dir: Path | None) -> None:
    """Every task and chain in the folder: kind, models, data folder (and whether it is
    there) and the chains a task belongs to. Files with problems are named at the end
    (exit status 2)."""
    settings = _settings(ctx)
    folder = folder or settings.tasks_dir
    root = data_dir or settings.data_dir
    files = task_files(folder)
    catalog, problems = load_catalog(files)
    rows = [("NAME", "KIND", "MODELS", "DATA", "CHAIN")]
    for spec in catalog.tasks():
        present = "present" if data_path(spec, root).is_dir() else "missing"
        rows.append(
            (
                spec.name,
                spec.kind,
                ",".join(spec.models),
                f"{spec.data.path} ({present})",
                ",".join(catalog.chains_of(spec.name)) or "-",
            )
        )
    for chain in catalog.chains():
        steps = [
            chain.chain.classifier,
            *([chain.chain.segmenter] if chain.chain.segmenter else []),
        ]
        rows.append((chain.name, "chain", "-", "-", " -> ".join(steps)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    _report(ctx, problems)


@tasks.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--check-data",
    is_flag=True,
    help="Also check each task's data on disk: the folder, its layout, masks, class folders.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data root for --check-data (default: MEDOPS_DATA_DIR).",
)
@click.pass_context
def validate_command(
    ctx: click.Context, files: tuple[Path, ...], check_data: bool, data_dir: Path | None
) -> None:
    """Validate task FILES: one summary line per valid file (exit 0); otherwise every
    problem as FILE: FIELD: what was found (exit 2). Chains and duplicate names are checked
    against the other task files of each file's folder too."""
    paths = [Path(f) for f in files]
    context = {
        p
        for path in paths
        if path.parent.is_dir()
        for p in task_files(path.parent)
        if p.suffix in SUFFIXES
    }
    catalog, problems = load_catalog(paths, context=sorted(context))
    if check_data:
        root = data_dir or _settings(ctx).data_dir
        for entry in catalog.files.values():
            if isinstance(entry.spec, TaskSpec) and entry.path in paths:
                problems += data_problems(entry.spec, entry.path.name, root)
    bad = {p.file for p in problems}
    for entry in catalog.files.values():
        if entry.path in paths and entry.path.name not in bad:
            click.echo(summary(entry))
    _report(ctx, problems)


def _report(ctx: click.Context, problems: list[Problem]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        ctx.exit(2)
