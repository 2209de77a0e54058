"""``medops models``: what the registry holds."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from medops.settings import MedopsSettings

HEADLINE = (
    "test_auc",
    "test_sensitivity",
    "test_specificity",
    "test_ece",
    "test_dice_patient_mean",
    "test_accuracy",
)
"""Metrics shown per version when present (all are in ``--json``)."""


@click.group("models")
def models() -> None:
    """Registered models, their versions, aliases and metrics."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_models(ctx: click.Context, as_json: bool) -> None:
    """Each registered model with its versions, aliases and headline metrics."""
    from medops.registry import Registry

    settings = ctx.find_object(MedopsSettings) or MedopsSettings()
    summaries = Registry(settings.mlflow_uri).list_models()
    if as_json:
        click.echo(json.dumps([asdict(s) for s in summaries], indent=2))
        return
    if not summaries:
        click.echo(f"no registered models in {settings.mlflow_uri}")
        return
    for summary in summaries:
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(summary.aliases.items()))
        click.echo(f"{summary.name}  ({aliases or 'no aliases'})")
        for v in summary.versions:
            shown = "  ".join(
                f"{k.removeprefix('test_')}={v.metrics[k]:.3f}" for k in HEADLINE if k in v.metrics
            )
            tag = f" [{', '.join(v.aliases)}]" if v.aliases else ""
            click.echo(f"  v{v.version}{tag}  data={v.dataset_version}  {shown}")
