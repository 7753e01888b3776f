"""Idle-connection flood: what a SuperLink holds when one address opens many connections.

One source address (``--source``, default 127.0.0.2: all of 127.0.0.0/8 is loopback)
opens ``--connections`` TCP connections to the Fleet API port as fast as it can and
sends nothing: no TLS handshake, no gRPC call. Every 100 ms for ``--hold`` seconds
this process reads, from the kernel's socket table (`SocketTable`, sock_diag
netlink), how many of them the SuperLink still holds (established, local port the
Fleet port, remote address the source), and counts the SuperLink process's open
descriptors (``/proc/PID/fd``).

Runs, each on a fresh secure federation (TLS, client authentication) in a temporary
folder:

- Pollen with the default cap (``--max-connections-per-address 64``);
- Pollen with ``--max-connections-per-address 0``: the 5 s handshake timeout alone,
  as before the cap;
- with ``--peer flower``, Flower 1.42's ``flower-superlink`` (TLS, SuperNode
  authentication, one port for all its APIs), started by ``peers/flower.py``.

During each Pollen flood, about 1 s in, a legitimate SuperNode starts from 127.0.0.1
(``apps/noop_client.py``); its join time is the time from its start until the
SuperLink logs it registered. Run with ``--connections 0`` for the join time
without a flood.

    .venv/bin/python benchmarks/connection_flood.py [--connections 1000]
        [--source 127.0.0.2] [--hold 8] [--peer flower]
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import re
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pollen.cli.local_federation import LocalFederation
from pollen.superlink.connection_cap import DEFAULT_CONNECTIONS_PER_ADDRESS
from pollen.superlink.socket_table import SocketTable

APPS = Path(__file__).resolve().parent / "apps"
SAMPLE_SECONDS = 0.1
NODE_START_SECONDS = 1.0
REPORTED_AT = (1.0, 2.0, 5.0)
_REGISTERED = re.compile(rb"node \d+ registered from")


@dataclass
class Sample:
    seconds: float  # since the flood began
    held: int
    descriptors: int


@dataclass
class Outcome:
    run: str
    opened: int
    open_seconds: float
    descriptors_before: int
    samples: list[Sample] = field(default_factory=list)
    node_join: str = "not measured"


# --------------------------------------------------------------------------- the flood


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_idle(source: str, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections from ``source`` to 127.0.0.1:``port``, not waited for
    (non-blocking connects: the kernel completes them), never written to."""
    connections: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            connections.append(sock)
            sock.bind((source, 0))
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, f"connecting to 127.0.0.1:{port}: {os.strerror(code)}")
    except BaseException:
        close_all(connections)
        raise
    return connections


def close_all(connections: list[socket.socket]) -> None:
    for sock in connections:
        sock.close()
    connections.clear()


def descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class HeldCounter:
    """Counts the connections from one address that a listening port still holds."""

    def __init__(self, port: int, source: str) -> None:
        self.table = SocketTable()
        self.port = port
        self.families = self.table.listening([port])
        self.source = socket.inet_aton(source)

    def held(self) -> int:
        connections = self.table.established([self.port], self.families)
        return sum(1 for c in connections if c.address == self.source)

    def close(self) -> None:
        self.table.close()


def flood(
    run: str,
    args: argparse.Namespace,
    port: int,
    pid: int,
    start_node: Callable[[], Callable[[], bool]] | None,
) -> Outcome:
    """Flood ``port``, sample for ``--hold`` seconds; ``start_node`` starts a node and
    returns a check of whether it has joined."""
    counter = HeldCounter(port, args.source)
    before = descriptors(pid)
    started = time.monotonic()
    connections = open_idle(args.source, port, args.connections)
    outcome = Outcome(run, len(connections), time.monotonic() - started, before)
    joined: Callable[[], bool] | None = None
    node_started = 0.0
    try:
        while (now := time.monotonic() - started) < args.hold:
            outcome.samples.append(Sample(now, counter.held(), descriptors(pid)))
            if start_node is not None and joined is None and now >= NODE_START_SECONDS:
                node_started = time.monotonic()
                joined = start_node()
                outcome.node_join = "did not join within hold"
            elif joined is not None and outcome.node_join.startswith("did not") and joined():
                outcome.node_join = f"{time.monotonic() - node_started:.2f} s"
            time.sleep(SAMPLE_SECONDS)
    finally:
        close_all(connections)
        counter.close()
    return outcome


