"""A whole federation as child processes on this machine (for `pollen demo`, tests, benchmarks).

Every process started here is stopped here, by its PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pollen.errors import PollenError
from pollen.transport.keygen import generate

_LISTENING = re.compile(r"Fleet API \S+?:(\d+), Driver API \S+?:(\d+)")
_DASHBOARD = re.compile(r"dashboard on https?://\S+?:(\d+)")


@dataclass
class Child:
    """A child process whose output goes to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def pollen_command(*args: str) -> list[str]:
    """``pollen ARGS...`` run by this Python interpreter."""
    return [sys.executable, "-m", "pollen", *args]


def spawn(name: str, args: Sequence[str], log_dir: Path, cwd: Path | None = None) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    handle: IO[bytes] = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        list(args),
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    handle.close()
    return Child(name, process, log_path)


def wait_for_log(child: Child, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    """Wait until ``child``'s log matches ``pattern``; PollenError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(child.log())
        if match:
            return match
        if child.process.poll() is not None:
            raise PollenError(
                f"{child.name} exited with {child.process.returncode}: "
                f"{child.log().strip().splitlines()[-1:]}"
            )
        time.sleep(0.05)
    raise PollenError(f"{child.name} did not report {pattern.pattern!r} within {timeout:g} s")


@dataclass
class LocalFederation:
    """A SuperLink (on OS-chosen ports) and the SuperNodes started against it.

    With ``clients`` > 0 the federation is secure, as in Flower's client-authentication example:
    credentials for that many nodes are generated under ``workdir/credentials``, TLS and client
    authentication are on, and node N uses ``keys/client_credentials_N``.
    """

    workdir: Path
    clients: int = 0
    superlink: Child | None = None
    fleet_port: int = 0
    driver_port: int = 0
    dashboard_port: int = 0
    """The dashboard's and /metrics' port (0 until the SuperLink started; one the OS
    picks, so that federations side by side never share 9093)."""
    nodes: list[Child] = field(default_factory=list)
    database: Path | None = None
    """The SuperLink's state file (default: ``workdir/superlink.db``)."""

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def credentials(self) -> Path:
        return self.workdir / "credentials"

    def _client_tls(self) -> list[str]:
        if not self.clients:
            return ["--insecure"]
        return ["--root-certificates", str(self.credentials / "certificates" / "ca.crt")]

    def start_superlink(self, *extra: str) -> Child:
        """Start the SuperLink (on the ports it had, when it ran before)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        security = ["--insecure"]
        if self.clients:
            if not (self.credentials / "keys" / "client_public_keys.csv").exists():
                generate(self.credentials, self.clients, [], force=True)
            certs, keys = self.credentials / "certificates", self.credentials / "keys"
            security = [
                "--certificates",
                str(certs / "ca.crt"),
                str(certs / "server.pem"),
                str(certs / "server.key"),
                "--require-client-authentication",
                str(keys / "client_public_keys.csv"),
                str(keys / "server_credentials"),
                str(keys / "server_credentials.pub"),
            ]
        args = pollen_command(
            "superlink",
            *security,
            "--fleet-api-address",
            f"127.0.0.1:{self.fleet_port}",
            "--driver-api-address",
            f"127.0.0.1:{self.driver_port}",
            "--dashboard-address",
            f"127.0.0.1:{self.dashboard_port}",
            "--database",
            str(self.database or self.workdir / "superlink.db"),
            *extra,
        )
        restarts = sum(1 for _ in self.log_dir.glob("superlink*.log")) if self.superlink else 0
        name = f"superlink-{restarts}" if restarts else "superlink"
        self.superlink = spawn(name, args, self.log_dir)
        match = wait_for_log(self.superlink, _LISTENING, timeout=30)
        self.fleet_port, self.driver_port = int(match[1]), int(match[2])
        dashboard = _DASHBOARD.search(self.superlink.log())  # logged before the APIs' line
        self.dashboard_port = int(dashboard[1]) if dashboard else 0
        return self.superlink

    def crash_superlink(self) -> None:
        """SIGKILL the SuperLink, as a crash would: no shutdown, nothing flushed on purpose."""
        if self.superlink is not None and self.superlink.process.poll() is None:
            self.superlink.process.kill()
            self.superlink.process.wait()

    def node_keys(self, index: int) -> list[str]:
        """``--authentication-keys`` of generated client ``index`` (1-based)."""
        private = self.credentials / "keys" / f"client_credentials_{index}"
        return ["--authentication-keys", str(private), f"{private}.pub"]

    def start_supernode(
        self, app: str, directory: Path, node_config: str = "", *extra: str
    ) -> Child:
        """Start a node; in a secure federation node N takes client key N unless ``extra``
        gives ``--authentication-keys`` itself."""
        security = self._client_tls()
        if self.clients and "--authentication-keys" not in extra:
            security += self.node_keys(len(self.nodes) + 1)
        args = pollen_command(
            "supernode",
            app,
            *security,
            "--superlink",
            f"127.0.0.1:{self.fleet_port}",
            "--dir",
            str(directory),
            "--node-config",
            node_config,
            *extra,
        )
        child = spawn(f"supernode-{len(self.nodes)}", args, self.log_dir)
        self.nodes.append(child)
        return child

    def serverapp_command(self, app: str, directory: Path, *extra: str) -> list[str]:
        return pollen_command(
            "serverapp",
            app,
            *self._client_tls(),
            "--superlink",
            f"127.0.0.1:{self.driver_port}",
            "--dir",
            str(directory),
            "--output-dir",
            str(self.workdir / "runs"),
            *extra,
        )

    def stop(self) -> None:
        """Stop the nodes (all at once, so that they leave in parallel), then the SuperLink."""
        for node in self.nodes:
            node.terminate()
        for child in [*self.nodes, *([self.superlink] if self.superlink else [])]:
            child.stop()
