"""A SuperNode's life: connect, register, take tasks, reconnect with backoff, leave."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field

import grpc

from pollen.client.client_app import ClientApp
from pollen.errors import JoinRefused, KeyInUse, PollenError
from pollen.records.typing import UserConfig
from pollen.supernode.fleet_client import FleetClient
from pollen.supernode.task_runner import TaskRunner
from pollen.transport.addresses import Address
from pollen.transport.backoff import Backoff
from pollen.transport.channels import open_channel
from pollen.transport.connection_faults import Endpoint, FaultWatch, refused_join
from pollen.transport.request_signing import ClientIdentity, RequestAuth, open_session
from pollen.transport.retry_policy import NODE_PACE, displaced
from pollen.transport.transfer_progress import LOGGED_TRANSFERS, TransferProgress

logger = logging.getLogger(__name__)

FLEET_PROBE = "/pollen.v1.Fleet/Heartbeat"
"""A Fleet API call that tells the Fleet API from the Driver API (which does not know it)."""


@dataclass
class SuperNodeConfig:
    """Where a SuperNode connects and what it tells its ClientApp."""

    superlink: Address
    node_config: UserConfig = field(default_factory=dict)
    credentials: grpc.ChannelCredentials | None = None
    identity: ClientIdentity | None = None
    """The node's key pair; required by a SuperLink with client authentication."""
    max_backoff: float = NODE_PACE.maximum
    """The longest wait between reconnections, in seconds."""
    transfers: TransferProgress = LOGGED_TRANSFERS
    """Where the progress of blobs over 50 MB goes (a live line on a terminal)."""


def _endpoint(config: SuperNodeConfig) -> Endpoint:
    tls, keyed = config.credentials is not None, config.identity is not None
    return Endpoint(config.superlink, "Fleet", tls, keyed)


async def _heartbeat(fleet: FleetClient) -> None:
    while True:
        await asyncio.sleep(fleet.heartbeat_interval)
        await fleet.heartbeat()


async def _join(channel: grpc.aio.Channel, config: SuperNodeConfig, auth: RequestAuth) -> None:
    """Prove the node's key to the SuperLink; a refusal ends the node."""
    if config.identity is None:
        return
    try:
        await open_session(channel, config.identity, "fleet", auth.holder)
    except grpc.aio.AioRpcError as exc:
        refusal = await refused_join(channel, _endpoint(config), exc, FLEET_PROBE)
        raise JoinRefused(
            f"the SuperLink at {config.superlink} refused this node: {refusal.details()}; "
            "ask its operator to add the node's public key to the allow-list"
        ) from None


async def _serve(
    fleet: FleetClient, runner: TaskRunner, previous_node_id: int, join: Awaitable[None]
) -> None:
    """Join, register (or re-register) and run tasks until the stream ends."""
    await join
    node_id = await fleet.register(previous_node_id)
    logger.info("connected as node %d", node_id)
    heartbeat = asyncio.create_task(_heartbeat(fleet))
    try:
        async for message in fleet.instructions():
            await runner.run(fleet, message)
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await heartbeat


async def run_supernode(
    app: ClientApp, config: SuperNodeConfig, stop: asyncio.Event | None = None
) -> None:
    """Serve tasks until ``stop`` is set (or forever); leave the federation on the way out."""
    stop = stop or asyncio.Event()
    runner = TaskRunner(app, config.node_config)
    backoff = Backoff(NODE_PACE.initial, config.max_backoff)
    faults = FaultWatch(_endpoint(config))
    node_id = 0
    while not stop.is_set():
        auth = RequestAuth()
        async with open_channel(config.superlink, config.credentials) as channel:
            fleet = FleetClient(channel, auth if config.identity else None, config.transfers)
            join = _join(channel, config, auth)
            serving = asyncio.create_task(_serve(fleet, runner, node_id, join))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this coroutine itself is cancelled
                stopping.cancel()
                if not stop.is_set() and not serving.done():
                    serving.cancel()
            node_id = fleet.node_id or node_id
            if stop.is_set():
                serving.cancel()
                await _leave(fleet, serving)
                return
            error = serving.exception()
            if isinstance(error, PollenError):
                raise error
            if fleet.node_id:  # this attempt got through: start backing off afresh
                backoff.reset()
                faults.reset()
            if isinstance(error, grpc.aio.AioRpcError):
                _give_up_if_pointless(error, config, faults)
            delay = backoff.next_delay()
            logger.warning(
                "SuperLink at %s: %s; reconnecting in %.1f s",
                config.superlink,
                _describe(error),
                delay,
            )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def _give_up_if_pointless(
    error: grpc.aio.AioRpcError, config: SuperNodeConfig, faults: FaultWatch
) -> None:
    """Raise what reconnecting cannot mend: a misconfiguration, or a key used twice.

    Any other failure ends only this session (`retry_policy`): the next one registers
    again, and the SuperLink has already failed the tasks the break cut.
    """
    if displaced(error):
        raise KeyInUse(
            f"the SuperLink at {config.superlink} ended this node's session: "
            f"{error.details()}; give each SuperNode its own key pair (pollen keys generate N "
            "writes N of them), or stop the other process"
        )
    faults.check(error)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "task stream closed"
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name.lower()} ({error.details()})"
    return f"{type(error).__name__}: {error}"


async def _leave(fleet: FleetClient, serving: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await serving
    if fleet.node_id:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await fleet.unregister()
            logger.info("node %d left the federation", fleet.node_id)
