"""The edge's work: acknowledge instances once they are on disk, analyse each complete series
through the clinical plane, put the SEG and SR in the outbox, deliver them.

The models and anything they log see the series de-identified (the plane's upload reader);
the results are built over the ORIGINAL datasets, found from the de-identified UIDs through
the plane's keyed UID map, so they display with the source series at the PACS. That map is
recomputed from the key and the spooled files whenever needed and never written anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from medops.clinical import AnalyzeRequest, ClinicalPlane, Upload
from medops.clinical.report import build_results
from medops.deid import UIDMap
from medops.errors import BackendTimeoutError, BackendUnavailableError, MedopsError
from medops.imaging.upload import TYPE2_PATIENT_STUDY

from .delivery import DeliveryError, Sender, send_with_retries
from .polling import Poller
from .settings import DicomEdgeSettings
from .store import Outbox, Spool, SpooledSeries, key_of

log = logging.getLogger("medops.dicom_edge")

VERIFICATION = "1.2.840.10008.1.1"
ANALYSABLE = (str(MRImageStorage), str(CTImageStorage), str(SecondaryCaptureImageStorage))
"""Storage classes of single-frame images the clinical plane can analyse."""

CHECKPOINT_EVERY_S = 30.0
"""Longest time an acknowledged instance lives in a journal only."""

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC210
REFUSED_SOP_CLASS = 0x0122
OUT_OF_RESOURCES = 0xA700


class EdgeMetrics:
    """The edge's Prometheus series, on an injected registry; labels carry no identifiers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Counter(
            "medops_dicom_instances_total",
            "C-STORE requests by outcome (stored, kept, corrupt, refused, failed).",
            ["outcome"],
            registry=registry,
        )
        self.series = Counter(
            "medops_dicom_series_total",
            "Complete series by outcome (analysed, refused, retry).",
            ["outcome"],
            registry=registry,
        )
        self.analysis_seconds = Histogram(
            "medops_dicom_analysis_seconds",
            "Seconds from a complete series to its results in the outbox.",
            registry=registry,
        )
        self.delivered = Counter(
            "medops_dicom_results_delivered_total",
            "Result files the destination accepted.",
            registry=registry,
        )
        self.delivery_failures = Counter(
            "medops_dicom_delivery_failures_total",
            "Delivery rounds that ended without the destination taking the result.",
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "medops_dicom_outbox_pending",
            "Results in the outbox, not yet delivered.",
            registry=registry,
        )
        self.outbox_undeliverable = Gauge(
            "medops_dicom_outbox_undeliverable",
            "Results in the outbox whose last delivery round failed.",
            registry=registry,
        )
        self.polls = Counter(
            "medops_dicom_polls_total",
            "QIDO-RS rounds asked of the polled PACS.",
            registry=registry,
        )
        self.poll_failures = Counter(
            "medops_dicom_poll_failures_total",
            "QIDO-RS/WADO-RS rounds that failed (the polled PACS unreachable or refusing).",
            registry=registry,
        )
        self.spooled = Gauge(
            "medops_dicom_spooled_instances",
            "Acknowledged instances waiting for their series to be analysed.",
            registry=registry,
        )


@dataclass(frozen=True)
class Stored:
    status: int
    reason: str | None = None


