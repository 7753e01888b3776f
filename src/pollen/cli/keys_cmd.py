"""``pollen keys generate``: development certificates and key pairs in the layout of
Flower's client-authentication example."""

from __future__ import annotations

from pathlib import Path

import click

from pollen.transport.keygen import DEFAULT_SANS, generate


@click.group()
def keys() -> None:
    """Certificates and key pairs."""


@keys.command("generate")
@click.argument("clients", type=click.IntRange(min=0), default=2)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder that receives certificates/ and keys/.",
)
@click.option(
    "--san",
    "sans",
    multiple=True,
    help=f"Extra host name or IP for the server certificate ({', '.join(DEFAULT_SANS)} "
    "are always included). Repeat for several.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def generate_command(clients: int, out: Path, sans: tuple[str, ...], force: bool) -> None:
    """Write a CA, a server certificate, the SuperLink's key pair and CLIENTS node key pairs.

    For development only: production keys belong to each organisation and its own PKI.
    """
    written = generate(out, clients, list(sans), force)
    click.echo(f"wrote {len(written)} files under {out}/ (certificates/, keys/)")
    click.echo(f"allow-list: {out / 'keys' / 'client_public_keys.csv'} ({clients} client keys)")
    click.echo("these keys are for development only; do not use them in production")
