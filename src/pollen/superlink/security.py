"""The SuperLink's security settings: TLS, who may join each API, and live key revocation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pollen.errors import ConfigurationError, StorageError
from pollen.proto import auth_pb2_grpc
from pollen.superlink.allowlist import RELOAD_SECONDS, AllowList
from pollen.superlink.audit import Audit
from pollen.superlink.auth_service import AuthService, AuthSettings
from pollen.superlink.rate_limit import FailureLimiter
from pollen.superlink.request_verification import RequestVerifier
from pollen.superlink.sessions import Session, SessionStore
from pollen.superlink.supervisor import Step
from pollen.transport import keys
from pollen.transport.addresses import Address
from pollen.transport.tls import ServerTls

logger = logging.getLogger(__name__)


@dataclass
class SecurityConfig:
    """TLS certificates, the node allow-list, the SuperLink's key pair, the operator keys."""

    tls: ServerTls | None = None
    client_keys: Path | None = None
    server_key: keys.PrivateKey | None = None
    operator_keys: Path | None = None
    max_failures: int = 5
    failure_window: float = 60.0

    def check(self, fleet: Address, driver: Address) -> None:
        """Refuse combinations that would leave a hole, saying why."""
        if self.client_keys is not None and self.tls is None:
            raise ConfigurationError(
                "client authentication needs TLS: without it the session handshake and every "
                "request could be read and tampered with; add --certificates CA CERT KEY"
            )
        if self.operator_keys is not None and self.tls is None:
            raise ConfigurationError("--operator-keys needs TLS; add --certificates CA CERT KEY")
        if not driver.is_loopback and self.operator_keys is None:
            raise ConfigurationError(
                f"--driver-api-address {driver} is reachable from other machines; anyone there "
                "could start runs. Keep it on 127.0.0.1 or require --operator-keys CSV"
            )


@dataclass
class ApiGuard:
    """Authentication of one API: its allow-list, sessions and gRPC pieces."""

    settings: AuthSettings

    def verified(self, server: grpc.aio.Server) -> Any:
        """A stand-in for ``server`` that registers services with verified handlers."""
        return RequestVerifier(self.settings.sessions).registrar(server)

    def add_service(
        self, server: grpc.aio.Server, on_displaced: Callable[[Session], None] | None = None
    ) -> None:
        service = AuthService(self.settings, on_displaced)
        auth_pb2_grpc.add_AuthServicer_to_server(  # type: ignore[no-untyped-call]
            service, RequestVerifier(None).registrar(server)
        )

    def reload(self, on_revoked: Callable[[Session | None, str], None]) -> None:
        """Apply changes of the allow-list file: added keys may join, removed ones are cut off.

        A file with errors still cuts off the keys gone from it (see `AllowList`).
        """
        changes = self.settings.allowlist.reload_if_changed()
        if changes is None:
            return
        reason = "key removed from the allow-list"
        if changes.errors:
            reason += " (or its line there has an error)"
        # cut off first: the audit may fail, access must not
        for fingerprint in sorted(changes.removed):
            sessions = self.settings.sessions.revoke(fingerprint)
            on_revoked(sessions[-1] if sessions else None, fingerprint)
            peers = ", ".join(s.peer for s in sessions) or "-"
            self._record("revoke", fingerprint, peers, reason)
        if changes.removed:
            self.settings.telemetry.security_changed()  # an open security page shows them
        for fingerprint in sorted(changes.added):
            self._record("key-added", fingerprint, "allow-list")

    def _record(self, event: str, fingerprint: str, peer: str, reason: str = "") -> None:
        """Audit an allow-list change; a disk that refuses it is logged, the change stands."""
        try:
            self.settings.audit.record(self.settings.api, event, fingerprint, peer, reason)
        except StorageError as exc:
            logger.error("audit of %s %s not stored: %s", event, fingerprint, exc)


def make_guard(
    api: str,
    allowlist_path: Path,
    config: SecurityConfig,
    audit: Audit,
    clock: Callable[[], float] = time.time,
) -> ApiGuard:
    settings = AuthSettings(
        api=api,
        allowlist=AllowList.load(allowlist_path, clock),
        sessions=SessionStore(clock, exclusive=api == "fleet"),
        limiter=FailureLimiter(config.max_failures, config.failure_window, clock),
        audit=audit,
        server_key=config.server_key,
    )
    logger.info("%s API: %d keys allowed (%s)", api, len(settings.allowlist.keys), allowlist_path)
    return ApiGuard(settings)


def allowlist_step(
    guards: list[tuple[ApiGuard, Callable[[Session | None, str], None]]],
) -> Step:
    """One check of the allow-lists for edits (run by the SuperLink's supervisor)."""

    async def reload() -> None:
        await asyncio.sleep(RELOAD_SECONDS)
        for guard, on_revoked in guards:
            guard.reload(on_revoked)

    return reload
