"""What a status from the SuperLink tells a client about trying again."""

from __future__ import annotations

import grpc

from pollen.errors import STORAGE_FULL, ConnectionFailed


def storage_full(exc: grpc.aio.AioRpcError) -> bool:
    """The SuperLink's disk is full: the same call succeeds once space is freed.

    Other RESOURCE_EXHAUSTED statuses (a message over the size limit, a rate
    limit) would fail again the same way: they are not this.
    """
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith(STORAGE_FULL)


def call_failed(superlink: object, exc: grpc.aio.AioRpcError) -> ConnectionFailed:
    """A call the SuperLink at ``superlink`` refused, as the one-line error the CLI shows."""
    return ConnectionFailed(
        f"SuperLink at {superlink}: {exc.code().name.lower()} ({exc.details()})"
    )
