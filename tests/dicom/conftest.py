"""DICOM edge fixtures: a private network namespace, a real Orthanc, a gateway serving tiny
models, DICOM series built from real LGG patients, and edge processes pointed at them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_harness import EdgeProcess, Orthanc, enter_private_network, require_tools
from gateway_harness import GatewayThread, write_tiny_model

from medops.imaging.dicom import write_dicom_series
from medops.imaging.lgg import lgg_patient_volume
from pipelines.brain import CLASSIFIER, SEGMENTER
from services.gateway.settings import GatewaySettings

SIZE = 64
CLASSIFIER_THRESHOLD = 0.4
MODALITY_AE = "MODALITY"
DEID_KEY = "edge-test-deid-key"
PATIENT_ID = "MRN-987654"
PATIENT_NAME = "Roe^Richard"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move into the private network before any test of the session runs, so every server
    the session starts (here or in other folders) lives on the same loopback."""
    if any(
        item.get_closest_marker("dicom") or item.get_closest_marker("ohif")
        for item in session.items
    ):
        enter_private_network()


@pytest.fixture(scope="session", autouse=True)
def private_network() -> None:
    """Everything of this session runs on a loopback of its own (Orthanc binds 0.0.0.0)."""
    require_tools("storescu", "echoscu", "dciodvfy", "DicomSRValidator")
    enter_private_network()  # already done at collection; a no-op then


@pytest.fixture(scope="session")
def orthanc(private_network: None) -> Iterator[Orthanc]:
    with Orthanc() as pacs:
        yield pacs


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        CLASSIFIER: write_tiny_model(
            CLASSIFIER, folder / "classifier.onnx", size=SIZE, threshold=CLASSIFIER_THRESHOLD
        ),
        SEGMENTER: write_tiny_model(SEGMENTER, folder / "segmenter.onnx", size=SIZE, seed=1),
    }


@pytest.fixture(scope="session")
def gateway_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-home")


@pytest.fixture(scope="session")
def gateway(
    private_network: None, tiny_models: dict[str, Path], gateway_home: Path
) -> Iterator[GatewayThread]:
    settings = GatewaySettings(
        home=gateway_home,
        model_files=tiny_models,
        poll_seconds=0,
        onnx_threads=1,
        deid_key="test-deid-key",
        models=[CLASSIFIER, SEGMENTER],
    )
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture(scope="session")
def keys(gateway: GatewayThread, gateway_home: Path) -> dict[str, str]:
    import json

    found: dict[str, str] = json.loads((gateway_home / "credentials.json").read_text())
    return found


@pytest.fixture(scope="session")
def patients(lgg_dir: Path) -> list[Path]:
    found = sorted(p for p in lgg_dir.iterdir() if p.is_dir())
    assert len(found) >= 9, f"the DICOM tests use nine LGG patients, {lgg_dir} has {len(found)}"
    return found


@pytest.fixture(scope="session")
def make_series(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Path], list[Path]]:
    """An LGG patient as an MR series with identifiers planted that must not leak."""

    def make(patient: Path) -> list[Path]:
        folder = tmp_path_factory.mktemp("series")
        paths = write_dicom_series(lgg_patient_volume(patient), folder, patient_id=PATIENT_ID)
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.PatientName = PATIENT_NAME
            ds.PatientBirthDate = "19650412"
            ds.save_as(p)
        return paths

    return make


@pytest.fixture
def make_edge(
    orthanc: Orthanc,
    gateway: GatewayThread,
    keys: dict[str, str],
    tmp_path: Path,
) -> Iterator[Callable[..., EdgeProcess]]:
    """Edge processes on one spool (a restart keeps it), stopped at the end of the test."""
    started: list[EdgeProcess] = []
    spool = tmp_path / "spool"
    home = tmp_path / "edge-home"

    def make(**env: str) -> EdgeProcess:
        values = {
            "MEDOPS_DICOM_HOME": str(home),
            "MEDOPS_DICOM_SPOOL_DIR": str(spool),
            "MEDOPS_DICOM_ALLOWED_CALLING_AES": f'["{MODALITY_AE}"]',
            "MEDOPS_DICOM_ENDPOINT_URL": f"http://{gateway.url}",
            "MEDOPS_DICOM_ENDPOINT_API_KEY": keys["client"],
            "MEDOPS_DICOM_STOW_URL": orthanc.dicomweb,
            "MEDOPS_DICOM_DEID_KEY": DEID_KEY,
            "MEDOPS_DICOM_QUIET_S": "1.5",
            "MEDOPS_DICOM_SCAN_INTERVAL_S": "0.2",
            "MEDOPS_DICOM_RETRY_INITIAL_S": "0.2",
            "MEDOPS_DICOM_RETRY_MAX_S": "1",
            "MEDOPS_DICOM_SEND_ATTEMPTS": "2",
            "MEDOPS_DICOM_CHAIN": "edge-brain-tumor",
            **env,
        }
        edge = EdgeProcess(values, tmp_path / f"edge-{len(started)}.log")
        started.append(edge)
        return edge.start()

    yield make
    for edge in started:
        edge.stop()
