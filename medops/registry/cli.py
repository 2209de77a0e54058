"""``medops models``: what the registry holds, and operator overrides of the champion."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from medops.errors import MedopsError
from medops.registry.audit import default_audit_path
from medops.registry.card import CI_HIGH, CI_LOW, CROSS_VALIDATED, SINGLE_SPLIT
from medops.registry.client import PARITY_TOLERANCE
from medops.settings import MedopsSettings

if TYPE_CHECKING:
    from medops.registry import AliasChange, Registry, VersionSummary

HEADLINE = (
    "auc",
    "sensitivity",
    "specificity",
    "ece",
    "accuracy",
    "dice_patient_mean",
    "two_stage_dice_patient_mean",
)
"""Figures shown per version when present and its run names no headline of its task's own
(everything is in ``--json``): ``test_<name>`` with its ``_ci_low``/``_ci_high`` interval
(single split) or ``cv_<name>_mean``/``_std`` (cross-validated)."""


def _settings(ctx: click.Context) -> MedopsSettings:
    return ctx.find_object(MedopsSettings) or MedopsSettings()


def _registry(ctx: click.Context) -> Registry:
    from medops.registry import Registry

    return Registry(_settings(ctx).mlflow_uri)


def _bound(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


def evaluation_of(v: VersionSummary) -> str | None:
    """The version's ``evaluation`` tag, else what its metrics show (older versions)."""
    if v.evaluation:
        return v.evaluation
    if any(k.startswith("cv_") and k.endswith("_mean") for k in v.metrics):
        return CROSS_VALIDATED
    if any(k.startswith("test_") for k in v.metrics):
        return SINGLE_SPLIT
    return None


def figures(
    metrics: Mapping[str, float], evaluation: str | None, names: Sequence[str] = HEADLINE
) -> list[str]:
    """Headline figures, compact: ``auc=0.951 [0.92-0.97]`` or ``auc=0.951±0.012``."""
    out = []
    for name in names:
        if evaluation == CROSS_VALIDATED:
            mean, std = metrics.get(f"cv_{name}_mean"), metrics.get(f"cv_{name}_std")
            if mean is not None:
                out.append(f"{name}={mean:.3f}" + ("" if std is None else f"±{std:.3f}"))
            continue
        value = metrics.get(f"test_{name}")
        if value is None:
            continue
        low, high = metrics.get(f"test_{name}{CI_LOW}"), metrics.get(f"test_{name}{CI_HIGH}")
        interval = "" if low is None or high is None else f" [{_bound(low)}-{_bound(high)}]"
        out.append(f"{name}={value:.3f}{interval}")
    return out


@click.group("models")
def models() -> None:
    """Registered models, their versions, aliases and metrics; operator overrides."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_models(ctx: click.Context, as_json: bool) -> None:
    """Each registered model with its versions, aliases, gate verdict and headline figures.

    Per version: gate=pass|fail (the promotion gate's verdict; '-' when it never ran), how
    the figures were measured (single-split: test figures with bootstrap 95% intervals in
    brackets; cross-validated: mean±sd over patient folds), and the last operator override.
    """
    settings = _settings(ctx)
    try:
        summaries = _registry(ctx).list_models()
    except MedopsError as exc:
        raise click.ClickException(str(exc)) from None
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
            tag = f" [{', '.join(v.aliases)}]" if v.aliases else ""
            gate = "-" if v.gate is None else ("pass" if v.gate else "fail")
            evaluation = evaluation_of(v)
            shown = "  ".join(figures(v.metrics, evaluation, v.headline or HEADLINE))
            how = f"{evaluation}  {shown}" if shown else "no figures"
            click.echo(f"  v{v.version}{tag}  data={v.dataset_version}  gate={gate}  {how}")
            if "override.action" in v.tags:
                t = v.tags
                click.echo(
                    f"      override: {t['override.action']} by {t.get('override.by', '?')} "
                    f"at {t.get('override.at', '?')}: {t.get('override.reason', '')}"
                )


def _override_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option(
        "--audit-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Audit trail to append to (JSON lines; default <MEDOPS_HOME>/audit/routing.jsonl). "
        "Give the gateway's routing audit file to see the override in /v1/routing/audit.",
    )(f)
    f = click.option(
        "--tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        show_default=True,
        help="Largest |ONNX Runtime - PyTorch| the parity check accepts.",
    )(f)
    f = click.option("--by", default=None, help="Who moves the alias (default: the OS user).")(f)
    f = click.option("--reason", required=True, help="Why (recorded on the version and audited).")(
        f
    )
    return f


def _report(change: AliasChange, audit_file: Path) -> None:
    before = f"v{change.before}" if change.before else "none"
    after = f"v{change.after}" if change.after else "none (alias removed)"
    click.echo(f"{change.name}: {change.alias} {before} -> {after}")
    click.echo(f"by {change.by} at {change.at}; reason recorded on v{change.version}")
    if change.parity_max_abs_diff is not None:
        click.echo(f"parity: max |onnx - torch| = {change.parity_max_abs_diff:.2e}")
    click.echo(f"audit: {audit_file}")


@models.command("promote")
@click.argument("name")
@click.argument("version")
@_override_options
@click.pass_context
def promote_command(
    ctx: click.Context,
    name: str,
    version: str,
    reason: str,
    by: str | None,
    tolerance: float,
    audit_file: Path | None,
) -> None:
    """Make VERSION (a number, or an alias such as challenger) the champion of NAME.

    An operator override of the promotion gate. Refused, with the champion unchanged, for an
    unknown model or version, a version without its ONNX file or torch weights, one whose
    ONNX fails the parity check against its weights, or one that already is champion. The
    reason, who (--by, else the OS user) and when are recorded as override.* tags on the
    version and appended to the audit trail. A gateway polling the registry serves the new
    champion within its poll interval.
    """
    path = audit_file or default_audit_path(_settings(ctx).home)
    try:
        change = _registry(ctx).promote(
            name, version, reason=reason, by=by, audit_path=path, tolerance=tolerance
        )
    except MedopsError as exc:
        raise click.ClickException(f"promotion refused: {exc}") from None
    _report(change, path)


@models.command("demote")
@click.argument("name")
@click.argument("version", required=False)
@_override_options
@click.pass_context
def demote_command(
    ctx: click.Context,
    name: str,
    version: str | None,
    reason: str,
    by: str | None,
    tolerance: float,
    audit_file: Path | None,
) -> None:
    """Take the champion alias away from VERSION of NAME (default: the current champion).

    The champion moves back to the version that was champion before it (skipping versions
    demoted since), which must pass the same checks as a promotion; if none is recorded, the
    champion alias is removed and the gateway has no champion of NAME to serve until one is
    promoted. Refused, with
    the champion unchanged, when VERSION is not the champion. Reason, who and when are
    recorded on the demoted version and appended to the audit trail.
    """
    path = audit_file or default_audit_path(_settings(ctx).home)
    try:
        change = _registry(ctx).demote(
            name, version, reason=reason, by=by, audit_path=path, tolerance=tolerance
        )
    except MedopsError as exc:
        raise click.ClickException(f"demotion refused: {exc}") from None
    _report(change, path)
