"""Options and checks shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def app_options(api: str, default_address: str) -> Callable[[F], F]:
    """APP, --insecure, --superlink/--server, --dir, --root-certificates, --auth-private-key."""

    def decorate(command: F) -> F:
        for option in reversed(
            [
                click.argument("app"),
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
                    "--dir",
                    "directory",
                    type=click.Path(path_type=Path),
                    default=Path("."),
                    show_default=True,
                    help="Folder holding the app's module.",
                ),
                click.option(
                    "--root-certificates",
                    type=click.Path(path_type=Path),
                    help="CA certificate (ca.crt) to verify the SuperLink's TLS certificate.",
                ),
                click.option(
                    "--auth-private-key",
                    type=click.Path(path_type=Path),
                    help="Private key to authenticate with (the public key is derived from it).",
                ),
            ]
        ):
            command = option(command)
        return command

    return decorate
