"""Waiting for a server to answer: one loop for every caller (the demo, tests, benchmarks)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from medops.errors import BackendUnavailableError


class NotReadyError(BackendUnavailableError):
    """A server did not become ready in time, or stopped before it did."""


def exited(proc: subprocess.Popen[Any]) -> Callable[[], str | None]:
    """A ``gone`` check for :func:`wait_until_ready`: why ``proc`` is no longer running."""
    return lambda: None if proc.poll() is None else f"exited with {proc.returncode}"


def wait_until_ready(
    url: str,
    *,
    timeout_s: float,
    gone: Callable[[], str | None] | None = None,
    ready: Callable[[int], bool] = lambda status: status == 200,
    interval_s: float = 0.2,
) -> None:
    """Poll ``url`` until its status satisfies ``ready``. ``gone`` says why the server can no
    longer answer (it exited), which ends the wait at once; the error names the last answer."""
    last = ["no answer"]

    def probe() -> bool:
        reason = gone() if gone is not None else None
        if reason is not None:
            raise NotReadyError(f"{url}: the server {reason} before it was ready")
        try:
            status = httpx.get(url, timeout=max(1.0, interval_s)).status_code
        except httpx.TransportError as exc:
            last[0] = type(exc).__name__
            return False
        last[0] = f"HTTP {status}"
        return ready(status)

    retrying = Retrying(
        retry=retry_if_result(lambda ok: not ok),
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(interval_s),
    )
    try:
        retrying(probe)
    except RetryError:
        raise NotReadyError(f"{url} not ready after {timeout_s:g} s (last: {last[0]})") from None
