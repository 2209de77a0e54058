"""``medops dicom``: run the DICOM edge."""

from __future__ import annotations

from typing import Any

import click

from services.dicom_edge.settings import DicomEdgeSettings


@click.command("dicom")
@click.option("--host", default=None, help="Bind address (MEDOPS_DICOM_HOST).")
@click.option("--port", type=int, default=None, help="DIMSE port (MEDOPS_DICOM_PORT).")
@click.option("--http-port", type=int, default=None, help="HTTP port (MEDOPS_DICOM_HTTP_PORT).")
@click.option("--ae-title", default=None, help="Own AE title (MEDOPS_DICOM_AE_TITLE).")
@click.option(
    "--allow", "allow", multiple=True, help="Allowed calling AE title (repeat; replaces the env)."
)
def dicom(
    host: str | None,
    port: int | None,
    http_port: int | None,
    ae_title: str | None,
    allow: tuple[str, ...],
) -> None:
    """Receive series over DIMSE, analyse them, send a SEG and an SR back."""
    import uvicorn

    from medops.service.logs import configure_logging
    from services.dicom_edge.app import create_app

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "http_port": http_port,
            "ae_title": ae_title,
            "allowed_calling_aes": list(allow) or None,
        }.items()
        if v is not None
    }
    settings = DicomEdgeSettings(**overrides)
    configure_logging(settings.log_level)
    import logging

    # per-attribute and per-request chatter; the edge logs each series and result itself
    for noisy in ("highdicom", "httpx", "pynetdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
    )
