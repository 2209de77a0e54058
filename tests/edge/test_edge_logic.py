"""The DICOM edge's own logic without a network: what each instance is told, the durable
spool and outbox, delivery rounds with backoff, stable result UIDs. (The edge against a real
PACS and modality: ``tests/dicom``, ``make test-dicom``.)"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from medops.clinical import ClinicalPlane
from medops.clinical.report import stable_uid
from medops.clinical.types import Route
from medops.imaging.dicom import write_dicom_series
from medops.imaging.image import Image
from services.dicom_edge.delivery import DeliveryError, send_with_retries
from services.dicom_edge.edge import (
    CANNOT_UNDERSTAND,
    REFUSED_SOP_CLASS,
    SUCCESS,
    DicomEdge,
    EdgeMetrics,
    _inconsistency,
)
from services.dicom_edge.polling import Poller
from services.dicom_edge.settings import DicomEdgeSettings
from services.dicom_edge.store import Outbox, Spool


class NoModels:
    """The store path never reaches the models."""

    async def route(self, model: str, routing: Mapping[str, str]) -> Route:
        raise AssertionError("no model is needed to store an instance")

    async def predict(self, model: str, batch: np.ndarray, route: Route) -> np.ndarray:
        raise AssertionError("no model is needed to store an instance")


class FlakySender:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise DeliveryError("STOW-RS answered 503")
        self.sent.append(data)


def make_edge(tmp_path: Path, sender: FlakySender | None = None, **settings: object) -> DicomEdge:
    values: dict[str, object] = {
        "spool_dir": tmp_path / "spool",
        "allowed_calling_aes": ["MODALITY"],
        "retry_initial_s": 0.0,
        "send_attempts": 2,
        **settings,
    }
    return DicomEdge(
        DicomEdgeSettings(**values),  # type: ignore[arg-type]
        ClinicalPlane(NoModels(), {}),
        sender or FlakySender(0),
        EdgeMetrics(CollectorRegistry()),
    )


@pytest.fixture
def mr_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 255, (1, 3, 8, 8), dtype=np.uint8)
    return write_dicom_series(Image(volume, np.eye(4), {}, "nifti"), tmp_path / "series")


def test_a_whole_mr_instance_is_acknowledged_only_once_it_is_in_the_spool(
    tmp_path: Path, mr_files: list[Path]
) -> None:
    edge = make_edge(tmp_path)
    assert edge.store(mr_files[0].read_bytes()).status == SUCCESS
    [series] = edge.spool.series()
    assert len(series.files) == 1 and series.files[0].read_bytes() == mr_files[0].read_bytes()
    assert not list((tmp_path / "spool").rglob("*.tmp"))
    # the spool's names are hashes: no UID of the instance appears on disk outside the file
    ds = pydicom.dcmread(mr_files[0])
    names = " ".join(str(p) for p in (tmp_path / "spool").rglob("*"))
    assert str(ds.SOPInstanceUID) not in names and str(ds.SeriesInstanceUID) not in names


def test_truncated_or_garbled_instances_get_a_failure_status_and_nothing_is_spooled(
    tmp_path: Path, mr_files: list[Path]
) -> None:
    edge = make_edge(tmp_path)
    ds = pydicom.dcmread(mr_files[0])
    ds.PixelData = ds.PixelData[:10]
    out = io.BytesIO()
    ds.save_as(out)
    assert edge.store(out.getvalue()).status == CANNOT_UNDERSTAND
    assert edge.store(b"DICM" + b"\x00" * 300).status == CANNOT_UNDERSTAND
    assert edge.spool.series() == []


def test_an_instance_of_a_class_it_cannot_analyse_is_refused_or_kept_per_setting(
    tmp_path: Path, mr_files: list[Path]
) -> None:
    ds = pydicom.dcmread(mr_files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.481.3")
    out = io.BytesIO()
    ds.save_as(out)
    refusing = make_edge(tmp_path / "a")
    assert refusing.store(out.getvalue()).status == REFUSED_SOP_CLASS
    keeping = make_edge(tmp_path / "b", unsupported_sop_class="store")
    assert keeping.store(out.getvalue()).status == SUCCESS
    assert keeping.spool.series() == []  # kept, never analysed
    assert len(list(keeping.spool.kept.rglob("*.dcm"))) == 1


def test_a_series_is_complete_after_the_quiet_time_or_when_triggered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("1.2.3", "1.2.3.1", b"x")
    [series] = spool.series()
    assert spool.complete(10.0, now=series.last_arrival + 5) == []
    assert spool.complete(10.0, now=series.last_arrival + 10) == [series]
    assert spool.trigger() == 1
    assert spool.complete(10.0, now=series.last_arrival) == [series]
    spool.done(series)
    assert spool.series() == [] and not (spool.incoming / series.key).exists()


def test_an_undeliverable_result_stays_with_its_reason_and_goes_out_on_a_later_round(
    tmp_path: Path,
) -> None:
    sender = FlakySender(failures=2)  # one whole round of two tries fails
    edge = make_edge(tmp_path, sender, retry_max_s=0.0)
    assert edge.outbox.put("r1", {"seg.dcm": b"seg", "sr.dcm": b"sr"})
    assert not edge.outbox.put("r1", {"seg.dcm": b"other"})  # the same result again: kept once
    assert edge.deliver_due() == 0
    [listed] = edge.outbox_listing()
    assert listed["attempts"] == 1 and listed["last_error"] == "STOW-RS answered 503"
    assert listed["delivered"] == []
    assert edge.metrics.outbox_undeliverable._value.get() == 1
    assert edge.deliver_due() == 1
    assert sender.sent == [b"seg", b"sr"] and edge.outbox.entries() == []
    assert edge.metrics.delivered._value.get() == 2


def test_a_failing_round_waits_longer_each_time_up_to_the_cap(tmp_path: Path) -> None:
    edge = make_edge(tmp_path, FlakySender(failures=100), retry_initial_s=0.0, retry_max_s=0.0)
    edge.settings.retry_initial_s = 1.0
    edge.settings.retry_max_s = 5.0
    edge.settings.send_attempts = 1
    edge.outbox.put("r1", {"seg.dcm": b"seg"})
    now = [1000.0]
    edge.clock = lambda: now[0]
    waits = []
    for _ in range(4):
        edge.deliver_due()
        [entry] = edge.outbox.entries()
        waits.append(entry.state.next_attempt - now[0])
        now[0] = entry.state.next_attempt
    assert waits == [2.0, 4.0, 5.0, 5.0]


def test_a_half_written_outbox_entry_is_dropped_on_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    (outbox.root / ".r1.abc.tmp").mkdir()
    (outbox.root / ".r1.abc.tmp" / "seg.dcm").write_bytes(b"half")
    Outbox(tmp_path).clear_temporary()
    assert list(outbox.root.iterdir()) == []


def test_send_with_retries_tries_again_then_names_the_last_failure() -> None:
    sender = FlakySender(failures=1)
    send_with_retries(sender, b"x", attempts=2, initial_s=0.0, sleep=lambda _: None)
    assert sender.sent == [b"x"]
    with pytest.raises(DeliveryError, match="503"):
        send_with_retries(FlakySender(5), b"x", attempts=3, initial_s=0.0, sleep=lambda _: None)


def test_result_uids_are_stable_valid_and_distinct_per_input() -> None:
    series = generate_uid()
    a = stable_uid("seg", series, "m@1")
    assert a == stable_uid("seg", series, "m@1")
    assert a != stable_uid("seg", series, "m@2") != stable_uid("sr", series, "m@1")
    assert a.startswith("2.25.") and len(a) <= 64 and all(p.isdigit() for p in a.split("."))


class FakeArchive:
    """QIDO/WADO answers of a PACS, for the poller's own bookkeeping."""

    def __init__(self, rows: list[dict[str, Any]], series: dict[str, list[Dataset]]) -> None:
        self.rows, self.series = rows, series
        self.queries: list[dict[str, Any]] = []
        self.retrieved: list[str] = []

    def search_for_series(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.queries.append(kwargs)
        return self.rows

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        self.retrieved.append(series_uid)
        return self.series[series_uid]


def _row(study: str, series: str, description: str) -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "0008103E": {"vr": "LO", "Value": [description]},
    }


