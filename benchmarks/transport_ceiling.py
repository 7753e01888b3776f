"""Transport ceiling: the highest effective throughput this machine allows right now.

Pollen's large-model rounds are bound by the CPU that moving bytes costs, not by
waiting. This script measures that cost without Pollen's own work: 1 MiB
`BlobChunk` messages (Pollen's codec, channel options and TLS) streamed over
loopback between this process and a child server, each way, reading both
processes' CPU seconds, plus BLAKE3 hashing in this process. From these
per-gigabyte costs follows the ceiling of the throughput benchmark's workload.

Per round, with N nodes and a model of M bytes, (1 + 3N) M bytes cross a TLS
connection (ServerApp to SuperLink, SuperLink to each node, each node to
SuperLink, SuperLink to ServerApp) and as many are hashed (the SuperLink checks
each upload, each receiver its download). Effective throughput is 2 N M per
round, so on C cores no relay through a SuperLink can pass

    ceiling = 2 N C / ((1 + 3N) (send + receive + hash))   [GB/s, costs in CPU-s/GB]

and that only if every core is busy all the time with nothing but those bytes:
no copy into a buffer, no disk, no Python. The figure moves with the machine
(this VM's memory bandwidth varies by +-20% from one minute to the next).

    .venv/bin/python benchmarks/transport_ceiling.py [--gigabytes 1] [--nodes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from federation_run import run_benchmark

from pollen.records.content_address import new_hasher
from pollen.transport.addresses import Address
from pollen.transport.blob_stream import CHUNK_SIZE
from pollen.transport.channels import bind, new_server, open_channel
from pollen.transport.chunk_codec import as_is, encode_chunk
from pollen.transport.keygen import tls_files
from pollen.transport.tls import ServerTls, channel_credentials

GB = 1 << 30
"""Sizes are binary, as in the other benchmarks: a GB is 1024 MB of 1 MiB."""
_SERVICE = "pollen.bench.Stream"


@dataclass
class TransportCost:
    """CPU seconds per gigabyte moved (median of the repeats) and the cores there are."""

    send: float
    receive: float
    hash: float
    cores: int

    def ceiling_mb_per_s(self, nodes: int) -> float:
        per_round = (1 + 3 * nodes) * (self.send + self.receive + self.hash)
        return 2 * nodes * self.cores / per_round * 1024

    def describe(self) -> str:
        return (
            f"gRPC + TLS over loopback costs {self.send:.2f} CPU-s/GB to send, "
            f"{self.receive:.2f} to receive, BLAKE3 {self.hash:.2f} to hash; {self.cores} cores"
        )


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _write_credentials(folder: Path) -> None:
    for name, (content, _private) in tls_files(["127.0.0.1"]).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


async def _serve(folder: Path, total: int) -> None:
    """The child: stream ``total`` bytes each way on request; report CPU on "cpu" lines."""
    chunk = encode_chunk(os.urandom(CHUNK_SIZE), offset=0)

    async def down(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        for _ in range(total // CHUNK_SIZE):
            yield chunk

    async def up(messages: AsyncIterator[bytes], _context: Any) -> bytes:
        async for _ in messages:
            pass
        return b""

    server = new_server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                _SERVICE,
                {
                    "Down": grpc.unary_stream_rpc_method_handler(down, as_is, as_is),
                    "Up": grpc.stream_unary_rpc_method_handler(up, as_is, as_is),
                },
            )
        ]
    )
    tls = ServerTls(*(folder / "certificates" / n for n in ("ca.crt", "server.pem", "server.key")))
    port = bind(server, Address("127.0.0.1", 0), "transport ceiling", tls.credentials([]))
    await server.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "cpu":
            print(_cpu(), flush=True)
    await server.stop(None)


class _Peer:
    """The child server process, asked for its CPU seconds between transfers."""

    def __init__(self, folder: Path, total: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(folder), "--bytes", str(total)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in, self._out = self.process.stdin, self.process.stdout
        self.port = int(self._out.readline())

    def cpu(self) -> float:
        self._in.write("cpu\n")
        self._in.flush()
        return float(self._out.readline())

    def stop(self) -> None:
        self._in.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _transfers(
    peer: _Peer, folder: Path, total: int, repeats: int
) -> tuple[list[float], list[float]]:
    """(send costs, receive costs) in CPU-s/GB: this process and the peer, each way."""
    channel = open_channel(
        Address("127.0.0.1", peer.port), channel_credentials(folder / "certificates" / "ca.crt")
    )
    down = channel.unary_stream(f"/{_SERVICE}/Down", as_is, as_is)
    up = channel.stream_unary(f"/{_SERVICE}/Up", as_is, as_is)
    chunk = encode_chunk(os.urandom(CHUNK_SIZE), offset=0)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(total // CHUNK_SIZE):
            yield chunk

    sends: list[float] = []
    receives: list[float] = []
    moved = total // CHUNK_SIZE * CHUNK_SIZE / GB
    try:
        await up(chunks())  # the connection and both sides' buffers warm up first
        for _ in range(repeats):
            mine, theirs = _cpu(), peer.cpu()
            async for _message in down(b""):
                pass
            receives.append((_cpu() - mine) / moved)
            sends.append((peer.cpu() - theirs) / moved)
            mine, theirs = _cpu(), peer.cpu()
            await up(chunks())
            sends.append((_cpu() - mine) / moved)
            receives.append((peer.cpu() - theirs) / moved)
    finally:
        await channel.close()
    return sends, receives


def _hash_cost(total: int) -> float:
    data = os.urandom(64 * 1024 * 1024)
    passes = max(1, total // len(data))
    started = time.process_time()
    for _ in range(passes):
        new_hasher().update(data)
    return (time.process_time() - started) / (passes * len(data) / GB)


def measure_transport(gigabytes: float = 1.0, repeats: int = 3) -> TransportCost:
    total = int(gigabytes * GB)
    with tempfile.TemporaryDirectory(prefix="pollen-ceiling-") as tmp:
        folder = Path(tmp)
        _write_credentials(folder)
        peer = _Peer(folder, total)
        try:
            sends, receives = asyncio.run(_transfers(peer, folder, total, repeats))
        finally:
            peer.stop()
    return TransportCost(
        statistics.median(sends),
        statistics.median(receives),
        _hash_cost(total),
        len(os.sched_getaffinity(0)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.0, help="moved per transfer")
    parser.add_argument("--repeats", type=int, default=3, help="transfers each way")
    parser.add_argument("--nodes", type=int, default=2, help="nodes of the workload")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        asyncio.run(_serve(args.serve, args.bytes))
        return 0

    def report(cost: TransportCost) -> str:
        return (
            f"transport ceiling, {args.nodes} nodes: "
            f"{cost.ceiling_mb_per_s(args.nodes):.0f} MB/s effective\n  {cost.describe()}"
        )

    return run_benchmark(
        "transport_ceiling", lambda: measure_transport(args.gigabytes, args.repeats), report
    )


if __name__ == "__main__":
    sys.exit(main())
