"""The audit trail: every join, rejection and revocation, logged and stored in the state."""

from __future__ import annotations

import logging

from pollen.superlink.dispatch import Clock
from pollen.superlink.state import AuditEvent, State

logger = logging.getLogger(__name__)


def peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5555`` -> ``127.0.0.1``: failures are counted per address."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer


class Audit:
    def __init__(self, state: State, clock: Clock) -> None:
        self.state = state
        self.clock = clock

    def record(self, api: str, event: str, fingerprint: str, peer: str, reason: str = "") -> None:
        level = logging.INFO if event in ("join", "key-added") else logging.WARNING
        logger.log(level, "%s API %s: key %s from %s %s", api, event, fingerprint, peer, reason)
        self.state.add_audit(AuditEvent(self.clock(), api, event, fingerprint, peer, reason))