# --------------------------------------------------------------------------- the SuperLinks


def pollen_run(args: argparse.Namespace, cap: int) -> Outcome:
    run = f"Pollen cap {cap}" if cap else "Pollen no cap"
    with tempfile.TemporaryDirectory(prefix="pollen-flood-") as temporary:
        federation = LocalFederation(Path(temporary), clients=1)
        try:
            federation.start_superlink("--max-connections-per-address", str(cap))
            assert federation.superlink is not None
            log = federation.superlink.log_path

            def start_node() -> Callable[[], bool]:
                federation.start_supernode("noop_client:app", APPS)
                return lambda: _REGISTERED.search(log.read_bytes()) is not None

            return flood(
                run, args, federation.fleet_port, federation.superlink.process.pid, start_node
            )
        finally:
            federation.stop()


def flower_run(args: argparse.Namespace) -> Outcome:
    from peers.flower import flower_federation

    with flower_federation(nodes=0) as federation:
        link = federation.processes[0]  # flower-superlink, started first
        argv = link.args
        assert isinstance(argv, list)
        port = int(argv[argv.index("--port") + 1])
        return flood("Flower 1.42", args, port, link.pid, None)


# --------------------------------------------------------------------------- the report


def held_at(samples: list[Sample], seconds: float) -> str:
    after = [s for s in samples if s.seconds >= seconds]
    return str(after[0].held) if after else "-"


def time_to_cap(samples: list[Sample], cap: int) -> str:
    """The first sample after the peak at which at most ``cap`` connections were held."""
    if not samples:
        return "-"
    peak = max(range(len(samples)), key=lambda i: samples[i].held)
    for sample in samples[peak:]:
        if sample.held <= cap:
            return f"{sample.seconds:.1f} s"
    return "not within hold"


def report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    cap = DEFAULT_CONNECTIONS_PER_ADDRESS
    header = [
        "run",
        "opened (s)",
        "peak held",
        *(f"held at {t:g} s" for t in REPORTED_AT),
        f"held <= {cap} at",
        "descriptors before / peak",
        "node join",
    ]
    rows = [
        [
            o.run,
            f"{o.opened} ({o.open_seconds:.2f})",
            str(max((s.held for s in o.samples), default=0)),
            *(held_at(o.samples, t) for t in REPORTED_AT),
            time_to_cap(o.samples, cap),
            f"{o.descriptors_before} / {max((s.descriptors for s in o.samples), default=0)}",
            o.node_join,
        ]
        for o in outcomes
    ]
    print(
        f"\n{args.connections} idle connections from {args.source}, held {args.hold:g} s, "
        f"sampled every {SAMPLE_SECONDS:g} s"
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- the command


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("--hold", type=float, default=8.0)
    parser.add_argument("--peer", choices=["flower"], default=None)
    args = parser.parse_args(argv)
    if args.connections < 0:
        parser.error(f"--connections must be >= 0, got {args.connections}")
    if args.hold <= 0:
        parser.error(f"--hold must be > 0 seconds, got {args.hold:g}")
    try:
        loopback = ipaddress.IPv4Address(args.source).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        parser.error(f"--source must be an IPv4 loopback address (127.x.y.z), got {args.source}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    limit = raise_descriptor_limit()
    if args.connections + 64 > limit:
        print(
            f"--connections {args.connections} needs more descriptors than this process's "
            f"hard limit {limit}; give fewer connections or raise the limit (ulimit -Hn)",
            file=sys.stderr,
        )
        return 2
    outcomes = [pollen_run(args, DEFAULT_CONNECTIONS_PER_ADDRESS), pollen_run(args, 0)]
    if args.peer == "flower":
        outcomes.append(flower_run(args))
    report(outcomes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
