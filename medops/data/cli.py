"""``medops data``: ingest, validate and describe datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from medops.settings import MedopsSettings

if TYPE_CHECKING:
    from medops.data.manifest import Manifest


def _home(ctx: click.Context) -> Path:
    settings = ctx.find_object(MedopsSettings) or MedopsSettings()
    return settings.home


def _ingest(path: Path, home: Path, task: Path | None, name: str | None = None) -> Manifest:
    """Ingest the folder PATH, read as the task file ``task`` declares it when one is given."""
    from medops.data import ingest

    if task is None:
        return ingest(path, home, name=name, progress=True)
    from medops.tasks import read_task

    spec = read_task(task)
    return ingest(
        path,
        home,
        name=name,
        progress=True,
        layout=spec.data.layout,
        options=spec.layout_options(),
    )


def _open(path: Path, home: Path, task: Path | None) -> Manifest:
    """A saved manifest as is; a dataset folder is ingested first."""
    from medops.data import load_manifest

    if (path.is_file() and path.suffix == ".json") or (path / "manifest.json").is_file():
        return load_manifest(path)
    return _ingest(path, home, task)


_TASK = click.option(
    "--task",
    type=click.Path(path_type=Path),
    default=None,
    help="Task file whose data this is: its layout, mask threshold and samples kept together.",
)


@click.group("data")
def data() -> None:
    """Datasets: ingest, validate and describe."""


@data.command("ingest")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Dataset name (default: from the folder name).")
@_TASK
@click.pass_context
def ingest_command(ctx: click.Context, path: Path, name: str | None, task: Path | None) -> None:
    """Ingest the dataset folder PATH into a versioned manifest."""
    manifest = _ingest(path, _home(ctx), task, name)
    click.echo(f"name      {manifest.name}")
    click.echo(f"layout    {manifest.layout} ({manifest.kind})")
    click.echo(f"version   {manifest.version}")
    click.echo(f"samples   {len(manifest.samples)}")
    if manifest.mask_threshold is not None:
        click.echo(f"masks     foreground at {manifest.mask_threshold} or above")
    click.echo(f"manifest  {manifest.path}")


@data.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the patient split checked.")
@_TASK
@click.pass_context
def validate_command(ctx: click.Context, path: Path, seed: int, task: Path | None) -> None:
    """Validate PATH (a dataset folder or a manifest); exit status 1 when it has errors."""
    from medops.data import split_dataset, validate

    manifest = _open(path, _home(ctx), task)
    splits = split_dataset(manifest, seed=seed)
    report = validate(manifest, splits, progress=True)
    click.echo(report.to_text())
    if not report.ok:
        ctx.exit(1)


_SHAPES_SHOWN = 10


def _shapes(manifest: Manifest) -> Counter[str]:
    """``HxWxC dtype`` of every slice, read from the file headers (volumes once each)."""
    import sys

    from tqdm import tqdm

    from medops.data.reading import probe_2d, read_volume

    shapes: Counter[str] = Counter()
    volumes: dict[str, str] = {}
    for s in tqdm(
        manifest.samples, desc="reading headers", unit="slice", file=sys.stderr, leave=False
    ):
        if s.slice_index is None:
            (h, w, c), dtype = probe_2d(manifest.image_path(s), s.image)
        else:
            if s.image not in volumes:
                arr = read_volume(manifest.root, s.image)
                c, _, y, x = arr.shape
                volumes[s.image] = f"{y}x{x}x{c} {arr.dtype}"
            shapes[volumes[s.image]] += 1
            continue
        shapes[f"{h}x{w}x{c} {dtype}"] += 1
    return shapes


@data.command("describe")
@click.argument("path", type=click.Path(path_type=Path))
@_TASK
@click.pass_context
def describe_command(ctx: click.Context, path: Path, task: Path | None) -> None:
    """Summarise PATH: patients (or groups), slices, positive slices, image shapes, classes."""
    manifest = _open(path, _home(ctx), task)
    n = len(manifest.samples)
    click.echo(f"dataset   {manifest.name} ({manifest.layout}, {manifest.kind})")
    click.echo(f"version   {manifest.version}")
    if manifest.layout == "image-mask-folders":
        # no patients: a group is an image, or the images kept on one side of every split
        shared = sum(c > 1 for c in Counter(s.patient_id for s in manifest.samples).values())
        click.echo(f"groups    {len(manifest.patients)} (an image each; {shared} of 2 or more)")
        click.echo(f"masks     foreground at {manifest.mask_threshold} or above")
    else:
        click.echo(f"patients  {len(manifest.patients)}")
    click.echo(f"slices    {n}")
    if manifest.kind == "segmentation":
        positive = sum(s.label == 1 for s in manifest.samples)
        name = manifest.classes[-1]
        click.echo(f"{name}-positive slices  {positive} ({100 * positive / max(n, 1):.1f}%)")
        missing = sum(s.mask is None for s in manifest.samples)
        if missing:
            click.echo(f"slices without a mask   {missing}")
    else:
        counts = manifest.class_counts()
        click.echo("classes   " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    shapes = _shapes(manifest).most_common()
    for shape, count in shapes[:_SHAPES_SHOWN]:
        click.echo(f"image     {shape} ({count} slices)")
    if len(shapes) > _SHAPES_SHOWN:
        rest = sum(count for _, count in shapes[_SHAPES_SHOWN:])
        click.echo(f"image     {len(shapes) - _SHAPES_SHOWN} other shapes ({rest} slices)")
