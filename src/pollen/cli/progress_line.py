"""A live progress line on a terminal: the current phase of a round, redrawn in place.

``round 3/50 fit 40/100 tasks (2 failed) 1.2 s elapsed, ETA 1.8 s``

The round loop only stores counts here (nothing is drawn per task, so a round of
thousands of tasks pays nothing for it); a background thread redraws the line at
most ten times a second, also while no reply arrives, so the elapsed time keeps
moving. Log lines written to the same terminal clear the line first, so the
per-round summary and every warning stay clean; the line comes back at the next
redraw. Off a terminal (a file, a pipe, CI) nothing is drawn at all: the per-round
summary in the log is the output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from pollen.server.round_progress import Phase, RoundProgress
from pollen.transport.transfer_progress import (
    LoggedTransfers,
    Transfer,
    describe_rate,
    describe_size,
)

REDRAW_INTERVAL = 0.1
"""Seconds between redraws: often enough to look live, rarely enough to cost nothing."""

_CLEAR_TO_END = "\x1b[K"
_DEFAULT_COLUMNS = 80


class OffTerminal(RoundProgress, LoggedTransfers):
    """Off a terminal: no live line; a summary log line per large transfer."""


def terminal_progress(
    stream: TextIO,
) -> contextlib.AbstractContextManager[ProgressLine | OffTerminal]:
    """A `ProgressLine` on ``stream`` when it is a terminal; otherwise `OffTerminal`."""
    if _is_terminal(stream):
        return ProgressLine(stream)
    return contextlib.nullcontext(OffTerminal())


def _is_terminal(stream: TextIO) -> bool:
    # a "dumb" terminal (an editor's shell buffer) shows escape sequences as text
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Seconds until all ``total`` tasks are done, at the pace of the ``done`` so far;
    None before the first one finished."""
    if done <= 0:
        return None
    return elapsed * max(total - done, 0) / done


def format_seconds(seconds: float) -> str:
    """``1.2 s``, ``2m05s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe_progress(phase: Phase, ok: int, failed: int, elapsed: float) -> str:
    """``round 3/50 fit 40/100 tasks (2 failed) 1.2 s elapsed, ETA 1.8 s``; no ETA
    before the first task finished or once all have."""
    done = ok + failed
    text = f"round {phase.server_round}/{phase.num_rounds} {phase.name} {done}/{phase.tasks} tasks"
    if failed:
        text += f" ({failed} failed)"
    text += f" {format_seconds(elapsed)} elapsed"
    eta = eta_seconds(elapsed, done, phase.tasks)
    if eta is not None and done < phase.tasks:
        text += f", ETA {format_seconds(eta)}"
    return text


def describe_transfers(transfers: list[Transfer]) -> str:
    """``download of blob 3fa2c81d09be 240.0 MB of 512.0 MB, 280.0 MB/s, ETA 1.0 s``, or
    for several at once ``3 transfers 240.0 MB of 1.54 GB, ...``: their sum."""
    done = sum(t.done for t in transfers)
    total = sum(t.total for t in transfers)
    seconds = max(t.seconds() for t in transfers)
    what = transfers[0].what if len(transfers) == 1 else f"{len(transfers)} transfers"
    text = f"{what} {describe_size(done)} of {describe_size(total)}"
    text += f", {describe_rate(done, seconds)}"
    if 0 < done < total:
        text += f", ETA {format_seconds(seconds * (total - done) / done)}"
    return text


class ProgressLine(RoundProgress):
    """The current phase's progress, and blobs over 50 MB moving (their rate and ETA),
    drawn on one line of the terminal ``stream``.

    Use it as a context manager: entering starts the redraws and routes the log
    handlers that write to ``stream`` through it; leaving clears the line and
    restores them.
    """

    def __init__(
        self,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        interval: float = REDRAW_INTERVAL,
    ) -> None:
        self.stream = stream
        self.clock = clock
        self.interval = interval
        self._lock = threading.Lock()  # one writer at a time: redraws and log lines
        self._phase: Phase | None = None
        self._ok = self._failed = 0
        self._started = 0.0
        self._ended: float | None = None
        self._drawn = False
        self._stopped = threading.Event()
        self._redraws: threading.Thread | None = None
        self._handlers: list[logging.StreamHandler[Any]] = []  # of the log lines
        self._transfers: list[Transfer] = []

    def transfer_started(self, transfer: Transfer) -> None:
        with self._lock:
            self._transfers.append(transfer)

    def transfer_ended(self, transfer: Transfer) -> None:
        with self._lock:
            self._transfers.remove(transfer)
            self._draw()

    def phase_started(self, phase: Phase) -> None:
        with self._lock:
            self._phase, self._ok, self._failed = phase, 0, 0
            self._started, self._ended = self.clock(), None
            self._draw()

    def tasks_finished(self, ok: int, failed: int) -> None:
        self._ok, self._failed = ok, failed  # drawn by the next redraw, not per task

    def phase_ended(self, ok: int, failed: int) -> None:
        with self._lock:
            self._ok, self._failed, self._ended = ok, failed, self.clock()
            self._draw()

    def redraw(self) -> None:
        """Draw the current phase again (its elapsed time moves on) while it or a transfer
        goes on."""
        with self._lock:
            if self._ended is None or self._transfers:
                self._draw()

    def write(self, text: str) -> int:
        """Write ``text`` (a log line) to the terminal, on a line of its own."""
        with self._lock:
            self._clear()
            return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def _draw(self) -> None:
        parts = []
        if self._phase is not None:
            end = self.clock() if self._ended is None else self._ended
            parts.append(
                describe_progress(self._phase, self._ok, self._failed, end - self._started)
            )
        if self._transfers:
            parts.append(describe_transfers(self._transfers))
        if not parts:
            self._clear()
            return
        line = " | ".join(parts)
        # a line wider than the terminal would wrap, and only its last part be redrawn
        self.stream.write("\r" + line[: self._columns() - 1] + _CLEAR_TO_END)
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + _CLEAR_TO_END)
            self._drawn = False

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or _DEFAULT_COLUMNS
        except (OSError, ValueError):  # not a real terminal (io.UnsupportedOperation is both)
            return _DEFAULT_COLUMNS

    def _redraw_until_stopped(self) -> None:
        while not self._stopped.wait(self.interval):
            self.redraw()

    def __enter__(self) -> ProgressLine:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(self)
                self._handlers.append(handler)
        self._redraws = threading.Thread(
            target=self._redraw_until_stopped, name="pollen-progress-line", daemon=True
        )
        self._redraws.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        if self._redraws is not None:
            self._redraws.join()
        for handler in self._handlers:
            if handler.stream is self:
                handler.setStream(self.stream)
        with self._lock:
            self._clear()
            self.stream.flush()
