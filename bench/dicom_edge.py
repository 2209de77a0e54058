"""The DICOM edge's ingest and its overhead from the last instance to the results at the PACS.

In a network namespace of its own (as root: Orthanc binds every interface), with a real
Orthanc, DCMTK's ``storescu`` and a gateway thread serving tiny models:

- C-STORE ingest of a 155-slice MR series (LGG patients' slices stacked, written with
  ``write_dicom_series``) in files/s, from ``storescu`` into the edge (each instance checked
  and synced to its journal before success) and, in the same run and interleaved, into
  pynetdicom's plain
  storage SCP writing to disk (``python -m pynetdicom storescp -od``): the baseline.
  Goals: at least 50 files/s and 0.8 of the baseline.
- End to end: from ``storescu``'s return (the last instance received) with the explicit
  "complete" trigger to the SEG and the SR both found by QIDO-RS in Orthanc, minus the edge's
  own analysis time (``medops_dicom_analysis_seconds``: the plane, the SEG and SR, the outbox
  write); what is left is the pick-up, the spool's checkpoint and the STOW-RS of both objects.
  Goal: at most 2 s.

Prints figures and PASS/MISS; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
from dicom_harness import EdgeProcess, Orthanc, enter_private_network, series_in_study
from gateway_harness import ROOT, GatewayThread, free_port, stop_process, write_tiny_model

from pipelines.brain import CLASSIFIER, SEGMENTER

SLICES = 155
GOAL_FILES_S = 50.0
GOAL_RATIO = 0.8
GOAL_OVERHEAD_S = 2.0
AE = "BENCH"


def build_series(data: Path, folder: Path) -> list[Path]:
    from medops.imaging.dicom import write_dicom_series
    from medops.imaging.image import Image
    from medops.imaging.lgg import lgg_patient_volume

    volumes, count = [], 0
    for patient in sorted(p for p in (data / "lgg-mri-segmentation").iterdir() if p.is_dir()):
        volumes.append(lgg_patient_volume(patient).array)
        count += volumes[-1].shape[1]
        if count >= SLICES:
            break
    array = np.concatenate(volumes, axis=1)[:, :SLICES]
    image = Image(array, np.diag([1.0, 1.0, 2.5, 1.0]), {}, "nifti")
    return write_dicom_series(image, folder)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def storescu(port: int, files: list[Path], called: str) -> float:
    start = time.perf_counter()
    r = subprocess.run(
        ["storescu", "-aet", AE, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
    return elapsed


def baseline_round(files: list[Path], work: Path) -> float:
    """pynetdicom's plain storage SCP writing every instance to disk."""
    out = work / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-od", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            if (
                subprocess.run(["echoscu", "127.0.0.1", str(port)], capture_output=True).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        seconds = storescu(port, files, "ANY-SCP")
    finally:
        stop_process(proc, group=True, timeout_s=10)
    assert len(list(out.iterdir())) == len(files), "the baseline did not store every file"
    return len(files) / seconds


def analysis_seconds(edge: EdgeProcess) -> float:
    text = httpx.get(f"{edge.url}/metrics", timeout=10).text
    match = re.search(r"^medops_dicom_analysis_seconds_sum (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds of each side")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("MEDOPS_DATA_DIR", ROOT.parent / "shared" / "data")),
    )
    args = parser.parse_args()
    enter_private_network()
    work = Path(tempfile.mkdtemp(prefix="medops-bench-dicom-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    from services.gateway.settings import GatewaySettings

    files = build_series(args.data, work / "series")
    print(f"load average {os.getloadavg()[0]:.2f}; {len(files)} instances of "
          f"{files[0].stat().st_size // 1024} KiB")  # fmt: skip
    models = {
        CLASSIFIER: write_tiny_model(CLASSIFIER, work / "c.onnx", size=64, threshold=0.4),
        SEGMENTER: write_tiny_model(SEGMENTER, work / "s.onnx", size=64, seed=1),
    }
    gateway_settings = GatewaySettings(
        home=work / "gw", model_files=models, poll_seconds=0, onnx_threads=1,
        models=[CLASSIFIER, SEGMENTER],
    )  # fmt: skip
    with Orthanc() as orthanc, GatewayThread(gateway_settings) as gateway:
        keys = json.loads((work / "gw" / "credentials.json").read_text())
        env = {
            "MEDOPS_DICOM_HOME": str(work / "edge-home"),
            "MEDOPS_DICOM_ALLOWED_CALLING_AES": f'["{AE}"]',
            "MEDOPS_DICOM_ENDPOINT_URL": f"http://{gateway.url}",
            "MEDOPS_DICOM_ENDPOINT_API_KEY": keys["client"],
            "MEDOPS_DICOM_STOW_URL": orthanc.dicomweb,
            "MEDOPS_DICOM_QUIET_S": "3600",  # ingest alone; analysed on the trigger below
        }
        edge_rates, base_rates = [], []
        for k in range(args.rounds):
            base_rates.append(baseline_round(files, work))
            spool = work / f"spool-{k}"
            with EdgeProcess(
                {**env, "MEDOPS_DICOM_SPOOL_DIR": str(spool)}, work / "edge.log"
            ) as edge:
                edge_rates.append(len(files) / storescu(edge.port, files, "MEDOPS"))
        edge_p50, base_p50 = statistics.median(edge_rates), statistics.median(base_rates)
        ratio = edge_p50 / base_p50
        print(f"C-STORE ingest, {len(files)} files, median of {args.rounds} rounds each:")
        print(f"  edge (checked, journal synced)       {edge_p50:7.1f} files/s")
        print(f"  pynetdicom storescp -od (baseline)   {base_p50:7.1f} files/s")
        rate_ok, ratio_ok = edge_p50 >= GOAL_FILES_S, ratio >= GOAL_RATIO
        print(f"  goal >= {GOAL_FILES_S:.0f} files/s: {verdict(rate_ok)}; "
              f"ratio {ratio:.2f} (goal >= {GOAL_RATIO}): {verdict(ratio_ok)}")  # fmt: skip

        spool = work / "spool-e2e"
        with EdgeProcess({**env, "MEDOPS_DICOM_SPOOL_DIR": str(spool)}, work / "edge.log") as edge:
            admin = json.loads((work / "edge-home" / "credentials.json").read_text())["admin"]
            storescu(edge.port, files, "MEDOPS")
            received = time.perf_counter()
            httpx.post(
                f"{edge.url}/v1/series/complete",
                headers={"authorization": f"Bearer {admin}"},
                timeout=10,
            ).raise_for_status()
            study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
            while not (
                series_in_study(orthanc, study, "SEG") and series_in_study(orthanc, study, "SR")
            ):
                if time.perf_counter() - received > 600:
                    raise RuntimeError("no SEG and SR in Orthanc after 10 minutes")
                time.sleep(0.02)
            total = time.perf_counter() - received
            analysis = analysis_seconds(edge)
        overhead = total - analysis
        ok = overhead <= GOAL_OVERHEAD_S
        print(f"last instance -> SEG + SR in Orthanc: {total:.2f} s, of which analysis "
              f"{analysis:.2f} s; overhead {overhead:.2f} s "
              f"(goal <= {GOAL_OVERHEAD_S:.0f} s): {verdict(ok)}")  # fmt: skip


if __name__ == "__main__":
    main()
