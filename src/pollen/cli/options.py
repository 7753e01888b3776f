"""Options and checks shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(api: str, default_address: str, key_help: str) -> list[Any]:
    """--insecure, --superlink/--server, --root-certificates, --auth-private-key: how a
    command reaches a SuperLink's ``api`` (its Fleet API, or its Driver API)."""
    return [
        click.option("--insecure", is_flag=True, help="Connect without TLS."),
        click.option(
            "--superlink",
            "--server",
            "superlink_address",
            default=default_address,
            show_default=True,
            help=f"The SuperLink's {api}, HOST:PORT.",
        ),
        click.option(
            "--root-certificates",
            type=click.Path(path_type=Path),
            help="CA certificate (ca.crt) to verify the SuperLink's TLS certificate.",
        ),
        click.option("--auth-private-key", type=click.Path(path_type=Path), help=key_help),
    ]


def app_options(api: str, default_address: str) -> Callable[[F], F]:
    """APP, --dir, and the `connection_options`."""
    key_help = "Private key to authenticate with (the public key is derived from it)."

    def decorate(command: F) -> F:
        directory = click.option(
            "--dir",
            "directory",
            type=click.Path(path_type=Path),
            default=Path("."),
            show_default=True,
            help="Folder holding the app's module.",
        )
        options = [click.argument("app"), *connection_options(api, default_address, key_help)]
        options.insert(3, directory)  # after --superlink, where --help has always shown it
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
