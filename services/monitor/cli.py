"""``medops monitor``: run the monitor service."""

from __future__ import annotations

from typing import Any

import click

from services.monitor.settings import MonitorSettings


@click.command("monitor")
@click.option("--host", default=None, help="Bind address (MEDOPS_MONITOR_HOST).")
@click.option("--port", type=int, default=None, help="HTTP port (MEDOPS_MONITOR_PORT).")
@click.option("--interval", type=float, default=None, help="Seconds between evaluations.")
@click.option("--store-url", default=None, help="Prediction log URL (MEDOPS_MONITOR_STORE_URL).")
def monitor(
    host: str | None, port: int | None, interval: float | None, store_url: str | None
) -> None:
    """Serve drift and quality monitoring, feedback and /metrics."""
    import uvicorn

    from medops.service.logs import configure_logging
    from services.monitor.app import create_app

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "interval_s": interval,
            "store_url": store_url,
        }.items()
        if v is not None
    }
    settings = MonitorSettings(**overrides)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # JSON lines from configure_logging; the middleware writes access lines
        access_log=False,
    )
