"""What a status from the SuperLink tells a client about trying again."""

from __future__ import annotations

import grpc

from pollen.errors import STORAGE_FULL


def storage_full(exc: grpc.aio.AioRpcError) -> bool:
    """The SuperLink's disk is full: the same call succeeds once space is freed.

    Other RESOURCE_EXHAUSTED statuses (a message over the size limit, a rate
    limit) would fail again the same way: they are not this.
    """
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith(STORAGE_FULL)
