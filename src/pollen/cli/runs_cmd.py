"""``pollen runs prune``: forget finished runs, their tasks, results and blobs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import click

from pollen.cli.security_options import client_credentials, client_identity
from pollen.errors import ConfigurationError
from pollen.server.driver import DriverClient
from pollen.transport.addresses import parse_address

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s`` or ``0`` as seconds; a number needs its unit."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ConfigurationError(
            f"--older-than {text!r} is not an age; write e.g. 7d, 12h, 30m or 45s"
        )
    if not match[2] and float(match[1]) != 0:
        # "7" could mean days as well as seconds; guessing wrong deletes runs
        number = match[1]
        raise ConfigurationError(
            f"--older-than {text!r} has no unit; write {number}d (days), {number}h (hours), "
            f"{number}m (minutes) or {number}s (seconds)"
        )
    return float(match[1]) * _UNITS[match[2] or "s"]


@click.group()
def runs() -> None:
    """Runs kept by a SuperLink."""


@runs.command("prune")
@click.option(
    "--older-than",
    required=True,
    help="Age of the runs to delete, with its unit: 7d, 12h, 30m or 45s.",
)
@click.option(
    "--abandoned",
    is_flag=True,
    help="Also end and delete running runs with no task or result for that long "
    "(their ServerApp died and was never resumed).",
)
@click.option("--insecure", is_flag=True, help="Connect without TLS.")
@click.option(
    "--superlink",
    "--server",
    "superlink_address",
    default="127.0.0.1:9091",
    show_default=True,
    help="The SuperLink's Driver API, HOST:PORT.",
)
@click.option("--root-certificates", type=click.Path(path_type=Path))
@click.option(
    "--auth-private-key",
    type=click.Path(path_type=Path),
    help="Operator key, for a Driver API that requires one.",
)
def prune(
    older_than: str,
    abandoned: bool,
    insecure: bool,
    superlink_address: str,
    root_certificates: Path | None,
    auth_private_key: Path | None,
) -> None:
    """Delete runs that finished (or failed) longer ago than --older-than, blobs included.

    Running runs are left alone unless --abandoned is given: then a running run with
    no new task or result for longer than --older-than is ended as failed and deleted.
    With --auth-private-key, only the runs that key created are touched (every run for
    a key in the SuperLink's --admin-keys).
    """
    age = parse_age(older_than)
    address = parse_address(superlink_address, "--superlink")
    credentials = client_credentials(insecure, root_certificates)
    identity = client_identity(auth_private_key, tls=credentials is not None)

    async def run() -> tuple[list[int], int]:
        driver = await DriverClient.connect(address, credentials, 10.0, identity)
        try:
            return await driver.prune_runs(age, abandoned)  # a refusal: CallRefused, one line
        finally:
            await driver.close()

    run_ids, blobs = asyncio.run(run())
    listed = ", ".join(map(str, run_ids)) or "none"
    click.echo(f"pruned runs: {listed}; {blobs} blob(s) deleted")
