"""Support for the DICOM edge tests and benchmark: a private network namespace, a real
Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on free loopback ports inside it, and the
edge itself as a separate process, each stopped by PID.

Orthanc binds every interface and has no option against it, so this process first moves into
a network namespace of its own with only loopback up (``unshare(CLONE_NEWNET)``, as root);
everything it starts afterwards (Orthanc, the edge, DCMTK, the gateway thread) lives there.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from gateway_harness import ROOT, free_port, stop_process

from medops.service.readiness import exited, wait_until_ready

CLONE_NEWNET = 0x40000000
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def enter_private_network() -> None:
    """Leave the host's network for a namespace with loopback only (once per process)."""
    if os.environ.get("MEDOPS_PRIVATE_NETNS") == str(os.getpid()):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise RuntimeError(
            f"unshare(CLONE_NEWNET) failed (errno {ctypes.get_errno()}): the DICOM tests "
            "run as root, or under `unshare -rn`"
        )
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ["MEDOPS_PRIVATE_NETNS"] = str(os.getpid())


def require_tools(*names: str) -> None:
    """Fail (never skip) when a Debian tool the tests need is missing."""
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if missing:
        raise AssertionError(
            f"missing {', '.join(missing)}: run `make system-deps` (infra/install-system-deps.sh)"
        )


class Orthanc:
    """A real Orthanc with DICOMweb on free loopback ports; ``storage`` survives restarts."""

    def __init__(self, storage: Path | None = None, ae_title: str = "ORTHANC") -> None:
        require_tools(ORTHANC, DICOMWEB_PLUGIN)
        self.work = Path(tempfile.mkdtemp(prefix="medops-orthanc-"))
        self.storage = storage or self.work / "db"
        self.http_port, self.dicom_port = free_port(), free_port()
        self.ae_title = ae_title
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 60.0) -> Orthanc:
        config = {
            "Name": "medops-test-pacs",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "Host": f"127.0.0.1:{self.http_port}",
            },
        }
        path = self.work / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.work / "orthanc.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            wait_until_ready(f"{self.url}/system", timeout_s=timeout_s, gone=exited(self.proc))
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"Orthanc did not start: {exc}\n{self.log_tail()}") from exc
        return self

    def log_tail(self) -> str:
        log = self.work / "orthanc.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, group=True, timeout_s=20)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()


class EdgeProcess:
    """``python -m services.dicom_edge`` on free ports, stopped by PID (or killed with -9)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.env = {
            **os.environ,
            **env,
            "MEDOPS_DICOM_HOST": "127.0.0.1",
            "MEDOPS_DICOM_PORT": str(self.port),
            "MEDOPS_DICOM_HTTP_PORT": str(self.http_port),
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 60.0) -> EdgeProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.dicom_edge"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_until_ready(
                f"{self.url}/v2/health/ready", timeout_s=timeout_s, gone=exited(self.proc)
            )
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"the edge did not start: {exc}\n{self.log()[-3000:]}") from exc
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        os.killpg(self.proc.pid, 9)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, group=True, timeout_s=20)
        self.proc = None

    def __enter__(self) -> EdgeProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_for(what: str, check: Any, timeout_s: float = 60.0, interval_s: float = 0.25) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def series_in_study(orthanc: Orthanc, study_uid: str, modality: str) -> list[dict[str, Any]]:
    """QIDO-RS: the series of ``modality`` in a study."""
    r = httpx.get(
        f"{orthanc.dicomweb}/studies/{study_uid}/series",
        params={"Modality": modality},
        timeout=10,
    )
    if r.status_code == 204 or not r.content:
        return []
    r.raise_for_status()
    found: list[dict[str, Any]] = r.json()
    return found
