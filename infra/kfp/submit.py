"""Submit the compiled medops pipeline to Kubeflow Pipelines: one run now, or a recurring run.

    python infra/kfp/submit.py --package k8s/pipelines/medops-pipeline.yaml \
        --host http://ml-pipeline.kubeflow:8888 [--cron "0 3 * * 0"] [--param preset=full] [--wait]

The KFP API address comes from --host or KFP_HOST, a bearer token (if the API needs one) from
KFP_TOKEN. --dry-run prints what would be submitted and contacts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml


class KfpClient(Protocol):
    """The part of ``kfp.Client`` used here."""

    def create_experiment(self, name: str, description: str = ...) -> Any: ...

    def create_run_from_pipeline_package(
        self,
        pipeline_file: str,
        arguments: dict[str, Any] | None = ...,
        run_name: str | None = ...,
        experiment_name: str | None = ...,
        enable_caching: bool | None = ...,
    ) -> Any: ...

    def create_recurring_run(
        self,
        experiment_id: str,
        job_name: str,
        cron_expression: str | None = ...,
        max_concurrency: int | None = ...,
        no_catchup: bool | None = ...,
        params: dict[str, Any] | None = ...,
        pipeline_package_path: str | None = ...,
        enable_caching: bool | None = ...,
    ) -> Any: ...

    def wait_for_run_completion(self, run_id: str, timeout: int) -> Any: ...


@dataclass(frozen=True)
class Plan:
    """What will be submitted."""

    pipeline: str
    package: str
    experiment: str
    run_name: str
    params: dict[str, str] = field(default_factory=dict)
    cron: str | None = None
    caching: bool = True


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param {pair!r}: expected NAME=VALUE")
        params[key] = value
    return params


def kfp_cron(expression: str) -> str:
    """KFP schedules take six cron fields (seconds first); a five-field one runs at second 0."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise SystemExit(f"--cron {expression!r}: expected 5 or 6 cron fields, got {len(fields)}")


def plan(args: argparse.Namespace) -> Plan:
    """Read the package and turn the arguments into a plan; exits with a message on bad input."""
    package = Path(args.package)
    if not package.is_file():
        raise SystemExit(f"pipeline package {package} not found (run: medops pipeline compile)")
    try:
        spec = yaml.safe_load(package.read_text(encoding="utf-8"))
        name = str(spec["pipelineInfo"]["name"])
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise SystemExit(
            f"pipeline package {package} is not a compiled KFP pipeline: {exc}"
        ) from None
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    params = parse_params(args.param)
    unknown = sorted(set(params) - set(inputs))
    if unknown:
        known = ", ".join(sorted(inputs)) or "none"
        raise SystemExit(f"--param {', '.join(unknown)}: not a parameter of {name} ({known})")
    return Plan(
        pipeline=name,
        package=str(package),
        experiment=args.experiment,
        run_name=args.run_name or f"{name}-{args.trigger}",
        params=params,
        cron=kfp_cron(args.cron) if args.cron else None,
        caching=not args.no_cache,
    )


def submit(p: Plan, client: KfpClient, *, wait_seconds: int = 0) -> str:
    """Submit the plan; returns the run or recurring-run id."""
    if p.cron:
        experiment = client.create_experiment(p.experiment)
        job = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=p.run_name,
            cron_expression=p.cron,
            max_concurrency=1,
            no_catchup=True,
            params=dict(p.params),
            pipeline_package_path=p.package,
            enable_caching=p.caching,
        )
        return str(job.recurring_run_id)
    result = client.create_run_from_pipeline_package(
        p.package,
        arguments=dict(p.params),
        run_name=p.run_name,
        experiment_name=p.experiment,
        enable_caching=p.caching,
    )
    run_id = str(result.run_id)
    if wait_seconds:
        run = client.wait_for_run_completion(run_id, timeout=wait_seconds)
        if str(run.state) != "SUCCEEDED":
            raise SystemExit(f"run {run_id} ended {run.state}")
    return run_id


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--package", required=True, help="compiled pipeline YAML")
    ap.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API address (KFP_HOST)")
    ap.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE", "kubeflow"))
    ap.add_argument("--experiment", default="medops")
    ap.add_argument("--run-name", default=None)
    ap.add_argument("--trigger", default="manual", help="why it runs (schedule, drift, manual)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument(
        "--cron", default=None, help="make a recurring run on this cron schedule (5 or 6 fields)"
    )
    ap.add_argument("--no-cache", action="store_true", help="disable step caching")
    ap.add_argument("--wait", type=int, default=0, metavar="SECONDS", help="wait for the run")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, contact nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    p = plan(args)
    if args.dry_run:
        print(json.dumps(asdict(p), indent=2))
        return 0
    if not args.host:
        raise SystemExit("no KFP API address: pass --host or set KFP_HOST")
    import kfp  # the client is only needed for a real submission

    client = kfp.Client(
        host=args.host, namespace=args.namespace, existing_token=os.environ.get("KFP_TOKEN")
    )
    ident = submit(p, client, wait_seconds=args.wait)
    print(json.dumps({"submitted": ident, "recurring": bool(p.cron), "pipeline": p.pipeline}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
