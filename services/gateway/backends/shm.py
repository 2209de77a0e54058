"""Input tensors handed to Triton through POSIX shared memory instead of the socket.

When the gateway and Triton share a host and ``/dev/shm`` (a sidecar in one pod, or one
machine), copying a tensor into a registered region and sending a few hundred bytes of JSON
costs far less than pushing the tensor through loopback TCP a second time. Regions are a fixed
pool of slots; a request that finds no free slot, or whose tensors do not fit, goes inline.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np

from ..types import Tensor

log = logging.getLogger("medops.gateway.shm")


class SharedMemoryPool:
    """``slots`` regions of ``slot_bytes`` each, named ``medops-<id>-<i>``."""

    def __init__(self, slots: int = 32, slot_bytes: int = 4 * 1024 * 1024) -> None:
        self.slot_bytes = slot_bytes
        prefix = f"medops-{uuid.uuid4().hex[:12]}"
        self.regions = [
            shared_memory.SharedMemory(name=f"{prefix}-{i}", create=True, size=slot_bytes)
            for i in range(slots)
        ]
        self._free = list(range(slots))

    @staticmethod
    def key(region: shared_memory.SharedMemory) -> str:
        """The shm_open key Triton needs (Python names regions without the leading slash)."""
        return "/" + region.name.lstrip("/")

    @contextlib.contextmanager
    def slot(self, tensors: list[Tensor]) -> Iterator[list[tuple[str, int, int]] | None]:
        """Copy ``tensors`` into one free slot; yields (region, offset, size) per tensor, or
        None when no slot is free or they do not fit. The slot is freed on exit."""
        sizes = [t.data.nbytes for t in tensors]
        if not self._free or sum(sizes) > self.slot_bytes:
            yield None
            return
        index = self._free.pop()
        region = self.regions[index]
        placed = []
        offset = 0
        try:
            for t, size in zip(tensors, sizes, strict=True):
                view: np.ndarray = np.ndarray(
                    t.data.shape, dtype=t.data.dtype, buffer=region.buf, offset=offset
                )
                view[...] = t.data
                placed.append((region.name, offset, size))
                offset += size
            yield placed
        finally:
            self._free.append(index)

    def close(self) -> None:
        for region in self.regions:
            with contextlib.suppress(Exception):
                region.close()
                region.unlink()
        self.regions = []
        self._free = []
