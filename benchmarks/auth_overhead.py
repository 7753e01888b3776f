"""Auth overhead: Fleet API requests per second with client authentication on and off.

Generates development credentials (``pollen.transport.keygen``) in a temporary
folder, then measures twice against a fresh SuperLink each time:

(a) TLS only: a plain TLS channel, no session, no request signing;
(b) TLS + client authentication: the client joins (``open_session``, pinning the
    SuperLink's key) and every request carries a session MAC (``RequestAuth``: one
    ``pollen-auth`` header per call), which the SuperLink's ``RequestVerifier`` checks.

In both, one client channel registers a node and then sends ``Heartbeat``
requests as fast as it can, ``--concurrency`` in flight at a time, for
``--seconds`` seconds (after ``--warmup`` seconds that are not counted).

By default the SuperLink is a child process (``python -m pollen superlink``), so
the SuperLink and this client each have their own interpreter, as in real use;
``--in-process`` runs it in this event loop instead, which halves what each side
gets. CPU seconds of both sides are reported per request, so that it is visible
which side pays for authentication.

    .venv/bin/python benchmarks/auth_overhead.py [--seconds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from federation_run import run_benchmark
from process_stats import cpu_seconds

from pollen.cli.local_federation import Child, pollen_command, spawn, wait_for_log
from pollen.errors import PollenError
from pollen.superlink.security import SecurityConfig
from pollen.superlink.server import SuperLinkConfig, open_superlink
from pollen.supernode.fleet_client import FleetClient
from pollen.transport import keygen, keys
from pollen.transport.addresses import Address
from pollen.transport.channels import open_channel
from pollen.transport.request_signing import (
    ClientIdentity,
    RequestAuth,
    open_session,
)
from pollen.transport.tls import ServerTls, channel_credentials

TARGET_RATIO = 0.80
_LISTENING = re.compile(r"Fleet API \S+?:(\d+), Driver API \S+?:(\d+)")


class BenchmarkError(Exception):
    """The benchmark could not measure; the message says why."""


@dataclass(frozen=True)
class Credentials:
    """The files ``keygen.generate`` wrote, by role."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "certificates" / "ca.crt"

    @property
    def tls(self) -> ServerTls:
        certificates = self.root / "certificates"
        return ServerTls(self.ca, certificates / "server.pem", certificates / "server.key")

    @property
    def client_keys(self) -> Path:
        return self.root / "keys" / "client_public_keys.csv"

    @property
    def server_private(self) -> Path:
        return self.root / "keys" / "server_credentials"

    @property
    def server_public(self) -> Path:
        return self.root / "keys" / "server_credentials.pub"

    @property
    def client_private(self) -> Path:
        return self.root / "keys" / "client_credentials_1"