def test_the_poller_fetches_what_its_rule_finds_once_and_remembers_it_across_restarts(
    tmp_path: Path, mr_files: list[Path]
) -> None:
    ds = pydicom.dcmread(mr_files[0])
    study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    archive = FakeArchive(
        [_row(study, series, "FLAIR axial"), _row(study, "1.2.3.4", "T1 sagittal")],
        {series: [ds]},
    )
    spool = Spool(tmp_path)
    poller = Poller(
        archive, spool, modality="MR", series_description="flair*", days=7,
        today=dt.date(2026, 3, 10),
    )  # fmt: skip
    assert poller.poll_once() == 1
    assert archive.queries[0]["search_filters"] == {
        "Modality": "MR",
        "StudyDate": "20260303-20260310",
    }
    assert archive.retrieved == [series]  # the T1 series is off the rule
    assert spool.complete(3600.0) == spool.series()  # fetched whole: complete at once
    restarted = Poller(archive, Spool(tmp_path), modality="MR", series_description="FLAIR*")
    assert restarted.poll_once() == 0 and archive.retrieved == [series]


def test_a_refused_series_is_kept_aside_with_its_reason_for_the_listing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("1.2.3", "1.2.3.1", b"x")
    [series] = spool.series()
    spool.refuse(series, "the series mixes image sizes [(8, 8), (16, 8)]")
    assert spool.series() == []
    assert spool.refusals() == [
        {
            "series": series.key,
            "instances": 1,
            "reason": "the series mixes image sizes [(8, 8), (16, 8)]",
        }
    ]


