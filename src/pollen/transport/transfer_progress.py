"""Progress of large blob transfers: what a SuperNode or a ServerApp shows while a
model over 50 MB moves.

The transfer code tells a `TransferProgress` sink how far a blob has come (a
number stored per chunk, nothing drawn or logged per chunk); the sink decides
what the user sees: on a terminal a live line with the rate and ETA
(`pollen.cli.progress_line.ProgressLine`), otherwise `LoggedTransfers`, one
summary line per transfer. Blobs under `LARGE_BLOB_BYTES` are not reported.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

logger = logging.getLogger(__name__)

LARGE_BLOB_BYTES = 50_000_000
"""Transfers from this size (50 MB) on are reported."""


class Transfer:
    """One blob moving: what it is, its size, how far it has come, since when. The
    transfer code updates ``done``; a sink reads it when it draws."""

    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started


class TransferProgress(Protocol):
    """Where large transfers are reported: when each starts and when it ends."""

    def transfer_started(self, transfer: Transfer) -> None: ...

    def transfer_ended(self, transfer: Transfer) -> None: ...


def describe_size(size: float) -> str:
    """``512.0 MB``, ``1.20 GB`` (decimal units, as the 50 MB threshold)."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB"


def describe_rate(done: float, seconds: float) -> str:
    """``278.0 MB/s``; ``-`` before any time has passed."""
    if seconds <= 0:
        return "-"
    return f"{describe_size(done / seconds)}/s"


class LoggedTransfers:
    """One log line per large transfer, when it ends: what, how much, how long, how fast."""

    def transfer_started(self, transfer: Transfer) -> None:
        """Nothing until the end."""

    def transfer_ended(self, transfer: Transfer) -> None:
        seconds = transfer.seconds()
        logger.info(
            "%s: %s in %.2f s, %s",
            transfer.what,
            describe_size(transfer.done),
            seconds,
            describe_rate(transfer.done, seconds),
        )


LOGGED_TRANSFERS = LoggedTransfers()


class Tracked:
    """A blob's transfer as the transfer code sees it: reported to ``progress`` when
    the blob is large enough, a no-op otherwise; ``advanced`` costs one assignment."""

    def __init__(self, progress: TransferProgress | None, what: str, total: int) -> None:
        self._progress = progress if total >= LARGE_BLOB_BYTES else None
        self.transfer = Transfer(what, total)
        if self._progress is not None:
            self._progress.transfer_started(self.transfer)

    def advanced(self, done: int) -> None:
        self.transfer.done = done

    def ended(self) -> None:
        if self._progress is not None:
            self._progress.transfer_ended(self.transfer)
            self._progress = None
