"""The main job (``medops demo``, what ``make demo`` runs) on embedded defaults.

Data → training pipeline → registry → gateway → canary → monitor, on the real LGG data, with
no cluster and no GPU: MLflow on SQLite, ONNX Runtime in the gateway, ``kfp.local``. The
gateway and the monitor run as their own processes, reached over HTTP exactly as a hospital
client would, and are stopped by PID at the end.

A gate verdict never fails the job: a model the gate keeps out has no ``champion``, so the
gateway serves only the models that have one, the steps that need a missing model are skipped
with the reason, and a closing table says what was trained, judged and served. The steps'
output goes to ``<home>/logs/pipeline.log``; the console shows headings and progress bars.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np

from medops.data import Manifest, ingest, split_dataset, validate
from medops.data.cli import describe_command
from medops.errors import BackendUnavailableError, DatasetError
from medops.evaluation import pseudonym
from medops.imaging import lgg_patient_volume, write_dicom_series
from medops.modelspec import CHALLENGER, CHAMPION
from medops.registry import Registry
from medops.rle import dice, rle_decode
from medops.service.readiness import NotReadyError, exited, wait_until_ready
from medops.settings import MedopsSettings
from pipelines.brain import BRAIN_MODELS, CLASSIFIER, SEGMENTER
from pipelines.cli import echo_floors, floor_option
from pipelines.local import FOURCLASS_DIR, check_data, run_local
from pipelines.presets import Floors
from pipelines.report import Summary, headline, versions

SERVICE_START_S = 180.0
MONITOR_WINDOW = 100
"""Predictions per drift window: the window the alarm is calibrated for (a 1 % target that
40 LGG patients do not reach: about 17 % of healthy windows alarm, see the monitor README)."""


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _service(
    args: list[str], env: Mapping[str, str], health_url: str, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``medops ARGS`` in its own process group; wait for ``health_url``; stop by PID."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medops.cli", *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_until_ready(
                health_url, timeout_s=SERVICE_START_S, gone=exited(proc), interval_s=0.5
            )
        except NotReadyError as exc:
            raise NotReadyError(
                f"`medops {args[0]}`: {exc.message} ({_body(health_url)}); see {log_path}"
            ) from None
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _body(url: str) -> str:
    try:
        return httpx.get(url, timeout=2.0).text[:500]
    except httpx.TransportError as exc:
        return f"unreachable: {exc}"


def _data(ctx: click.Context, lgg: Path, home: Path) -> tuple[Manifest, list[str]]:
    _step("1. Data: ingest, validate and describe the LGG brain MRI")
    manifest = ingest(lgg, home, progress=True)
    splits = split_dataset(manifest, seed=0)
    report = validate(manifest, splits, progress=True)
    ctx.invoke(describe_command, path=lgg)
    click.echo(
        f"split by patient (seed 0): train {len(splits.train)}, val {len(splits.val)}, "
        f"test {len(splits.test)}; validation: {len(report.errors)} errors, "
        f"{len(report.warnings)} warnings"
    )
    if not report.ok:
        click.echo(report.to_text())
        raise DatasetError(f"{lgg} did not validate")
    return manifest, splits.test


def _train(
    settings: MedopsSettings,
    registry: Registry,
    summary: Summary,
    preset: str,
    home: Path,
    *,
    seed: int,
    warm: str,
    floors: Floors,
) -> list[tuple[str, str]]:
    """Run the pipeline; say what each new version is and what the gate decided about it."""
    before = set(versions(registry))
    echo_floors(preset, floors)
    run = run_local(
        preset,
        data_dir=settings.data_dir.resolve(),
        home=home,
        tracking_uri=settings.mlflow_uri,
        seed=seed,
        warm_start=warm,
        floors=floors,
    )
    click.echo(
        f"pipeline ({preset}) finished in {run.seconds / 60:.1f} min; step logs in {run.log_path}"
    )
    after = versions(registry)
    new = sorted((k for k in after if k not in before), key=lambda k: (k[0], int(k[1])))
    summary.add_versions(registry, new)
    for name, version in new:
        v = after[name, version]
        click.echo(f"  {name} v{version} [{','.join(v.aliases) or '-'}] {headline(v.metrics)}")
        verdict = summary.verdicts[name, version]
        click.echo(f"    promotion gate: {verdict.sentence()}")
        champion = registry.get_alias(name, CHAMPION)
        if verdict.recorded and not verdict.promote:
            if champion is None:
                click.secho(
                    f"    {name} has no champion: it is not served, and what needs it is skipped",
                    fg="yellow",
                )
            elif champion != version:
                click.echo(f"    the champion stays v{champion}")
    return new


def _champions(registry: Registry) -> dict[str, str]:
    """Model -> champion version, for the models that have one."""
    found = {name: registry.get_alias(name, CHAMPION) for name in BRAIN_MODELS}
    return {name: version for name, version in found.items() if version is not None}


class _Client:
    """The gateway as a client sees it."""

    def __init__(self, base: str, key: str, admin: str, *, segment: str = "auto") -> None:
        self.http = httpx.Client(base_url=base, timeout=120.0)
        self.key, self.admin = key, admin
        self.segment = segment
        """``never`` when no segmenter is served."""

    def analyze(
        self, name: str, data: bytes, *, headers: Mapping[str, str] | None = None, **params: str
    ) -> httpx.Response:
        response = self.http.post(
            "/v1/analyze",
            files={"file": (name, data)},
            params={"segment": self.segment, **params},
            headers={"Authorization": f"Bearer {self.key}", **(headers or {})},
        )
        return response

    def get(self, path: str) -> Any:
        r = self.http.get(path, headers={"Authorization": f"Bearer {self.admin}"})
        r.raise_for_status()
        return r.json()

    def put(self, path: str, document: Mapping[str, Any]) -> httpx.Response:
        return self.http.put(path, json=document, headers={"Authorization": f"Bearer {self.admin}"})


def _serve_test_patients(
    client: _Client, manifest: Manifest, patients: list[str], *, segment: bool
) -> None:
    _step("3. Serving: /v1/analyze on the held-out patients, one slice per request")
    by_patient: dict[str, list[Any]] = {}
    for s in manifest.samples:
        if s.patient_id in patients:
            by_patient.setdefault(s.patient_id, []).append(s)
    import tifffile

    correct = total = 0
    dices: list[float] = []
    for patient in sorted(by_patient):
        predicted, truth = [], []
        for s in by_patient[patient]:
            r = client.analyze(Path(s.image).name, manifest.image_path(s).read_bytes())
            r.raise_for_status()
            doc = r.json()
            correct += int(doc["slices"][0]["tumour"] == (s.label == 1))
            total += 1
            if segment:
                predicted.append(rle_decode(doc["mask"]["slices"][0]))
                truth.append(tifffile.imread(manifest.mask_path(s)) > 0)
        if segment:
            d = dice(np.stack(predicted), np.stack(truth))
            dices.append(d)
            click.echo(f"  {pseudonym(patient)}: {len(predicted)} slices, volume Dice {d:.3f}")
    mean_dice = f"; mean Dice per patient {np.mean(dices):.3f}" if dices else ""
    click.echo(
        f"slice-level decision accuracy {correct / total:.3f} over {total} slices{mean_dice}"
    )


def _dicom_seg(client: _Client, manifest: Manifest, patient: str) -> None:
    _step("3b. A DICOM series in, a DICOM SEG out")
    folder = next(
        manifest.image_path(s).parent for s in manifest.samples if s.patient_id == patient
    )
    volume = lgg_patient_volume(folder)
    with tempfile.TemporaryDirectory(prefix="medops-demo-") as tmp:
        files = write_dicom_series(volume, Path(tmp), series_description="LGG FLAIR demo")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for f in files:
                z.write(f, f.name)
    r = client.analyze("series.zip", buffer.getvalue(), headers={"Accept": "application/dicom"})
    r.raise_for_status()
    import highdicom

    seg = highdicom.seg.segread(io.BytesIO(r.content))
    refs = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    click.echo(
        f"{len(files)}-slice series → DICOM SEG of {len(r.content) // 1024} KiB, "
        f"{seg.NumberOfFrames} frames, referencing {len(refs)} de-identified series; "
        f"model versions {r.headers.get('x-medops-model-version')}"
    )


def _canary(
    client: _Client, registry: Registry, manifest: Manifest, requests: int
) -> Counter[tuple[str, str]]:
    _step("5. Canary: 30 % of the classifier's traffic to the challenger, sticky by study")
    document = {
        "mode": "gateway",
        "models": {
            CLASSIFIER: {
                "strategy": "canary",
                "variants": [
                    {"name": "champion", "alias": CHAMPION, "weight": 70},
                    {"name": "challenger", "alias": CHALLENGER, "weight": 30},
                ],
                "progressive": {
                    "variant": "challenger",
                    "steps": [30, 60, 100],
                    "intervalSeconds": 4,
                    "minRequests": 10,
                    "maxErrorRate": 0.02,
                    "maxLatencySeconds": 2.0,
                    "maxDisagreement": 0.2,
                },
            }
        },
    }
    r = client.put("/v1/routing", document)
    if r.status_code != 200:
        raise BackendUnavailableError(f"routing refused: {r.status_code} {r.text}")
    click.echo(f"routing revision {r.json()['revision']} accepted")
    samples = manifest.samples[:: max(1, len(manifest.samples) // requests)][:requests]
    split: Counter[tuple[str, str]] = Counter()
    for i, s in enumerate(samples):
        r = client.analyze(
            Path(s.image).name,
            manifest.image_path(s).read_bytes(),
            headers={"x-medops-route-key": f"study-{i}"},
        )
        r.raise_for_status()
        served = r.json()["models"]["classifier"]
        split[served["variant"], served["version"]] += 1
        time.sleep(0.1)
    shown = ", ".join(f"{variant} v{version} {n}" for (variant, version), n in split.items())
    click.echo(f"{len(samples)} requests: {shown}")
    decisions = client.get("/v1/routing/decisions")["decisions"]
    for d in decisions:
        click.echo(
            f"  analysis: {d['decision']} {d['variant']} {d.get('fromWeight')}→"
            f"{d.get('toWeight')} % ({d.get('reason', '')})"
        )
    if not decisions:
        click.echo("  analysis: waiting for enough requests")
    champion = registry.get_alias(CLASSIFIER, CHAMPION)
    click.echo(f"MLflow: {CLASSIFIER} champion → v{champion}")
    return split


def _monitor(client: _Client, monitor: httpx.Client, fourclass: Path, n: int) -> None:
    _step("6. Monitoring: recent predictions against the training reference (Evidently)")
    _evaluate(monitor, "LGG traffic")
    jpegs = sorted(fourclass.rglob("*.jpg"))[:: max(1, 2000 // n)][:n]
    for p in jpegs:
        client.analyze(p.name, p.read_bytes()).raise_for_status()
    _evaluate(monitor, f"then {len(jpegs)} JPEG slices from other scanners")


def _evaluate(monitor: httpx.Client, title: str) -> None:
    r = monitor.post("/v1/evaluate")
    r.raise_for_status()
    click.echo(f"{title}:")
    for ev in r.json()["evaluations"]:
        if ev["drift_detected"] is None:
            click.echo(f"  {ev['model']}: {ev['note']}")
            continue
        verdict = "DRIFT" if ev["drift_detected"] else "no drift"
        click.echo(
            f"  {ev['model']}: {verdict} (drift share {ev['drift_share']:.2f} over the last "
            f"{ev['window_size']} predictions)"
        )


@click.command("demo")
@click.option("--preset", type=click.Choice(["tiny", "fast", "full"]), default="fast")
@click.option("--requests", type=int, default=150, show_default=True, help="Canary requests.")
@floor_option
@click.pass_context
def demo(ctx: click.Context, preset: str, requests: int, floors: Floors) -> None:
    """Run the whole platform once on embedded defaults: train, serve, route, monitor.

    --floor applies to every gate of the job (the challenger's too)."""
    settings: MedopsSettings = ctx.obj
    _quiet_mlflow()
    # the data the preset asks for is there before anything is ingested or trained
    lgg = check_data(preset, settings.data_dir).lgg
    home = settings.ensure_home().resolve()
    started = time.monotonic()
    summary = Summary()
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    manifest, test_patients = _data(ctx, lgg, home)

    _step(f"2. Training pipeline (kfp.local, {preset} preset) → MLflow champions")
    registry = Registry(settings.mlflow_uri)
    _train(settings, registry, summary, preset, home, seed=0, warm="", floors=floors)
    champions = _champions(registry)
    summary.add_versions(registry, sorted(champions.items()))
    if champions:
        _serve(settings, registry, summary, manifest, test_patients, preset, home, requests, floors)
    else:
        _skipped(
            summary,
            "3-6. Serving, challenger, canary, monitoring",
            "no model has a champion: there is nothing to serve",
        )

    _step("Summary")
    for line in summary.table(registry):
        click.echo(line)
    for what in summary.skipped:
        click.echo(f"  skipped: {what}")
    shown = ", ".join(LOG_NOTES.get(p.name, p.name) for p in sorted(logs.glob("*.log")))
    click.echo(f"  logs in {logs}/: {shown}")
    click.echo(
        f"  state in {home}/: mlflow.db (`mlflow ui --backend-store-uri {settings.mlflow_uri}`), "
        "reports and ONNX in mlartifacts/, the Triton repository in triton-repo/"
    )
    click.echo(f"  {(time.monotonic() - started) / 60:.1f} min")


LOG_NOTES = {"pipeline.log": "pipeline.log (every training step's output)"}


def _quiet_mlflow() -> None:
    """No artifact download bars or database migration lines from MLflow on the console."""
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already is


def _serve(
    settings: MedopsSettings,
    registry: Registry,
    summary: Summary,
    manifest: Manifest,
    test_patients: list[str],
    preset: str,
    home: Path,
    requests: int,
    floors: Floors,
) -> None:
    """Steps 3-6 with the models that have a champion; what needs a missing one is skipped."""
    logs = home / "logs"
    champions = _champions(registry)
    missing = [name for name in (CLASSIFIER, SEGMENTER) if name not in champions]
    port, grpc_port, monitor_port = _free_port(), _free_port(), _free_port()
    store = f"sqlite:///{home / 'predictions.db'}"
    gateway_env = {
        "MEDOPS_GATEWAY_HOME": str(home),
        "MEDOPS_GATEWAY_TRACKING_URI": settings.mlflow_uri,
        "MEDOPS_GATEWAY_POLL_SECONDS": "2",
        "MEDOPS_GATEWAY_PREDICTION_STORE_URL": store,
        # only models with a champion: readiness then waits for nothing that cannot load
        "MEDOPS_GATEWAY_MODELS": json.dumps(sorted(champions)),
    }
    health = f"http://127.0.0.1:{port}/v2/health/ready"
    with _service(
        ["serve", "--port", str(port), "--grpc-port", str(grpc_port)],
        gateway_env,
        health,
        logs / "gateway.log",
    ):
        ready = httpx.get(health, timeout=5.0).json().get("models", {})
        for name, state in ready.items():
            if state.get("ready"):
                summary.served[name, str(state["version"])] = f"champion (REST :{port})"
        keys = json.loads((home / "credentials.json").read_text())
        segment = SEGMENTER in champions
        client = _Client(
            f"http://127.0.0.1:{port}",
            keys["client"],
            keys["admin"],
            segment="auto" if segment else "never",
        )
        loaded = ", ".join(f"{n} v{s['version']}" for n, s in ready.items() if s.get("ready"))
        click.echo(f"gateway ready: REST :{port}, gRPC :{grpc_port}; serving {loaded}")
        if missing:
            click.secho(f"not served (no champion): {', '.join(missing)}", fg="yellow")
        click.echo("API keys in credentials.json")

        if CLASSIFIER not in champions:
            _skipped(
                summary,
                "3. Serving, 3b. DICOM SEG, 6. Monitoring",
                f"/v1/analyze needs {CLASSIFIER}, which has no champion",
            )
            _no_challenger(summary, missing)
            return
        _serve_test_patients(client, manifest, test_patients, segment=segment)
        if segment:
            _dicom_seg(client, manifest, test_patients[0])
        else:
            _skipped(summary, "3b. DICOM SEG (and masks, Dice)", f"{SEGMENTER} has no champion")

        if missing:
            _no_challenger(summary, missing)
        else:
            _step("4. A challenger: a few epochs on top of the champions; the gate only records")
            challenger_preset = "tiny" if preset == "tiny" else "refresh"
            _train(
                settings,
                registry,
                summary,
                challenger_preset,
                home,
                # the champion's split: the gate compares both on patients neither trained on
                seed=0,
                warm=CHAMPION,
                floors=floors,
            )
            if registry.get_alias(CLASSIFIER, CHALLENGER) is None:
                _skipped(summary, "5. Canary", f"{CLASSIFIER} has no challenger")
            else:
                split = _canary(client, registry, manifest, requests)
                for (variant, version), n in split.items():
                    key = (CLASSIFIER, version)
                    summary.add_versions(registry, [key])
                    summary.served[key] = f"{variant} (canary, {n} requests)"

        with _service(
            ["monitor", "--port", str(monitor_port), "--store-url", store, "--interval", "3600"],
            {"MEDOPS_MONITOR_HOME": str(home), "MEDOPS_MONITOR_WINDOW_SIZE": str(MONITOR_WINDOW)},
            f"http://127.0.0.1:{monitor_port}/v2/health/ready",
            logs / "monitor.log",
        ):
            # the monitor reads the keys the gateway wrote; evaluating on demand is an admin's
            monitor = httpx.Client(
                base_url=f"http://127.0.0.1:{monitor_port}",
                headers={"authorization": f"Bearer {keys['admin']}"},
                timeout=300.0,
            )
            _monitor(client, monitor, settings.data_dir.resolve() / FOURCLASS_DIR, MONITOR_WINDOW)


def _skipped(summary: Summary, steps: str, reason: str) -> None:
    """A step heading that says the step is skipped, and why; noted for the summary."""
    _step(f"{steps}: skipped")
    click.secho(reason, fg="yellow")
    summary.skip(f"{steps}: {reason}")


def _no_challenger(summary: Summary, missing: list[str]) -> None:
    names = " and ".join(missing)
    _skipped(
        summary,
        "4. Challenger, 5. Canary",
        f"a challenger is warm-started from every model's champion; {names} has none",
    )
