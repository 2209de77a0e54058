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


def _open(path: Path, home: Path) -> Manifest:
    """A saved manifest as is; a dataset folder is ingested first."""
    from medops.data import ingest, load_manifest

    if (path.is_file() and path.suffix == ".json") or (path / "manifest.json").is_file():
        return load_manifest(path)
    return ingest(path, home, progress=True)


@click.group("data")
def data() -> None:
    """Datasets: ingest, validate and describe."""


@data.command("ingest")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Dataset name (default: from the folder name).")
@click.pass_context
def ingest_command(ctx: click.Context, path: Path, name: str | None) -> None:
    """Ingest the dataset folder PATH into a versioned manifest."""
    from medops.data import ingest

    manifest = ingest(path, _home(ctx), name=name, progress=True)
    click.echo(f"name      {manifest.name}")
    click.echo(f"layout    {manifest.layout} ({manifest.kind})")
    click.echo(f"version   {manifest.version}")
    click.echo(f"samples   {len(manifest.samples)}")
    click.echo(f"manifest  {manifest.path}")


@data.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the patient split checked.")
@click.pass_context
def validate_command(ctx: click.Context, path: Path, seed: int) -> None:
    """Validate PATH (a dataset folder or a manifest); exit status 1 when it has errors."""
    from medops.data import split_dataset, validate

    manifest = _open(path, _home(ctx))
    splits = split_dataset(manifest, seed=seed)
    report = validate(manifest, splits, progress=True)
    click.echo(report.to_text())
    if not report.ok:
        ctx.exit(1)


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
@click.pass_context
def describe_command(ctx: click.Context, path: Path) -> None:
    """Summarise PATH: patients, slices, tumour-positive slices, image shapes, classes."""
    manifest = _open(path, _home(ctx))
    n = len(manifest.samples)
    click.echo(f"dataset   {manifest.name} ({manifest.layout}, {manifest.kind})")
    click.echo(f"version   {manifest.version}")
    click.echo(f"patients  {len(manifest.patients)}")
    click.echo(f"slices    {n}")
    if manifest.kind == "segmentation":
        positive = sum(s.label == 1 for s in manifest.samples)
        click.echo(f"tumour-positive slices  {positive} ({100 * positive / max(n, 1):.1f}%)")
        missing = sum(s.mask is None for s in manifest.samples)
        if missing:
            click.echo(f"slices without a mask   {missing}")
    else:
        counts = manifest.class_counts()
        click.echo("classes   " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for shape, count in _shapes(manifest).most_common():
        click.echo(f"image     {shape} ({count} slices)")
