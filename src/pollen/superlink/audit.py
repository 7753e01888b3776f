"""The audit trail: every join, rejection and revocation, logged and stored in the state.

Repeated events are aggregated: the same event of the same key from the same
source address with the same reason, within `AGGREGATE_SECONDS` of its first
occurrence, adds one to that row's ``count`` instead of adding a row. So a flood
leaves a few rows that say how large it was, not one row per attempt.

Attempts refused for a rate limit ("throttled") are counted in memory and their
count written at most once a second, so that a flood costs no write per attempt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pollen.superlink.dispatch import Clock
from pollen.superlink.peers import source_of
from pollen.superlink.state import AuditEvent, State

logger = logging.getLogger(__name__)

AGGREGATE_SECONDS = 60.0
"""Repeats of an event within this many seconds of its first occurrence share its row."""

WRITE_SECONDS = 1.0
"""A throttled row's count is written at most this often (at the next event of any row)."""

AGGREGATED = frozenset({"reject", "throttled", "join", "displaced"})
"""Events that may repeat at a high rate; allow-list changes are stored one by one."""

DEFERRED = frozenset({"throttled"})
"""Aggregated events whose count is written later (see `WRITE_SECONDS`), not each time."""

MAX_OPEN_ROWS = 10_000
"""Rows still counting at most; beyond, the oldest is closed early."""


@dataclass
class _OpenRow:
    """An aggregated row that is still counting."""

    row_id: int
    opened: float
    count: int = 1
    written: int = 1


class Audit:
    def __init__(self, state: State, clock: Clock) -> None:
        self.state = state
        self.clock = clock
        self._open: dict[tuple[str, str, str, str, str], _OpenRow] = {}
        self._written_at = 0.0

    def __len__(self) -> int:
        """Aggregated rows still counting."""
        return len(self._open)

    def record(self, api: str, event: str, fingerprint: str, peer: str, reason: str = "") -> None:
        now = self.clock()
        if event not in AGGREGATED:
            self._log(api, event, fingerprint, peer, reason)
            self.state.add_audit(AuditEvent(now, api, event, fingerprint, peer, reason))
            return
        key = (api, event, fingerprint, source_of(peer), reason)
        row = self._open.get(key)
        if row is not None and now - row.opened < AGGREGATE_SECONDS:
            row.count += 1
            if event not in DEFERRED:  # rate-limited already: each is logged
                self._log(api, event, fingerprint, peer, reason)
                self.state.set_audit_count(row.row_id, row.count)
                row.written = row.count
        else:
            self._close(key)
            self._log(api, event, fingerprint, peer, reason)
            row_id = self.state.add_audit(AuditEvent(now, api, event, fingerprint, peer, reason))
            self._open[key] = _OpenRow(row_id, now)
            while len(self._open) > MAX_OPEN_ROWS:
                self._close(next(iter(self._open)))
        if now - self._written_at >= WRITE_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the counts not written yet; close the rows whose interval has passed."""
        now = self.clock()
        self._written_at = now
        for key, row in list(self._open.items()):
            if now - row.opened >= AGGREGATE_SECONDS:
                self._close(key)
            elif row.count != row.written:
                self.state.set_audit_count(row.row_id, row.count)
                row.written = row.count

    def _close(self, key: tuple[str, str, str, str, str]) -> None:
        row = self._open.pop(key, None)
        if row is None or row.count == row.written:
            return
        self.state.set_audit_count(row.row_id, row.count)
        api, event, fingerprint, source, reason = key
        logger.log(
            _level(event),
            "%s API %s: key %s from %s %s: %d attempts within %g s",
            api,
            event,
            fingerprint,
            source,
            reason,
            row.count,
            AGGREGATE_SECONDS,
        )

    @staticmethod
    def _log(api: str, event: str, fingerprint: str, peer: str, reason: str) -> None:
        more = " (more attempts are counted, not logged)" if event in DEFERRED else ""
        logger.log(
            _level(event),
            "%s API %s: key %s from %s %s%s",
            api,
            event,
            fingerprint,
            peer,
            reason,
            more,
        )


def _level(event: str) -> int:
    return logging.INFO if event in ("join", "key-added") else logging.WARNING