@dataclass
class Measurement:
    requests: int
    seconds: float
    client_cpu: float
    server_cpu: float | None
    """CPU seconds of the SuperLink process (None when unknown or in-process)."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def describe(self, in_process: bool) -> str:
        side = "client + SuperLink" if in_process else "client"
        per_request = f"{side} {self.client_cpu / self.requests * 1e6:.0f} us"
        if self.server_cpu is not None:
            per_request += f", SuperLink {self.server_cpu / self.requests * 1e6:.0f} us"
        return (
            f"{self.rate:8.0f} req/s  ({self.requests} requests in {self.seconds:.2f} s; "
            f"CPU per request: {per_request})"
        )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.asynccontextmanager
async def _superlink_child(
    workdir: Path, credentials: Credentials, authenticate: bool
) -> AsyncIterator[tuple[int, int | None]]:
    """A SuperLink child process; yields its Fleet API port and PID. Stopped on the way out."""
    args = [
        "superlink",
        "--certificates",
        str(credentials.ca),
        str(credentials.tls.cert),
        str(credentials.tls.key),
        "--fleet-api-address",
        "127.0.0.1:0",
        "--driver-api-address",
        "127.0.0.1:0",
        "--database",
        str(workdir / "superlink.db"),
        "--no-dashboard",  # not measured here, and two benchmarks must not share its port
    ]
    if authenticate:
        args += [
            "--require-client-authentication",
            str(credentials.client_keys),
            str(credentials.server_private),
            str(credentials.server_public),
        ]
    child: Child = spawn("superlink", pollen_command(*args), workdir / "logs")
    try:
        match = await asyncio.to_thread(wait_for_log, child, _LISTENING, 30.0)
        yield int(match[1]), child.process.pid
        if child.process.poll() is not None:
            raise BenchmarkError(f"the SuperLink exited with {child.process.returncode}")
    finally:
        await asyncio.to_thread(child.stop)


@contextlib.asynccontextmanager
async def _superlink_in_process(
    workdir: Path, credentials: Credentials, authenticate: bool
) -> AsyncIterator[tuple[int, int | None]]:
    """A SuperLink in this event loop; yields its Fleet API port and no PID."""
    security = SecurityConfig(tls=credentials.tls)
    if authenticate:
        security.client_keys = credentials.client_keys
        security.server_key = keys.load_private_key(credentials.server_private)
    config = SuperLinkConfig(
        database=workdir / "superlink.db",
        fleet_address=Address("127.0.0.1", 0),
        driver_address=Address("127.0.0.1", 0),
        security=security,
    )
    async with open_superlink(config) as superlink:
        yield superlink.fleet_port, None


async def _hammer(fleet: FleetClient, seconds: float, concurrency: int) -> int:
    """Heartbeats in batches of ``concurrency`` until ``seconds`` have passed; how many."""
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        await asyncio.gather(*(fleet.heartbeat() for _ in range(concurrency)))
        done += concurrency
    return done


async def _measure(
    port: int,
    pid: int | None,
    credentials: Credentials,
    authenticate: bool,
    seconds: float,
    warmup: float,
    concurrency: int,
) -> Measurement:
    auth = RequestAuth()
    address = Address("127.0.0.1", port)
    async with open_channel(address, channel_credentials(credentials.ca)) as channel:
        if authenticate:
            identity = ClientIdentity(
                keys.load_private_key(credentials.client_private),
                keys.load_public_key(credentials.server_public),
            )
            await open_session(channel, identity, "fleet", auth.holder)
        fleet = FleetClient(channel, auth if authenticate else None)
        await fleet.register()
        if warmup > 0:
            await _hammer(fleet, warmup, concurrency)
        server_before = cpu_seconds(pid) if pid is not None else None
        client_before = _own_cpu()
        started = time.perf_counter()
        requests = await _hammer(fleet, seconds, concurrency)
        elapsed = time.perf_counter() - started
        client_cpu = _own_cpu() - client_before
        server_after = cpu_seconds(pid) if pid is not None else None
        await fleet.unregister()
    server_cpu = (
        server_after - server_before
        if server_before is not None and server_after is not None
        else None
    )
    return Measurement(requests, elapsed, client_cpu, server_cpu)


async def run_mode(
    workdir: Path, credentials: Credentials, authenticate: bool, args: argparse.Namespace
) -> Measurement:
    start = _superlink_in_process if args.in_process else _superlink_child
    workdir.mkdir(parents=True, exist_ok=True)
    async with start(workdir, credentials, authenticate) as (port, pid):
        return await _measure(
            port, pid, credentials, authenticate, args.seconds, args.warmup, args.concurrency
        )


def benchmark(args: argparse.Namespace, tmp: Path) -> tuple[list[Measurement], list[Measurement]]:
    credentials = Credentials(tmp / "credentials")
    keygen.generate(credentials.root, clients=1, sans=[])
    plain: list[Measurement] = []
    secure: list[Measurement] = []
    for repeat in range(args.repeats):  # alternate, so that drift hits both alike
        for authenticate, results in ((False, plain), (True, secure)):
            name = f"{'auth' if authenticate else 'tls'}-{repeat}"
            results.append(asyncio.run(run_mode(tmp / name, credentials, authenticate, args)))
    return plain, secure


def _best(results: Sequence[Measurement]) -> Measurement:
    return max(results, key=lambda m: m.rate)


def report(
    plain: Sequence[Measurement], secure: Sequence[Measurement], args: argparse.Namespace
) -> str:
    where = "this process" if args.in_process else "a child process"
    lines = [
        f"Fleet API Heartbeat rate, one TLS channel, {args.concurrency} in flight, "
        f"{args.seconds:g} s per run, SuperLink in {where}, {os.cpu_count()} CPUs:",
    ]
    for label, results in (("TLS only        ", plain), ("TLS + client auth", secure)):
        for index, measurement in enumerate(results):
            lines.append(f"  {label} run {index + 1}: {measurement.describe(args.in_process)}")
    best_plain, best_secure = _best(plain), _best(secure)
    ratio = best_secure.rate / best_plain.rate
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    summary = "best of each" if len(plain) > 1 else "one run each"
    lines += [
        f"unauthenticated {best_plain.rate:.0f} req/s, authenticated {best_secure.rate:.0f} "
        f"req/s ({summary}): ratio {ratio:.2f} ({(1 - ratio) * 100:+.0f}% cost)",
        f"target authenticated >= {TARGET_RATIO:.0%} of unauthenticated: {verdict}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured seconds per run (default 3)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight (default 16)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds sent first, not counted (default 0.5)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each mode, alternating; the best of each is compared (default 1)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the SuperLink in this event loop instead of a child process",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--seconds must be > 0, --concurrency and --repeats >= 1, --warmup >= 0")

    def run() -> tuple[list[Measurement], list[Measurement]]:
        try:
            with tempfile.TemporaryDirectory(prefix="pollen-auth-bench-") as tmp:
                return benchmark(args, Path(tmp))
        except grpc.aio.AioRpcError as exc:
            raise BenchmarkError(f"{exc.code().name.lower()}: {exc.details()}") from exc

    return run_benchmark(
        "auth_overhead",
        run,
        lambda results: report(*results, args),
        expected=(PollenError, BenchmarkError, OSError),
    )


if __name__ == "__main__":
    sys.exit(main())
