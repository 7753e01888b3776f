"""``pollen superlink``: the long-running coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from pollen.cli.lifecycle import run_until_signalled
from pollen.cli.security_options import server_security
from pollen.errors import ConfigurationError
from pollen.superlink.connection_cap import DEFAULT_CONNECTIONS_PER_ADDRESS
from pollen.superlink.dashboard.settings import (
    DEFAULT_DASHBOARD_ADDRESS,
    DashboardConfig,
    read_token_file,
)
from pollen.superlink.server import (
    DEFAULT_DATABASE,
    DEFAULT_DRIVER_ADDRESS,
    DEFAULT_FLEET_ADDRESS,
    SuperLinkConfig,
    open_superlink,
)
from pollen.superlink.stream_limits import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_TRANSFERS_PER_NODE,
    DEFAULT_TRANSFERS_PER_OPERATOR,
)
from pollen.superlink.upload_bounds import NodeQuota, parse_size
from pollen.transport.addresses import parse_address

PATH = click.Path(path_type=Path)


@click.command()
@click.option("--insecure", is_flag=True, help="Accept plaintext connections (no TLS).")
@click.option(
    "--certificates",
    type=(PATH, PATH, PATH),
    default=None,
    metavar="CA CERT KEY",
    help="TLS: CA certificate, server certificate and its key (certificates/ca.crt ...).",
)
@click.option("--ssl-ca-certfile", type=PATH, help="TLS CA certificate (long form).")
@click.option("--ssl-certfile", type=PATH, help="TLS server certificate (long form).")
@click.option("--ssl-keyfile", type=PATH, help="TLS server key (long form).")
@click.option(
    "--require-client-authentication",
    type=(PATH, PATH, PATH),
    default=None,
    metavar="CSV PRIVATE PUBLIC",
    help="Admit only SuperNodes whose keys are in CSV; PRIVATE/PUBLIC: the SuperLink's key pair.",
)
@click.option("--auth-list-public-keys", type=PATH, help="Allow-list of node keys (long form).")
@click.option(
    "--auth-superlink-private-key",
    type=PATH,
    help="The SuperLink's private key, which signs each session (long form).",
)
@click.option(
    "--operator-keys",
    type=PATH,
    help="Allow-list of ServerApp operator keys; required for a non-loopback Driver API.",
)
@click.option(
    "--admin-keys",
    type=PATH,
    help="Operator keys (a file like --operator-keys, each listed there too) that may act "
    "on every run; any other operator key acts only on the runs it created.",
)
@click.option(
    "--fleet-api-address",
    default=str(DEFAULT_FLEET_ADDRESS),
    show_default=True,
    help="HOST:PORT for SuperNodes (port 0 picks a free port).",
)
@click.option(
    "--driver-api-address",
    default=str(DEFAULT_DRIVER_ADDRESS),
    show_default=True,
    help="HOST:PORT for ServerApps.",
)
@click.option(
    "--database",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATABASE,
    show_default=True,
    help="SQLite state file; blobs are kept beside it in DATABASE.blobs/.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between node heartbeats; a node silent for 3 intervals is offline.",
)
@click.option(
    "--task-ttl",
    type=click.FloatRange(min=1),
    default=24 * 3600.0,
    show_default=True,
    help="Seconds a task may stay unanswered before it fails as expired.",
)
@click.option(
    "--max-blob-size",
    default="16GiB",
    show_default=True,
    help="Largest blob (a model, a result) either API accepts; larger uploads are refused "
    "before a byte is written.",
)
@click.option(
    "--node-quota",
    default="4x",
    show_default=True,
    help="Bytes one node may keep stored per run: a multiple of the model it was sent "
    "(4x) or a size (8GiB).",
)
@click.option(
    "--max-transfers-per-node",
    type=click.IntRange(min=1),
    default=DEFAULT_TRANSFERS_PER_NODE,
    show_default=True,
    help="Blob uploads and downloads one node may have open at once; more are refused.",
)
@click.option(
    "--max-transfers-per-operator",
    type=click.IntRange(min=1),
    default=DEFAULT_TRANSFERS_PER_OPERATOR,
    show_default=True,
    help="The same for one --operator-keys key on the Driver API.",
)
@click.option(
    "--transfer-idle-timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_IDLE_TIMEOUT,
    show_default=True,
    help="Seconds a blob upload or download may move no chunk (1 MiB) before it is cut.",
)
@click.option(
    "--max-connections-per-address",
    type=click.IntRange(min=0),
    default=DEFAULT_CONNECTIONS_PER_ADDRESS,
    show_default=True,
    help="Connections one source address (an IPv4 address, an IPv6 /64) may hold open "
    "before they make a call (TLS handshake, first request); its newest beyond are "
    "closed. Connections in use never count. 0: no cap.",
)
@click.option(
    "--dashboard-address",
    default=str(DEFAULT_DASHBOARD_ADDRESS),
    show_default=True,
    envvar="POLLEN_DASHBOARD_ADDRESS",
    help="HOST:PORT of the dashboard and Prometheus /metrics (HTTP; HTTPS with "
    "--certificates). Another address than loopback needs a token. Also read from "
    "POLLEN_DASHBOARD_ADDRESS.",
)
@click.option("--no-dashboard", is_flag=True, help="Serve no dashboard and no /metrics.")
@click.option(
    "--dashboard-token",
    help="Token every dashboard request must show (Authorization: Bearer TOKEN, or "
    "?token=TOKEN once in a browser). Visible to other users in ps: prefer "
    "--dashboard-token-file.",
)
@click.option(
    "--dashboard-token-file",
    type=PATH,
    help="File holding the dashboard token (its first line).",
)
def superlink(
    insecure: bool,
    fleet_api_address: str,
    driver_api_address: str,
    database: Path,
    heartbeat_interval: float,
    task_ttl: float,
    certificates: tuple[Path, Path, Path] | None,
    ssl_ca_certfile: Path | None,
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
    require_client_authentication: tuple[Path, Path, Path] | None,
    auth_list_public_keys: Path | None,
    auth_superlink_private_key: Path | None,
    operator_keys: Path | None,
    admin_keys: Path | None,
    max_blob_size: str,
    node_quota: str,
    max_transfers_per_node: int,
    max_transfers_per_operator: int,
    transfer_idle_timeout: float,
    max_connections_per_address: int,
    dashboard_address: str,
    no_dashboard: bool,
    dashboard_token: str | None,
    dashboard_token_file: Path | None,
) -> None:
    """Run the SuperLink: Fleet API for SuperNodes, Driver API for ServerApps.

    The allow-list files are watched: keys added join within seconds, keys removed
    are cut off, open streams included.
    """
    security = server_security(
        insecure,
        certificates,
        (ssl_ca_certfile, ssl_certfile, ssl_keyfile),
        require_client_authentication,
        auth_list_public_keys,
        auth_superlink_private_key,
        operator_keys,
    )
    if database == DEFAULT_DATABASE:
        database.parent.mkdir(parents=True, exist_ok=True)
    config = SuperLinkConfig(
        database=database,
        fleet_address=parse_address(fleet_api_address, "--fleet-api-address"),
        driver_address=parse_address(driver_api_address, "--driver-api-address"),
        heartbeat_interval=heartbeat_interval,
        task_ttl=task_ttl,
        security=security,
        admin_keys=admin_keys,
        max_blob_size=parse_size(max_blob_size, "--max-blob-size"),
        node_quota=NodeQuota.parse(node_quota),
        max_transfers_per_node=max_transfers_per_node,
        max_transfers_per_operator=max_transfers_per_operator,
        transfer_idle_timeout=transfer_idle_timeout,
        max_connections_per_address=max_connections_per_address,
        dashboard=_dashboard(
            dashboard_address, no_dashboard, dashboard_token, dashboard_token_file
        ),
    )

    async def serve(stop: asyncio.Event) -> None:
        async with open_superlink(config) as link:
            failed = asyncio.ensure_future(link.until_failed())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        if failed.done() and not failed.cancelled():
            raise failed.result()
        failed.cancel()

    run_until_signalled(serve)


def _dashboard(
    address: str, off: bool, token: str | None, token_file: Path | None
) -> DashboardConfig | None:
    if off:
        return None
    if token is not None and token_file is not None:
        raise ConfigurationError(
            "--dashboard-token and --dashboard-token-file both given; keep one"
        )
    if token_file is not None:
        token = read_token_file(token_file)
    config = DashboardConfig(parse_address(address, "--dashboard-address"), token)
    config.check()
    return config
