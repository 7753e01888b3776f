"""Options and checks shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pollen.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])


def app_options(api: str, default_address: str) -> Callable[[F], F]:
    """APP argument, --insecure, --superlink and --dir: how an app finds its code and SuperLink."""

    def decorate(command: F) -> F:
        for option in reversed(
            [
                click.argument("app"),
                click.option("--insecure", is_flag=True, help="Connect without TLS."),
                click.option(
                    "--superlink",
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
            ]
        ):
            command = option(command)
        return command

    return decorate


def require_insecure(insecure: bool) -> None:
    """Plaintext must be asked for explicitly."""
    if not insecure:
        raise ConfigurationError(
            "refusing to use plaintext connections without --insecure; pass --insecure "
            "to run without TLS (for a trusted network or local testing only)"
        )
