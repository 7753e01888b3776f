"""How the operator commands (``pollen runs``, ``pollen nodes``) reach a SuperLink's
Driver API: the same options and the same connection for each of them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from pollen.cli.options import connection_options
from pollen.cli.security_options import client_credentials, client_identity
from pollen.server.driver import DriverClient
from pollen.transport.addresses import Address, parse_address

if TYPE_CHECKING:
    import grpc

    from pollen.transport.request_signing import ClientIdentity

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class DriverTarget:
    """A SuperLink's Driver API and how to reach it."""

    address: Address
    credentials: grpc.ChannelCredentials | None
    identity: ClientIdentity | None

    def run(self, work: Callable[[DriverClient], Awaitable[T]]) -> T:
        """Connect, ``await work(driver)``, disconnect; a refusal is one line (`CallRefused`)."""

        async def connected() -> T:
            driver = await DriverClient.connect(
                self.address, self.credentials, CONNECT_TIMEOUT, self.identity
            )
            try:
                return await work(driver)
            finally:
                await driver.close()

        return asyncio.run(connected())


_OPTIONS = connection_options(
    "Driver API", "127.0.0.1:9091", "Operator key, for a Driver API that requires one."
)


def driver_options(command: F) -> F:
    """--insecure, --superlink/--server, --root-certificates and --auth-private-key, handed
    to ``command`` as one ``target`` (`DriverTarget`)."""

    @functools.wraps(command)
    def with_target(
        *args: Any,
        insecure: bool,
        superlink_address: str,
        root_certificates: Path | None,
        auth_private_key: Path | None,
        **kwargs: Any,
    ) -> Any:
        address = parse_address(superlink_address, "--superlink")
        credentials = client_credentials(insecure, root_certificates)
        identity = client_identity(auth_private_key, tls=credentials is not None)
        target = DriverTarget(address, credentials, identity)
        return command(*args, target=target, **kwargs)

    decorated: Any = with_target
    for option in reversed(_OPTIONS):
        decorated = option(decorated)
    return cast(F, decorated)


format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="A table for people, or JSON for scripts.",
)