def test_a_series_mixing_sizes_or_orientations_is_refused_with_the_reason(
    mr_files: list[Path],
) -> None:
    a, b = pydicom.dcmread(mr_files[0]), pydicom.dcmread(mr_files[0])
    assert _inconsistency([a, b]) is None
    b.Rows = 16
    assert "mixes image sizes" in (_inconsistency([a, b]) or "")
    b.Rows = a.Rows
    b.ImageOrientationPatient = [0, 1, 0, 0, 0, 1]
    assert "orientations" in (_inconsistency([a, b]) or "")


def test_an_acknowledged_instance_survives_in_the_journal_until_a_checkpoint(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    path = spool.put("1.2.3", "1.2.3.1", b"first")
    spool.put("1.2.3", "1.2.3.2", b"second")
    # a crash before any checkpoint: the instance files may be lost, the journal is not
    path.unlink()
    restarted = Spool(tmp_path)
    assert restarted.replayed == 2 and path.read_bytes() == b"first"
    assert list(restarted.journals.iterdir()) == []


def test_a_torn_journal_record_was_never_acknowledged_and_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("1.2.3", "1.2.3.1", b"whole")
    [journal] = spool.journals.glob("*.wal")
    with open(journal, "ab") as f:
        f.write(b"\x00\x00\x00\x30\x00\x00\x10\x00incoming/half")  # the tail of a crash
    assert Spool(tmp_path).replayed == 1


def test_a_checkpoint_syncs_the_files_and_empties_the_journals(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.put("1.2.3", "1.2.3.1", b"data")
    [journal] = spool.journals.glob("*.wal")
    assert journal.stat().st_size > 0
    assert spool.checkpoint() == 1
    assert journal.stat().st_size == 0 and path.read_bytes() == b"data"
    assert Spool(tmp_path).replayed == 0
