"""The monitor service: drift and quality monitoring, feedback, Prometheus export, retraining."""

from services.monitor.app import create_app
from services.monitor.settings import MonitorSettings

__all__ = ["MonitorSettings", "create_app"]
