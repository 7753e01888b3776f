"""What a status from the SuperLink tells a client about trying again."""

from __future__ import annotations

import grpc

from pollen.errors import OUT_OF_DESCRIPTORS, STORAGE_FULL, ConnectionFailed

DISPLACED = "replaced by another process with the same key"
"""How the SuperLink's answer starts when a newer session of a node's key ended this one's."""


def storage_full(exc: grpc.aio.AioRpcError) -> bool:
    """The SuperLink's disk is full, or it is out of file descriptors: the same call
    succeeds once space is freed or other transfers end.

    Other RESOURCE_EXHAUSTED statuses (a message over the size limit, a quota)
    would fail again the same way: they are not this.
    """
    details = exc.details() or ""
    passing = details.startswith(STORAGE_FULL) or details.startswith(OUT_OF_DESCRIPTORS)
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and passing


def displaced(exc: grpc.aio.AioRpcError) -> bool:
    """Another process joined with this node's key and took its place (the Fleet API
    admits one session per key): joining again would only displace that one in turn."""
    details = exc.details() or ""
    ended = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ABORTED)
    return exc.code() in ended and details.startswith(DISPLACED)


def call_failed(superlink: object, exc: grpc.aio.AioRpcError) -> ConnectionFailed:
    """A call the SuperLink at ``superlink`` refused, as the one-line error the CLI shows."""
    return ConnectionFailed(
        f"SuperLink at {superlink}: {exc.code().name.lower()} ({exc.details()})"
    )
