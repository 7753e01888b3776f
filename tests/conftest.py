"""Shared fixtures: in-process federations on 127.0.0.1:0 and paths to test apps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pollen.cli.local_federation import Child, LocalFederation, spawn, wait_for_log
from pollen.client.client_app import ClientApp
from pollen.superlink.server import SuperLink, SuperLinkConfig, open_superlink
from pollen.supernode.node import SuperNodeConfig, run_supernode
from pollen.transport.addresses import Address

APPS_DIR = Path(__file__).parent / "apps"
REPO_ROOT = Path(__file__).parent.parent
LOOPBACK_ANY_PORT = Address("127.0.0.1", 0)

# Every SuperLink a test starts (a subprocess, a CliRunner) serves its dashboard on a
# port the OS picks: SuperLinks of tests running side by side never fight over 9093.
os.environ["POLLEN_DASHBOARD_ADDRESS"] = "127.0.0.1:0"


def run_serverapp_to_the_end(fed: LocalFederation, app: str, timeout: float = 30) -> float:
    """Run the ServerApp ``app`` (from the test apps) against ``fed`` until it exits 0;
    the seconds it took."""
    started = time.monotonic()
    server = spawn("serverapp", fed.serverapp_command(app, APPS_DIR), fed.log_dir)
    try:
        assert server.process.wait(timeout=timeout) == 0, server.log()
    finally:
        server.stop()
    return time.monotonic() - started


def stop_four_rounds_after_round_two(
    fed: LocalFederation, marker: Path, delay: float, stop: Callable[[Child], None]
) -> tuple[list[str], str]:
    """Two slow nodes and a four-round ServerApp (every round adds 1 to every weight);
    once round 2 is done, ``stop`` it. Its command line and run id."""
    command = fed.serverapp_command("numpy_apps:four_rounds", APPS_DIR)
    for _ in range(2):
        fed.start_supernode(
            "numpy_apps:app", APPS_DIR, f"behaviour=slow,marker={marker},delay={delay}"
        )
    first = spawn("serverapp", command, fed.log_dir)
    try:
        run_id = wait_for_log(first, re.compile(r"run (\d+) started"), 60)[1]
        wait_for_log(first, re.compile(r"round 2/4"), 60)
        stop(first)
    finally:
        first.stop()
    return command, run_id


def resume_to_the_end(fed: LocalFederation, command: list[str], run_id: str) -> Child:
    """``command --resume run_id``, run until it exits 0."""
    resumed = spawn("serverapp-resumed", [*command, "--resume", run_id], fed.log_dir)
    try:
        assert resumed.process.wait(timeout=60) == 0, resumed.log()
    finally:
        resumed.stop()
    return resumed


def rounds_recorded(runs: Path) -> list[dict[str, Any]]:
    """The per-round records in ``metrics.json`` of the one run under ``runs``."""
    [metrics] = runs.glob("*/metrics.json")
    rounds: list[dict[str, Any]] = json.loads(metrics.read_text())["rounds"]
    return rounds


def free_port() -> int:
    """A port that was free a moment ago (for tests that must know it in advance)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def superlink_config(tmp_path: Path, **overrides: object) -> SuperLinkConfig:
    config = SuperLinkConfig(
        database=tmp_path / "superlink.db",
        fleet_address=LOOPBACK_ANY_PORT,
        driver_address=LOOPBACK_ANY_PORT,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@dataclass
class Node:
    """An in-process SuperNode and the event that stops it gracefully."""

    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def leave(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


def start_node(app: ClientApp, fleet_port: int, **node_config: object) -> Node:
    config = SuperNodeConfig(
        superlink=Address("127.0.0.1", fleet_port),
        node_config=dict(node_config),  # type: ignore[arg-type]
        max_backoff=0.5,
    )
    stop = asyncio.Event()
    return Node(asyncio.create_task(run_supernode(app, config, stop)), stop)


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def federation(
    tmp_path: Path, app: ClientApp, node_configs: list[dict[str, object]], **overrides: object
) -> AsyncIterator[tuple[SuperLink, list[Node]]]:
    """A SuperLink with one in-process SuperNode per config, all connected; ``overrides``:
    of its `SuperLinkConfig` (``dashboard=...``)."""
    async with open_superlink(superlink_config(tmp_path, **overrides)) as link:
        nodes = [start_node(app, link.fleet_port, **config) for config in node_configs]
        try:
            await wait_until(lambda: len(link.dispatcher.online_nodes()) == len(nodes))
            yield link, nodes
        finally:
            for node in nodes:
                node.stop.set()
            await asyncio.wait_for(
                asyncio.gather(*(n.task for n in nodes), return_exceptions=True), 10
            )
