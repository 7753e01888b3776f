"""Starting and stopping a SuperLink: `open_superlink` returns once both APIs listen."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pollen.errors import ConfigurationError, StorageError, SuperLinkFailed
from pollen.proto import driver_pb2_grpc, fleet_pb2_grpc
from pollen.superlink.audit import Audit
from pollen.superlink.blob_gc import BlobCollector, sweep_step
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.connection_cap import (
    DEFAULT_CONNECTIONS_PER_ADDRESS,
    ConnectionCap,
    cap_step,
)
from pollen.superlink.connection_limits import (
    HANDSHAKE_SECONDS,
    IDLE_SECONDS,
    connection_options,
    raise_open_files_limit,
)
from pollen.superlink.dashboard.app import Readings, dashboard_app
from pollen.superlink.dashboard.guard import TokenCheck
from pollen.superlink.dashboard.http_server import HttpServer
from pollen.superlink.dashboard.settings import DashboardConfig, bind_listener
from pollen.superlink.dispatch import Clock, Dispatcher
from pollen.superlink.driver_service import DriverService
from pollen.superlink.fleet_service import FleetService
from pollen.superlink.rate_limit import FailureLimiter
from pollen.superlink.request_ids import ids_checked
from pollen.superlink.request_verification import RequestVerifier
from pollen.superlink.run_access import AdminKeys, RunAccess, load_admin_keys
from pollen.superlink.security import ApiGuard, SecurityConfig, allowlist_step, make_guard
from pollen.superlink.sessions import Session
from pollen.superlink.socket_table import SocketTable
from pollen.superlink.sqlite_state import SqliteState
from pollen.superlink.stream_limits import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_TRANSFERS_PER_NODE,
    DEFAULT_TRANSFERS_PER_OPERATOR,
    BlobStreams,
    idle_cut_step,
)
from pollen.superlink.supervisor import Step, Supervisor
from pollen.superlink.telemetry import Telemetry, measured
from pollen.superlink.upload_bounds import DEFAULT_MAX_BLOB_SIZE, DEFAULT_NODE_QUOTA, NodeQuota
from pollen.transport.addresses import Address
from pollen.transport.channels import bind, new_server

logger = logging.getLogger(__name__)

DEFAULT_FLEET_ADDRESS = Address("127.0.0.1", 9092)
DEFAULT_DRIVER_ADDRESS = Address("127.0.0.1", 9091)
DEFAULT_DATABASE = Path(".pollen") / "superlink.db"


@dataclass
class SuperLinkConfig:
    """Where a SuperLink listens, keeps its state, and whom it admits."""

    database: Path = DEFAULT_DATABASE
    fleet_address: Address = DEFAULT_FLEET_ADDRESS
    driver_address: Address = DEFAULT_DRIVER_ADDRESS
    heartbeat_interval: float = 5.0
    """Seconds between node heartbeats; a node silent for 3 intervals is offline."""
    task_ttl: float = 24 * 3600.0
    """Seconds a task may stay unanswered before it fails as expired."""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    clock: Clock = field(default=time.time)
    handshake_timeout: float = HANDSHAKE_SECONDS
    """Seconds a connection has to finish its TLS handshake and HTTP/2 preface."""
    idle_connection_timeout: float = IDLE_SECONDS
    """Seconds a connection may stay open with no call (its client reconnects when it calls)."""
    admin_keys: Path | None = None
    """Operator keys that may act on every run (see `run_access`); others, on their own."""
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    """Bytes one blob may have, from either API; larger uploads are refused up front."""
    node_quota: NodeQuota = DEFAULT_NODE_QUOTA
    """Bytes one node may keep stored in one run (see `upload_bounds`)."""
    max_transfers_per_node: int = DEFAULT_TRANSFERS_PER_NODE
    """Blob uploads and downloads one node may have open at once (see `stream_limits`)."""
    max_transfers_per_operator: int = DEFAULT_TRANSFERS_PER_OPERATOR
    """The same for one operator key on the Driver API (with operator keys)."""
    transfer_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    """Seconds a blob upload or download may move no chunk before it is cut."""
    max_connections_per_address: int = DEFAULT_CONNECTIONS_PER_ADDRESS
    """Connections one source address may hold open that have made no call yet (see
    `connection_cap`); 0: no cap."""
    dashboard: DashboardConfig | None = None
    """The dashboard and ``/metrics`` (None: not served; `pollen superlink` serves it on
    127.0.0.1:9093 unless told otherwise)."""

    @property
    def blob_dir(self) -> Path:
        return self.database.with_name(self.database.name + ".blobs")


@dataclass
class SuperLink:
    """A running SuperLink and the ports it listens on."""

    fleet_port: int
    driver_port: int
    dispatcher: Dispatcher
    blobs: BlobStore
    fleet_guard: ApiGuard | None = None
    driver_guard: ApiGuard | None = None
    fleet_transfers: BlobStreams | None = None
    driver_transfers: BlobStreams | None = None
    failure: asyncio.Future[SuperLinkFailed] | None = None
    """Resolves if a background loop gave up: the SuperLink must then stop (see
    `supervisor`); whoever runs it awaits this beside its own stop signal."""
    dashboard_port: int | None = None
    """Where the dashboard and ``/metrics`` listen (None: not served)."""
    connection_cap: ConnectionCap | None = None
    """The cap on connections per address that made no call (None: off)."""

    async def until_failed(self) -> SuperLinkFailed:
        """The failure that stops this SuperLink (waits until there is one)."""
        assert self.failure is not None, "a SuperLink opened by open_superlink has one"
        return await asyncio.shield(self.failure)


def _heartbeat_step(dispatcher: Dispatcher, interval: float, task_ttl: float) -> Step:
    async def check() -> None:
        await asyncio.sleep(interval)
        dispatcher.close_stale(3 * interval)
        dispatcher.expire_messages(task_ttl)

    return check


def _cut_off(
    dispatcher: Dispatcher, transfers: BlobStreams
) -> Callable[[Session | None, str], None]:
    """What happens to a node whose key is revoked: its task stream and blob transfers
    close, its tasks fail."""

    def revoke(session: Session | None, fingerprint: str) -> None:
        transfers.cut(fingerprint, grpc.StatusCode.UNAUTHENTICATED, f"key {fingerprint} revoked")
        node_id = session.node_id if session else dispatcher.state.node_for_key(fingerprint)
        if node_id:
            dispatcher.disconnect(node_id, f"key {fingerprint} revoked")

    return revoke


def _displace(dispatcher: Dispatcher, transfers: BlobStreams) -> Callable[[Session], None]:
    """A newer session of the same key took over: the older one's streams end, saying why."""

    def displace(old: Session) -> None:
        transfers.cut(old.fingerprint, grpc.StatusCode.ABORTED, old.ended, session=old)
        if old.node_id:
            dispatcher.disconnect(old.node_id, old.ended)

    return displace