class DicomEdge:
    """Spool, plane, outbox and sender of one edge process."""

    def __init__(
        self,
        settings: DicomEdgeSettings,
        plane: ClinicalPlane,
        sender: Sender,
        metrics: EdgeMetrics,
        *,
        poller: Poller | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.plane = plane
        self.sender = sender
        self.metrics = metrics
        self.clock = clock
        self.spool = Spool(settings.spool_root)
        self.outbox = Outbox(settings.spool_root)
        self.outbox.clear_temporary()
        self.poller = poller
        self._next_poll = 0.0
        self._last_checkpoint = clock()
        self._retry_after: dict[str, float] = {}
        self._ae: AE | None = None

    # ------------------------------------------------------------------ DIMSE

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        if not self.settings.allowed_calling_aes:
            raise MedopsError(
                "no calling AE title is allowed: set MEDOPS_DICOM_ALLOWED_CALLING_AES"
            )
        ae.require_calling_aet = list(self.settings.allowed_calling_aes)
        ae.add_supported_context(VERIFICATION)
        if self.settings.unsupported_sop_class == "store":
            for context in AllStoragePresentationContexts:
                ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        else:
            for uid in ANALYSABLE:
                ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = 16
        return ae

    def start_listener(self) -> None:
        ae = self.application_entity()
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, lambda _: SUCCESS),
            (evt.EVT_C_STORE, self.on_c_store),
        ]
        ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        self._ae = ae
        log.info("dicom listener started", extra={"port": self.settings.port})

    def stop_listener(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    def on_c_store(self, event: Any) -> int:
        result = self.store(event.encoded_dataset(include_meta=True))
        return result.status

    def store_with_uids(self, data: bytes) -> tuple[str | None, str | None, int]:
        """:meth:`store`, with the SOP class and instance UIDs of what was sent (for STOW-RS)."""
        status = self.store(data).status
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return (
                str(ds.get("SOPClassUID", "")) or None,
                str(ds.get("SOPInstanceUID", "")) or None,
                status,
            )
        except Exception:  # an undecodable part names nothing
            return None, None, status

    def store(self, data: bytes) -> Stored:
        """Check one instance and write it durably; its status is what the SCU is told."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            sop_class = str(ds.SOPClassUID)
            series_uid, sop_uid = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            analyse = sop_class in ANALYSABLE
            if analyse:
                _check_pixels(ds)
        except Exception as exc:  # any decoding failure is the instance's fault
            self.metrics.instances.labels("corrupt").inc()
            # the error's type only: decoding messages may quote an attribute's value
            log.warning("instance refused", extra={"reason": type(exc).__name__})
            return Stored(CANNOT_UNDERSTAND, type(exc).__name__)
        if not analyse and self.settings.unsupported_sop_class == "refuse":
            self.metrics.instances.labels("refused").inc()
            return Stored(REFUSED_SOP_CLASS, "storage class not analysed here")
        try:
            self.spool.put(series_uid, sop_uid, data, analyse=analyse)
        except OSError as exc:
            self.metrics.instances.labels("failed").inc()
            log.error("instance not stored", extra={"reason": type(exc).__name__})
            return Stored(OUT_OF_RESOURCES, "could not store the instance")
        self.metrics.instances.labels("stored" if analyse else "kept").inc()
        return Stored(SUCCESS)

    # ------------------------------------------------------------------ analysis

    async def analyse_complete(self, *, force: bool = False) -> int:
        """Analyse every complete series; returns how many got results."""
        now = self.clock()
        ready = self.spool.complete(0.0 if force else self.settings.quiet_s, now=now)
        if ready or now - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            # what is analysed (and then forgotten) must be on disk in its own file first;
            # and the journals are kept short even when nothing completes
            await asyncio.to_thread(self.spool.checkpoint)
            self._last_checkpoint = now
        done = 0
        for series in ready:
            if self._retry_after.get(series.key, 0.0) > now:
                continue
            done += await self.analyse(series)
        self.metrics.spooled.set(self.spool.pending_instances())
        return done

    async def analyse(self, series: SpooledSeries) -> int:
        start = time.perf_counter()
        try:
            files = await asyncio.to_thread(lambda: [f.read_bytes() for f in series.files])
            originals = await asyncio.to_thread(_read_all, files)
            reason = _inconsistency(originals)
            if reason is not None:
                raise MedopsError(reason)
            analysis = await self.plane.analyze(
                AnalyzeRequest(
                    Upload(tuple(files)),
                    segment=self.settings.segment,
                    chain=self.settings.chain,
                    # the results are built here, over the originals: no SEG of the plane's
                    keep_sources=True,
                    # the prediction log's id: the series' hashed key, never a UID
                    request_id=f"dicom-{series.key}",
                )
            )
            assert analysis.image.sources is not None
            uids = UIDMap(self.plane.deid_key)
            by_deidentified = {uids.uid(str(o.SOPInstanceUID)): o for o in originals}
            sources = [by_deidentified[str(s.SOPInstanceUID)] for s in analysis.image.sources]
            results = await asyncio.to_thread(build_results, analysis, sources)
            entry = {"seg.dcm": _encode(results.seg), "sr.dcm": _encode(results.sr)}
            entry_id = key_of(str(results.seg.SOPInstanceUID))
            await asyncio.to_thread(self._commit, series, entry_id, entry)
        except (BackendUnavailableError, BackendTimeoutError) as exc:
            # the models are away: keep the series, try again later
            self._retry_after[series.key] = self.clock() + self.settings.retry_initial_s
            self.metrics.series.labels("retry").inc()
            log.warning("series analysis postponed", extra={"reason": exc.message})
            return 0
        except MedopsError as exc:
            await asyncio.to_thread(self._refuse, series, exc.message)
            return 0
        except Exception:
            # a fault of the edge itself: keep the series and back off, never spin on it
            self._retry_after[series.key] = self.clock() + self.settings.retry_max_s
            self.metrics.series.labels("retry").inc()
            log.exception("series analysis failed", extra={"series": series.key})
            return 0
        self._retry_after.pop(series.key, None)
        self.metrics.series.labels("analysed").inc()
        self.metrics.analysis_seconds.observe(time.perf_counter() - start)
        log.info(
            "series analysed",
            extra={
                "series": series.key,
                "slices": len(sources),
                "positive_slices": int(analysis.positive.sum()),
                "result": entry_id,
            },
        )
        return 1

    def _commit(self, series: SpooledSeries, entry_id: str, entry: dict[str, bytes]) -> None:
        # results durable first, then the spool forgets: a crash in between analyses again,
        # and the same stable UIDs make the second result the same as the first
        self.outbox.put(entry_id, entry)
        self.spool.done(series)
        self.metrics.outbox_pending.set(len(self.outbox.entries()))

    def _refuse(self, series: SpooledSeries, reason: str) -> None:
        self.spool.refuse(series, reason)
        self.metrics.series.labels("refused").inc()
        log.warning("series refused", extra={"series": series.key, "reason": reason})

    # ------------------------------------------------------------------ delivery

    def deliver_due(self) -> int:
        """One delivery round over the due outbox entries; returns how many went out whole."""
        sent = 0
        for entry in self.outbox.due(self.clock()):
            try:
                for f in entry.files:
                    if f.name in entry.state.delivered:
                        continue
                    send_with_retries(
                        self.sender,
                        f.read_bytes(),
                        attempts=self.settings.send_attempts,
                        initial_s=self.settings.retry_initial_s,
                    )
                    entry.state.delivered.append(f.name)
                    self.metrics.delivered.inc()
            except DeliveryError as exc:
                state = entry.state
                state.attempts += 1
                state.last_error = exc.message
                state.last_attempt = self.clock()
                wait = self.settings.retry_initial_s * 2 ** min(state.attempts, 20)
                state.next_attempt = state.last_attempt + min(self.settings.retry_max_s, wait)
                self.outbox.update(entry)
                self.metrics.delivery_failures.inc()
                log.warning(
                    "result not delivered", extra={"result": entry.id, "reason": exc.message}
                )
                continue
            self.outbox.delivered(entry)
            sent += 1
            log.info("result delivered", extra={"result": entry.id})
        entries = self.outbox.entries()
        self.metrics.outbox_pending.set(len(entries))
        self.metrics.outbox_undeliverable.set(sum(1 for e in entries if e.state.last_error))
        return sent

    async def poll_if_due(self) -> None:
        """Ask the polled PACS for new series every ``poll_interval_s``; an unreachable PACS
        is tried again at the next interval."""
        if self.poller is None or self.clock() < self._next_poll:
            return
        self._next_poll = self.clock() + self.settings.poll_interval_s
        self.metrics.polls.inc()
        try:
            await asyncio.to_thread(self.poller.poll_once)
        except Exception as exc:  # the PACS's failure, not the edge's: log it and go on
            self.metrics.poll_failures.inc()
            log.warning("polling failed", extra={"reason": type(exc).__name__})

    def outbox_listing(self) -> list[dict[str, Any]]:
        """The waiting results for an operator: ids are hashes, reasons name no one."""
        return [
            {
                "id": e.id,
                "files": [f.name for f in e.files],
                "delivered": e.state.delivered,
                "attempts": e.state.attempts,
                "last_error": e.state.last_error,
                "waiting_since": e.state.created,
                "next_attempt": e.state.next_attempt,
            }
            for e in self.outbox.entries()
        ]

    async def run(self, stop: asyncio.Event) -> None:
        """Analyse and deliver until ``stop`` is set; one round's failure never ends the loop."""
        while not stop.is_set():
            try:
                await self.poll_if_due()
                await self.analyse_complete()
                await asyncio.to_thread(self.deliver_due)
            except Exception:
                log.exception("edge round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.scan_interval_s)


def _read_all(files: list[bytes]) -> list[Dataset]:
    """The original datasets, with the Type 2 patient and study attributes a derived object
    copies present (empty when the modality left them out)."""
    datasets: list[Dataset] = [pydicom.dcmread(io.BytesIO(b)) for b in files]
    for ds in datasets:
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets


def _check_pixels(ds: Dataset) -> None:
    """An image instance must carry whole pixel data (uncompressed: its full length)."""
    if "PixelData" not in ds:
        raise ValueError("no pixel data")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.get("SamplesPerPixel", 1))
        * int(ds.BitsAllocated)
        // 8
        * frames
    )
    if len(ds.PixelData) < expected:
        raise ValueError(f"pixel data truncated ({len(ds.PixelData)} of {expected} bytes)")


def _inconsistency(datasets: list[Dataset]) -> str | None:
    """Why a series is not one stack the plane can analyse (None when it is)."""
    shapes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(shapes) > 1:
        return f"the series mixes image sizes {sorted(shapes)}"
    orientations = {
        tuple(round(float(v), 3) for v in d.get("ImageOrientationPatient", [])) for d in datasets
    }
    if len(orientations) > 1:
        return "the series mixes image orientations"
    if len({int(d.get("NumberOfFrames", 1) or 1) for d in datasets} - {1}):
        return "multi-frame instances are not analysed"
    return None


def _encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
