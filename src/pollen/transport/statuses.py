"""Former home of what a SuperLink status tells a client: now `retry_policy`.

Only the names that files being rewritten elsewhere still import are left here;
remove this module once ``superlink/sessions.py``, ``superlink/fleet_service.py``
and ``supernode/task_runner.py`` import them from `pollen.transport.retry_policy`,
and the Driver client raises its refusals as Pollen errors (`call_failed`).
"""

from __future__ import annotations

import grpc

from pollen.errors import ConnectionFailed
from pollen.transport.retry_policy import DISPLACED, storage_full

__all__ = ["DISPLACED", "call_failed", "storage_full"]


def call_failed(superlink: object, exc: grpc.aio.AioRpcError) -> ConnectionFailed:
    """A call the SuperLink at ``superlink`` refused, as the one-line error the CLI shows."""
    return ConnectionFailed(
        f"SuperLink at {superlink}: {exc.code().name.lower()} ({exc.details()})"
    )