def _guards(config: SuperLinkConfig, audit: Audit) -> tuple[ApiGuard | None, ApiGuard | None]:
    security = config.security
    security.check(config.fleet_address, config.driver_address)
    fleet = driver = None
    if security.client_keys is not None:
        fleet = make_guard("fleet", security.client_keys, security, audit, config.clock)
    if security.operator_keys is not None:
        driver = make_guard("driver", security.operator_keys, security, audit, config.clock)
    return fleet, driver


def _admins(config: SuperLinkConfig, driver_guard: ApiGuard | None) -> AdminKeys | None:
    if config.admin_keys is None:
        return None
    if driver_guard is None:
        raise ConfigurationError(
            "--admin-keys needs --operator-keys: without operator keys nobody is identified, "
            "and every ServerApp acts on every run already"
        )
    return load_admin_keys(config.admin_keys, driver_guard.settings.allowlist)


def _dashboard(
    config: SuperLinkConfig, dispatcher: Dispatcher, audit: Audit, read: Readings
) -> tuple[socket.socket, Callable[[], HttpServer]] | None:
    """The dashboard's socket, bound now (a port in use refuses the start before anything
    listens), and how to make its server once the SuperLink listens."""
    dashboard = config.dashboard
    if dashboard is None:
        return None
    dashboard.check()
    listener = bind_listener(dashboard.address)
    security = config.security
    check = None
    if dashboard.token is not None:
        limiter = FailureLimiter(security.max_failures, security.failure_window, config.clock)
        check = TokenCheck(dashboard.token, limiter, audit, secure_cookie=security.tls is not None)
    app = dashboard_app(dispatcher, read, check)
    return listener, lambda: HttpServer(app, listener, security.tls)


