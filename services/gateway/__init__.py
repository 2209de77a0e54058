"""The medops gateway: Open Inference Protocol over REST and gRPC, and the clinical API.

``build_gateway(settings)`` is the composition root; ``create_app`` and ``create_grpc_server``
are the thin transport layers over the transport-neutral :class:`DataPlane`.
"""

from .settings import GatewaySettings

__all__ = ["GatewaySettings"]
