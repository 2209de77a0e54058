"""Traffic management for the gateway: canary, A/B (sticky), shadow, bandit, blue/green and
progressive delivery with automatic promotion and rollback.

Pure logic with no web framework: the gateway asks ``Router.route`` where each request goes,
reports answers with ``Router.observe`` and serves ``Router.document``/``Router.replace`` as
``GET/PUT /v1/routing``.
"""

from .audit import AuditTrail
from .config import (
    DEFAULT_VARIANT,
    ModelRouting,
    Progressive,
    RoutingConfig,
    Shadow,
    Variant,
)
from .progressive import ProgressiveController, VariantWindow
from .router import (
    MODEL_VERSION_HEADER,
    ROUTE_KEY_HEADER,
    VARIANT_HEADER,
    RouteDecision,
    Router,
    Target,
)
from .store import RevisionConflictError, RoutingStore

__all__ = [
    "DEFAULT_VARIANT",
    "MODEL_VERSION_HEADER",
    "ROUTE_KEY_HEADER",
    "VARIANT_HEADER",
    "AuditTrail",
    "ModelRouting",
    "Progressive",
    "ProgressiveController",
    "RevisionConflictError",
    "RouteDecision",
    "Router",
    "RoutingConfig",
    "RoutingStore",
    "Shadow",
    "Target",
    "Variant",
    "VariantWindow",
]
