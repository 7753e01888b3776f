"""Naming what went wrong when the SuperLink cannot write to its disk.

A full disk or a read-only file system is the operator's to fix, not a bug: it
becomes a `StorageFull` or `StorageError` whose one-line message says where and
what to do. Requests that hit one fail with a status clients retry on; the
state stays as it was before the write (SQLite rolls the transaction back,
a blob never becomes visible half-written). A process out of file descriptors
(EMFILE, ENFILE) is named too, as `TooManyOpenFiles`: RESOURCE_EXHAUSTED with a
message, never gRPC's UNKNOWN with a raw OSError.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import grpc

from pollen.errors import (
    OUT_OF_DESCRIPTORS,
    STORAGE_FULL,
    StorageError,
    StorageFull,
    TooManyOpenFiles,
)

logger = logging.getLogger(__name__)

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_NO_DESCRIPTORS = {errno.EMFILE, errno.ENFILE}


def disk_full(where: Path, detail: str) -> StorageFull:
    return StorageFull(
        f"{STORAGE_FULL}: cannot write {where} ({detail}); free space there, "
        "clients retry and the run goes on"
    )


def unwritable(where: Path, detail: str) -> StorageError:
    return StorageError(
        f"SuperLink storage unwritable: cannot write {where} ({detail}); make it writable "
        "again (read-only file system, permissions or a failing disk)"
    )


def out_of_descriptors(where: Path, detail: str) -> TooManyOpenFiles:
    return TooManyOpenFiles(
        f"{OUT_OF_DESCRIPTORS}: cannot open a file in {where} ({detail}); "
        "retry once other transfers end. Its operator can raise the limit (ulimit -n) "
        "or lower --max-transfers-per-node"
    )


def from_os_error(exc: OSError, where: Path) -> StorageError | None:
    """The storage fault ``exc`` stands for, or None when it is something else."""
    detail = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return disk_full(where, detail)
    if exc.errno in _UNWRITABLE:
        return unwritable(where, detail)
    if exc.errno in _NO_DESCRIPTORS:
        return out_of_descriptors(where, detail)
    return None


@contextlib.contextmanager
def as_storage_faults(where: Path) -> Iterator[None]:
    """Within the block, an OSError that is a storage fault becomes that `StorageError`."""
    try:
        yield
    except OSError as exc:
        fault = from_os_error(exc, where)
        if fault is None:
            raise
        raise fault from exc


def status_of(fault: StorageError) -> grpc.StatusCode:
    """Full disk or no descriptor left: RESOURCE_EXHAUSTED; else UNAVAILABLE."""
    if isinstance(fault, StorageFull | TooManyOpenFiles):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE


async def refuse(
    fault: StorageError, method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> NoReturn:
    """End a request that hit ``fault``: one log line here, the same line to the client."""
    logger.error("%s: %s", method, fault)
    await context.abort(status_of(fault), str(fault))