def _dashboard_url(config: SuperLinkConfig, port: int) -> str:
    assert config.dashboard is not None
    scheme = "https" if config.security.tls else "http"
    return f"{scheme}://{Address(config.dashboard.address.host, port)}"


def _connection_cap(config: SuperLinkConfig) -> tuple[ConnectionCap, SocketTable] | None:
    """The cap on connections per address, and the socket table it reads; None if it is
    off, or cannot work here (said once, with what still holds)."""
    if config.max_connections_per_address == 0:
        return None
    try:
        table = SocketTable()
    except OSError as exc:
        logger.warning(
            "connections are not capped per address: the kernel's socket table cannot be "
            "read (%s); connections that finish no handshake still close after %g s, and a "
            "firewall can cap them (docs/security.md)",
            exc,
            config.handshake_timeout,
        )
        return None
    return ConnectionCap(config.max_connections_per_address), table


def _credentials(config: SuperLinkConfig, address: Address) -> grpc.ServerCredentials | None:
    tls = config.security.tls
    return tls.credentials([address.host]) if tls is not None else None


@contextlib.asynccontextmanager
async def open_superlink(config: SuperLinkConfig) -> AsyncIterator[SuperLink]:
    """Run a SuperLink for the duration of the ``async with`` block."""
    fleet_credentials = _credentials(config, config.fleet_address)
    driver_credentials = _credentials(config, config.driver_address)
    created = _Created(config)
    state = SqliteState(config.database)
    telemetry = Telemetry()
    read = Readings()
    try:
        blobs = BlobStore(config.blob_dir, config.max_blob_size)
        dispatcher = Dispatcher(state, config.clock, telemetry)
        collector = BlobCollector(state, blobs, config.clock)
        collector.sweep()  # leftovers of a previous life
        audit = Audit(state, config.clock)
        fleet_guard, driver_guard = _guards(config, audit)
        for guard in (fleet_guard, driver_guard):
            if guard is not None:
                guard.settings.telemetry = telemetry
        access = RunAccess(state, _admins(config, driver_guard))
        dashboard = _dashboard(config, dispatcher, audit, read)
    except BaseException:
        read.close()
        created.remove(state)
        raise
    raise_open_files_limit()
    limits = connection_options(config.handshake_timeout, config.idle_connection_timeout)
    fleet = new_server(limits)
    driver = new_server(limits)
    capped = _connection_cap(config)
    cap = capped[0] if capped else None
    # every call marks its connection as in use, before anything else checks it
    fleet_registrar = cap.registrar(fleet) if cap else fleet
    driver_registrar = cap.registrar(driver) if cap else driver
    started = False
    http: HttpServer | None = None
    fleet_transfers = BlobStreams(
        config.max_transfers_per_node,
        "--max-transfers-per-node",
        config.transfer_idle_timeout,
        config.clock,
    )
    driver_transfers = BlobStreams(
        config.max_transfers_per_operator,
        "--max-transfers-per-operator",
        config.transfer_idle_timeout,
        config.clock,
    )
    try:
        fleet_pb2_grpc.add_FleetServicer_to_server(  # type: ignore[no-untyped-call]
            FleetService(
                dispatcher,
                blobs,
                config.heartbeat_interval,
                collector,
                fleet_guard is not None,
                config.node_quota,
                fleet_transfers,
            ),
            ids_checked(
                measured(
                    fleet_guard.verified(fleet_registrar)
                    if fleet_guard
                    else RequestVerifier(None).registrar(fleet_registrar),
                    telemetry,
                )
            ),
        )
        driver_service = DriverService(
            dispatcher,
            blobs,
            collector,
            driver_transfers,
            access=access,
            on_round_reported=telemetry.round_reported,
        )
        driver_pb2_grpc.add_DriverServicer_to_server(  # type: ignore[no-untyped-call]
            driver_service,
            ids_checked(
                measured(
                    driver_guard.verified(driver_registrar)
                    if driver_guard
                    else RequestVerifier(None).registrar(driver_registrar),
                    telemetry,
                )
            ),
        )
        revoke = _cut_off(dispatcher, fleet_transfers)
        if fleet_guard is not None:
            fleet_guard.add_service(fleet_registrar, _displace(dispatcher, fleet_transfers))
        if driver_guard is not None:
            driver_guard.add_service(driver_registrar)
        fleet_port = bind(fleet, config.fleet_address, "--fleet-api-address", fleet_credentials)
        driver_port = bind(
            driver, config.driver_address, "--driver-api-address", driver_credentials
        )
        await fleet.start()
        await driver.start()
        started = True
        dashboard_port = None
        if dashboard is not None:
            listener, make_http = dashboard
            http = make_http()
            await http.start()
            dashboard_port = int(listener.getsockname()[1])
            logger.info("dashboard on %s", _dashboard_url(config, dashboard_port))
        logger.info(
            "SuperLink listening: Fleet API %s:%d, Driver API %s:%d, state %s (%s)",
            config.fleet_address.host,
            fleet_port,
            config.driver_address.host,
            driver_port,
            config.database,
            _describe_security(config),
        )
        watched = [(g, revoke) for g in (fleet_guard,) if g is not None]
        if driver_guard is not None:  # an operator key is no node: cut its result streams
            watched.append(
                (driver_guard, lambda _, fingerprint: driver_service.revoke(fingerprint))
            )
        supervisor = Supervisor()
        steps: dict[str, Step | None] = {
            "the heartbeat and task TTL check": _heartbeat_step(
                dispatcher, config.heartbeat_interval, config.task_ttl
            ),
            "the allow-list watcher": allowlist_step(watched),
            "the blob sweeper": sweep_step(collector),
            "the administrator keys watcher": access.reload_step(),
            "the idle transfer cut-off": idle_cut_step(
                (fleet_transfers, driver_transfers), min(1.0, config.transfer_idle_timeout / 4)
            ),
            "the connection cap per address": (
                cap_step(*capped, {fleet_port: "fleet", driver_port: "driver"}, audit)
                if capped
                else None
            ),
        }
        for name, step in steps.items():
            if step is not None:
                supervisor.start(name, step)
        try:
            yield SuperLink(
                fleet_port,
                driver_port,
                dispatcher,
                blobs,
                fleet_guard,
                driver_guard,
                fleet_transfers=fleet_transfers,
                driver_transfers=driver_transfers,
                failure=supervisor.failure,
                dashboard_port=dashboard_port,
                connection_cap=cap,
            )
        finally:
            await supervisor.close()
            dispatcher.close_all()
    finally:
        telemetry.events.close()  # the live pages' streams end now: the shutdown waits for none
        if http is not None:
            await http.stop()
        elif dashboard is not None:
            dashboard[0].close()
        read.close()
        await asyncio.gather(fleet.stop(grace=1.0), driver.stop(grace=1.0))
        blobs.spares.drop()
        if capped:
            capped[1].close()
        if started:
            with contextlib.suppress(StorageError):  # a full disk: those counts are lost
                audit.flush()  # the counts of refusals not written yet
            state.close()
            logger.info("SuperLink stopped")
        else:  # refused to start (a port in use): its error says why
            created.remove(state)


class _Created:
    """What a starting SuperLink creates (its database, its blob folder), to remove it
    again if the start is refused: a refused start leaves no empty database behind."""

    def __init__(self, config: SuperLinkConfig) -> None:
        self.database = not config.database.exists()
        self.blob_dir = config.blob_dir if not config.blob_dir.exists() else None

    def remove(self, state: SqliteState) -> None:
        """Close ``state``; delete what this start created."""
        if self.database:
            state.discard()
        else:
            state.close()
        if self.blob_dir is not None:
            shutil.rmtree(self.blob_dir, ignore_errors=True)


def _describe_security(config: SuperLinkConfig) -> str:
    security = config.security
    parts = ["TLS" if security.tls else "plaintext"]
    if security.client_keys:
        parts.append("client authentication")
    if security.operator_keys:
        parts.append("operator authentication")
    return ", ".join(parts)
