"""``pollen nodes``: the federation's nodes as a SuperLink knows them."""

from __future__ import annotations

import click

from pollen.cli.driver_connection import DriverTarget, driver_options, format_option
from pollen.cli.run_views import print_nodes


@click.group()
def nodes() -> None:
    """Nodes that joined a SuperLink."""


@nodes.command("ls")
@format_option
@driver_options
def list_nodes(output_format: str, target: DriverTarget) -> None:
    """List the nodes: id, online or offline (left: unregistered), last seen, tasks done
    and failed, key fingerprint.

    The nodes are the federation's: any operator key may list them.
    """
    print_nodes(target.run(lambda driver: driver.list_nodes()), output_format)
