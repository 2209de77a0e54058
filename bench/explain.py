"""How well explanations point at the tumour, and what they cost per slice.

Starts the gateway (in-process ONNX Runtime) on the champions of ``$MEDOPS_HOME``'s registry
when it has both models; otherwise on the fast preset's architectures with random weights
(no training here), which makes the cost figure honest and the pointing figures meaningless:
the output says which. On LGG slices that carry tumour from held-out patients (the ``test``
split saved in the home when there is one, else the last patients by name), it asks
``POST /v1/explain`` for each slice and reports, for true-positive slices (tumour in the truth
and in the served answer), the share of positive saliency mass inside the true mask against
the mask's share of the slice (energy-based pointing: a ratio above 1 means the map
concentrates on the tumour), the pointing-game hit rate (the saliency peak inside the mask),
and the cost per slice: the explanation's own compute and the whole request. Asserts nothing.
``--method gradcam`` measures Grad-CAM instead of occlusion (it needs the champions' torch
weights, so a home with a registry).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tifffile
from gateway_harness import GatewayThread

from medops.transforms import restore_mask
from pipelines.brain import CLASSIFIER, SEGMENTER

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDOPS_DATA_DIR", ROOT.parent / "shared" / "data"))


def registry_champions(home: Path) -> tuple[str, str] | None:
    """The home's registry URI and its champions' names, or None when it lacks one."""
    if not (home / "mlflow.db").is_file():
        return None
    from medops.errors import MedopsError
    from medops.registry import Registry

    uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    registry = Registry(uri)
    versions = []
    for name in (CLASSIFIER, SEGMENTER):
        try:
            version = registry.get_alias(name, "champion")
        except MedopsError:
            return None
        if version is None:
            return None
        versions.append(f"{name} v{version}")
    return uri, "registry champions: " + ", ".join(versions)


def _folders_by_patient(home: Path) -> dict[str, str]:
    """Pseudonymised patient id -> the patient's folder, from the home's LGG manifests."""
    from medops.data import load_manifest

    out: dict[str, str] = {}
    for path in sorted(home.glob("datasets/lgg-mri-segmentation/*/manifest.json")):
        for sample in load_manifest(path).samples:
            out.setdefault(sample.patient_id, Path(sample.image).parts[0])
    return out


def held_out(home: Path, patients: list[Path], count: int) -> tuple[list[Path], str]:
    """Test patients of a split saved in ``home`` (splits name pseudonymised patient ids,
    which the home's manifests map to folders); else the last patients by name."""
    from medops.data.splits import Splits

    by_name = {p.name: p for p in patients}
    folders = _folders_by_patient(home) if home.is_dir() else {}
    for path in sorted(home.rglob("splits*.json")) if home.is_dir() else []:
        try:
            ids = Splits.load(path).patients("test")
        except Exception:  # a file of another shape: look further
            continue
        test = [by_name[f] for f in (folders.get(i, i) for i in ids) if f in by_name]
        if test:
            return test[:count], f"the test split of {path.name}"
    return patients[-count:], "the last patients by name (no saved split found)"


def tumour_slices(patient: Path, per_patient: int) -> list[tuple[Path, np.ndarray]]:
    found = []
    for mask_path in sorted(patient.glob("*_mask.tif")):
        truth = tifffile.imread(mask_path) > 0
        if truth.sum() >= 50:
            found.append((Path(str(mask_path).replace("_mask.tif", ".tif")), truth))
    step = max(1, len(found) // per_patient)
    return found[::step][:per_patient]


def figures(saliency: list[list[float]], truth: np.ndarray) -> tuple[float, float, bool]:
    """(mass share inside the truth, the truth's area share, the peak inside the truth)."""
    s = restore_mask(np.clip(np.asarray(saliency, np.float32), 0, None), truth.shape)
    total = float(s.sum())
    mass = float(s[truth].sum()) / total if total > 0 else 0.0
    peak = np.unravel_index(int(s.argmax()), s.shape)
    return mass, float(truth.mean()), bool(truth[peak]) and total > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("MEDOPS_HOME", ".medops")))
    parser.add_argument("--patients", type=int, default=5)
    parser.add_argument("--slices-per-patient", type=int, default=3)
    parser.add_argument(
        "--method",
        choices=("occlusion", "gradcam"),
        default="occlusion",
        help="gradcam needs the champions' torch weights (a home with a registry)",
    )
    args = parser.parse_args()

    lgg = DATA / "lgg-mri-segmentation"
    patients = sorted(p for p in lgg.iterdir() if p.is_dir())
    chosen, where = held_out(args.home, patients, args.patients)
    with tempfile.TemporaryDirectory(prefix="medops-bench-explain-") as tmp:
        found = registry_champions(args.home)
        served: dict[str, Any]
        if found is None:
            if args.method == "gradcam":
                parser.error(f"--method gradcam: no champions with torch weights in {args.home}")
            from bench.analyze import export_models

            served = {"model_files": export_models(Path(tmp), "fast")}
            origin = (
                f"no champions in {args.home}: fast-preset architectures with RANDOM weights "
                "(the cost is real; the pointing figures say nothing about a trained model)"
            )
        else:
            uri, origin = found
            served = {"tracking_uri": uri, "models": [CLASSIFIER, SEGMENTER]}
        print(f"models: {origin}; method: {args.method}")
        print(f"patients: {len(chosen)} from {where}")
        from services.gateway.settings import GatewaySettings

        settings = GatewaySettings(
            home=Path(tmp) / "home",
            poll_seconds=0,
            onnx_threads=2,
            prediction_log=False,
            **served,
        )
        rows: dict[str, list[tuple[float, float, bool]]] = {"classifier": [], "segmenter": []}
        compute, wall, explained, skipped = [], [], 0, 0
        with GatewayThread(settings) as gw:
            key = json.loads((Path(tmp) / "home" / "credentials.json").read_text())["client"]
            headers = {"authorization": f"Bearer {key}", "content-type": "image/tiff"}
            for patient in chosen:
                for image, truth in tumour_slices(patient, args.slices_per_patient):
                    start = time.perf_counter()
                    r = httpx.post(
                        f"http://{gw.url}/v1/explain?segment=auto&method={args.method}",
                        content=image.read_bytes(),
                        headers=headers,
                        timeout=300,
                    )
                    wall.append(time.perf_counter() - start)
                    r.raise_for_status()
                    doc: dict[str, Any] = r.json()
                    compute.append(float(doc["seconds"]))
                    (entry,) = doc["slices"]
                    explained += 1
                    if entry["segmenter"] is None:  # not a true positive of the served answer
                        skipped += 1
                        continue
                    for role in ("classifier", "segmenter"):
                        if entry[role] is not None:
                            rows[role].append(figures(entry[role]["saliency"], truth))
        print(
            f"slices explained: {explained} with tumour in the truth; "
            f"{explained - skipped} true positives of the served answer"
        )
        for role, found_rows in rows.items():
            if not found_rows:
                print(f"{role}: no true-positive slices")
                continue
            mass = statistics.mean(m for m, _, _ in found_rows)
            median = statistics.median(m for m, _, _ in found_rows)
            area = statistics.mean(a for _, a, _ in found_rows)
            hits = sum(h for _, _, h in found_rows)
            print(
                f"{role}: saliency mass inside the true mask {mass:.3f} (median {median:.3f}) "
                f"vs the mask's area share {area:.3f}: {mass / area:.1f}x; "
                f"pointing game {hits}/{len(found_rows)}"
            )
        if compute:
            print(
                f"cost per slice: explanation {statistics.median(compute) * 1000:.0f} ms p50, "
                f"whole request {statistics.median(wall) * 1000:.0f} ms p50 "
                f"(both models' maps, {settings.onnx_threads} ONNX Runtime threads)"
            )


if __name__ == "__main__":
    main()
