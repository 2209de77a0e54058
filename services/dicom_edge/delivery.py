"""Sending results to the destination PACS: STOW-RS (dicomweb-client) or C-STORE
(pynetdicom), each try of a round retried with exponential backoff (tenacity)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset
from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

from medops.errors import BackendUnavailableError


class DeliveryError(BackendUnavailableError):
    """The destination did not take a result; the message is safe to show (no PHI)."""


class Sender(Protocol):
    def send(self, data: bytes) -> None:
        """Store one DICOM file at the destination or raise :class:`DeliveryError`."""
        ...


class StowSender:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.client = DICOMwebClient(url=url.rstrip("/"))
        self.timeout_s = timeout_s
        # dicomweb-client retries on its own; tenacity does it here, once, for both senders
        self.client.set_http_retry_params(retry=False)

    def send(self, data: bytes) -> None:
        import requests

        ds = pydicom.dcmread(io.BytesIO(data))
        try:
            self.client.store_instances([ds])
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "no"
            raise DeliveryError(f"STOW-RS answered {status}") from exc
        except requests.RequestException as exc:
            raise DeliveryError(f"STOW-RS failed: {type(exc).__name__}") from exc


class CStoreSender:
    def __init__(self, host: str, port: int, called_ae: str, calling_ae: str) -> None:
        self.host, self.port, self.called_ae, self.calling_ae = host, port, called_ae, calling_ae

    def send(self, data: bytes) -> None:
        from pynetdicom import AE

        ds: Dataset = pydicom.dcmread(io.BytesIO(data))
        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise DeliveryError("C-STORE: association not established")
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code not in (0x0000, 0xB000, 0xB007, 0xB006):
            raise DeliveryError(f"C-STORE answered status 0x{code & 0xFFFF:04X}")


def send_with_retries(
    sender: Sender,
    data: bytes,
    *,
    attempts: int,
    initial_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """One delivery round: up to ``attempts`` tries, waiting ``initial_s``, then twice as long."""
    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=initial_s, min=initial_s, max=60),
        reraise=False,
        sleep=sleep,
    )
    try:
        for attempt in retrying:
            with attempt:
                sender.send(data)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        if isinstance(last, DeliveryError):
            raise last from None
        raise DeliveryError(f"delivery failed: {type(last).__name__}") from None
