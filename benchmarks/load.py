"""Load: N authenticated SuperNodes against one SuperLink (issue 6).

Starts a SuperLink as a child process (127.0.0.1, OS-chosen ports) with TLS and
client authentication, with development credentials for N nodes generated in the
work folder (``pollen.transport.keygen``; reused when they are already there for N
nodes). N lightweight simulated SuperNodes run in a few worker processes (many
nodes per process, each node its own session and, by default, its own TLS
connection): each joins (``open_session``), registers, subscribes to its task
stream, heartbeats every heartbeat interval and answers each fit task at once by
downloading the model blob and uploading the same bytes back.

Measured, and compared with issue 6's targets:

1. the time until all N nodes are connected (counted in the SuperLink's log);
2. the SuperLink's CPU use while N nodes are connected and heartbeating
   (``/proc/PID/stat`` over ``--cpu-seconds``), target < 50% of one core;
3. one FedAvg round on all N nodes with a tiny model, run in this process against
   the Driver API, target <= 5 s;
4. with ``--soak SECONDS``, the SuperLink's RSS sampled every 10 s, target flat
   within +-5%.

With ``--dashboard``, (2) is measured ``--pairs`` times more each way, alternating:
without, then with the dashboard open in a headless Chromium (the live federation
page, and the run's page once there is one) and ``/metrics`` and the federation page
read every second (`dashboard_watch`); target: the SuperLink's CPU within +5
percentage points (issue 17). The round (3) then runs again with them watching.

    .venv/bin/python benchmarks/load.py [--nodes 1000] [--workers 4]
        [--heartbeat-interval 5] [--soak 0] [--dashboard [--pairs 2]] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import queue
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from dashboard_watch import watched
from federation_run import run_benchmark, run_in_process
from process_stats import cpu_seconds, rss_mib

from pollen import FedAvg, ServerApp, ServerConfig
from pollen.cli.local_federation import LocalFederation
from pollen.errors import RunError
from pollen.records import fit_evaluate
from pollen.records.messages import EVALUATE, TRAIN, BlobRef, Message, Records
from pollen.server.driver import DriverClient
from pollen.supernode.fleet_client import FleetClient
from pollen.transport import keys
from pollen.transport.channels import CLIENT_OPTIONS
from pollen.transport.keygen import generate
from pollen.transport.request_signing import ClientIdentity, RequestAuth, open_session
from pollen.transport.tls import channel_credentials

CPU_TARGET = 50.0  # percent of one core, with N nodes connected and heartbeating
ROUND_TARGET = 5.0  # seconds for one round on all N nodes
RSS_TOLERANCE = 0.05  # soak: RSS within +-5% of its first sample
RSS_SAMPLE_SECONDS = 10.0
DASHBOARD_CPU_TARGET = 5.0  # percentage points more SuperLink CPU with the dashboard watched
CONNECT_TIMEOUT = 300.0
READY_TIMEOUT = 120.0
JOIN_CONCURRENCY = 32  # joins in flight per worker process
JOIN_ATTEMPTS = 5

_CONNECTED = re.compile(rb"node \d+ connected")
_DISCONNECTED = re.compile(rb"node \d+ disconnected")

# The client options of pollen.transport.channels, plus a channel-local subchannel
# pool: without it, gRPC would let channels with equal arguments share one connection.
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *CLIENT_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
]


# --------------------------------------------------------------------------- workers


@dataclass
class WorkerPlan:
    """What one worker process simulates."""

    index: int
    node_indices: list[int]  # 1-based client key numbers
    fleet_port: int
    ca: Path
    keys_dir: Path
    nodes_per_channel: int
    seed: int


@dataclass
class _Counters:
    joined: int = 0
    failed: int = 0
    tasks: int = 0
    heartbeat_errors: int = 0
    errors: list[str] = field(default_factory=list)
    timings: list[tuple[float, float]] = field(default_factory=list)  # fit: received, answered


async def _heartbeats(fleet: FleetClient, counters: _Counters, rng: random.Random) -> None:
    # Real nodes start at different times: spread the first beat over one interval.
    await asyncio.sleep(rng.uniform(0, fleet.heartbeat_interval))
    while True:
        try:
            await fleet.heartbeat()
        except grpc.aio.AioRpcError as exc:
            counters.heartbeat_errors += 1
            if len(counters.errors) < 5:
                counters.errors.append(f"heartbeat: {exc.code().name} {exc.details()}")
        await asyncio.sleep(fleet.heartbeat_interval)


async def _answer(fleet: FleetClient, message: Message) -> None:
    """Train: hand the received model back unchanged; evaluate: a small reply."""
    counted = {fit_evaluate.METRICS: {fit_evaluate.NUM_EXAMPLES: 1}}
    reply = message.reply(Records(metrics=counted))
    model = fit_evaluate.model_of(message.content)
    if message.message_type == TRAIN and model is not None:
        blob = await fleet.download_blob(model)
        stored = await fleet.upload_blob(blob, model.digest, message.run_id)
        reply.content.arrays[fit_evaluate.ARRAYS] = stored
    elif message.message_type == EVALUATE:
        reply.content.metrics[fit_evaluate.EVALUATION] = {fit_evaluate.LOSS: 0.0}
    else:
        reply.error = f"the load benchmark's nodes do not answer {message.message_type}"
        reply.content = Records()
    await fleet.push_reply(reply)


async def _node(
    channel: grpc.aio.Channel,
    identity: ClientIdentity,
    joins: asyncio.Semaphore,
    counters: _Counters,
    rng: random.Random,
) -> None:
    """One simulated SuperNode: join, register, heartbeat, answer tasks until cancelled."""
    auth = RequestAuth()
    fleet = FleetClient(channel, auth)
    for attempt in range(JOIN_ATTEMPTS):
        try:
            async with joins:
                await open_session(channel, identity, "fleet", auth.holder)
                await fleet.register()
            break
        except grpc.aio.AioRpcError as exc:
            if attempt == JOIN_ATTEMPTS - 1:
                counters.failed += 1
                counters.errors.append(f"join: {exc.code().name} {exc.details()}")
                return
            await asyncio.sleep(0.5 * 2**attempt)
    counters.joined += 1
    heartbeat = asyncio.create_task(_heartbeats(fleet, counters, rng))
    try:
        async for message in fleet.instructions():
            counters.tasks += 1
            received = time.time()
            await _answer(fleet, message)
            if message.message_type == TRAIN:
                counters.timings.append((received, time.time()))
    except grpc.aio.AioRpcError as exc:
        if len(counters.errors) < 5:
            counters.errors.append(f"stream: {exc.code().name} {exc.details()}")
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


async def _wait_event(event: MpEvent, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not event.is_set():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _worker(plan: WorkerPlan, go: MpEvent, stop: MpEvent, events: Any) -> None:
    rng = random.Random(plan.seed)
    credentials = channel_credentials(plan.ca)
    identities = [
        ClientIdentity(keys.load_private_key(plan.keys_dir / f"client_credentials_{i}"))
        for i in plan.node_indices
    ]
    target = f"127.0.0.1:{plan.fleet_port}"
    channels = [
        grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        for _ in range(0, len(identities), plan.nodes_per_channel)
    ]
    counters = _Counters()
    events.put(("ready", plan.index, len(identities)))
    if not await _wait_event(go, READY_TIMEOUT):
        return
    joins = asyncio.Semaphore(JOIN_CONCURRENCY)
    nodes = [
        asyncio.create_task(
            _node(channels[n // plan.nodes_per_channel], identity, joins, counters, rng)
        )
        for n, identity in enumerate(identities)
    ]
    reported: tuple[int, ...] = ()
    try:
        while not stop.is_set():
            now = (counters.joined, counters.failed, counters.tasks, counters.heartbeat_errors)
            if (*now, len(counters.timings)) != reported:
                events.put(
                    ("progress", plan.index, *now, list(counters.errors), list(counters.timings))
                )
                reported = (*now, len(counters.timings))
            await asyncio.sleep(0.2)
    finally:
        for task in nodes:
            task.cancel()
        await asyncio.gather(*nodes, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


def worker_main(plan: WorkerPlan, go: MpEvent, stop: MpEvent, events: Any) -> None:
    """A worker process's entry point (spawned: imported afresh, no inherited gRPC state)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker(plan, go, stop, events))


# --------------------------------------------------------------------------- the SuperLink side


def ensure_credentials(directory: Path, nodes: int) -> float:
    """Credentials for ``nodes`` clients in ``directory``; seconds spent generating (0: reused)."""
    csv = directory / "keys" / "client_public_keys.csv"
    if csv.exists() and csv.read_bytes().count(b"ecdsa-") == nodes:
        return 0.0
    started = time.perf_counter()
    generate(directory, nodes, [], force=True)
    return time.perf_counter() - started


def count_log(federation: LocalFederation, pattern: re.Pattern[bytes]) -> int:
    assert federation.superlink is not None
    return len(pattern.findall(federation.superlink.log_path.read_bytes()))


def tiny_model() -> list[np.ndarray[Any, Any]]:
    return [np.zeros((4, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]


def build_server_app(nodes: int) -> ServerApp:
    return ServerApp(
        config=ServerConfig(num_rounds=1, node_wait_timeout=30.0),
        strategy=FedAvg(
            min_available_clients=nodes,
            min_fit_clients=nodes,
            fraction_evaluate=0.0,
            initial_parameters=tiny_model(),
        ),
    )


@contextlib.contextmanager
def timed_downloads() -> Iterator[list[float]]:
    """Time each `DriverClient.download_arrays` call of this process (the ServerApp
    downloads every fit result, one after the other, before it takes the next)."""
    original = DriverClient.download_arrays
    seconds: list[float] = []

    async def timed(self: DriverClient, ref: BlobRef) -> Any:
        started = time.perf_counter()
        try:
            return await original(self, ref)
        finally:
            seconds.append(time.perf_counter() - started)

    DriverClient.download_arrays = timed  # type: ignore[method-assign]
    try:
        yield seconds
    finally:
        DriverClient.download_arrays = original  # type: ignore[method-assign]


@dataclass
class Figures:
    nodes: int
    workers: int
    nodes_per_channel: int
    heartbeat_interval: float
    keygen_seconds: float
    connect_seconds: float = 0.0
    cpu_percent: float = 0.0
    cpu_window: float = 0.0
    heartbeat_errors: int = 0
    disconnects: int = 0
    round_seconds: float = 0.0
    round_wall_seconds: float = 0.0
    round_cpu: dict[str, float] = field(default_factory=dict)
    round_phases: str = ""
    downloads: tuple[int, float] = (0, 0.0)  # the ServerApp's result downloads: count, seconds
    fit_results: int = 0
    fit_failures: list[str] = field(default_factory=list)
    rss_connected: float = 0.0
    rss_samples: list[float] = field(default_factory=list)
    soak: float = 0.0
    dashboard: Watched | None = None


@dataclass
class Watched:
    """(2) and (3) again, alternating without and with the dashboard watched."""

    cpu_without: list[float] = field(default_factory=list)
    cpu_with: list[float] = field(default_factory=list)
    scrapes: int = 0
    refreshes: int = 0
    browser_cpu: float = 0.0
    round_seconds: float = 0.0
    round_superlink_cpu: float = 0.0
    """SuperLink CPU seconds of the watched round."""


class Workers:
    """The worker processes and what they report."""

    def __init__(self, plans: Sequence[WorkerPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        self.go = context.Event()
        self.stop_event = context.Event()
        self.events: Any = context.Queue()
        self.processes = [
            context.Process(
                target=worker_main,
                args=(plan, self.go, self.stop_event, self.events),
                name=f"load-worker-{plan.index}",
                daemon=True,
            )
            for plan in plans
        ]
        self.progress: dict[int, tuple[Any, ...]] = {}
        self.ready = 0

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if event[0] == "ready":
                self.ready += 1
            elif event[0] == "progress":
                self.progress[event[1]] = tuple(event[2:])

    def check_alive(self) -> None:
        for process in self.processes:
            if process.exitcode is not None:
                raise RunError(f"{process.name} exited with {process.exitcode}")

    def total(self, field_index: int) -> int:
        return sum(int(p[field_index]) for p in self.progress.values())

    def errors(self) -> list[str]:
        return [e for p in self.progress.values() for e in p[4]]

    def timings(self) -> list[tuple[float, float]]:
        return [t for p in self.progress.values() for t in p[5]]

    def stop(self) -> None:
        """Ask the workers to stop, then SIGTERM and SIGKILL by PID whoever is left."""
        self.stop_event.set()
        self.go.set()  # a worker still waiting for the start stops at once too
        # Keep reading their reports meanwhile: a process whose queue is not drained
        # cannot exit (multiprocessing flushes a queue's buffer before exiting).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(p.exitcode is None for p in self._started()):
            self.drain()
            time.sleep(0.05)
        for process in self._started():
            if process.exitcode is None:
                process.terminate()
                process.join(5)
            if process.exitcode is None:
                process.kill()
                process.join(5)
        self.drain()
        self.events.cancel_join_thread()
        self.events.close()

    def _started(self) -> list[Any]:
        return [p for p in self.processes if p.pid is not None]


def _wait(deadline: float, workers: Workers, federation: LocalFederation, what: str) -> None:
    workers.drain()
    workers.check_alive()
    assert federation.superlink is not None
    if federation.superlink.process.poll() is not None:
        raise RunError(f"the SuperLink exited with {federation.superlink.process.returncode}")
    if time.monotonic() > deadline:
        raise RunError(f"timed out waiting for {what}")
    time.sleep(0.1)


def cpu_window(
    args: argparse.Namespace, pid: int, workers: Workers, federation: LocalFederation
) -> tuple[float, float]:
    """The SuperLink's CPU, in percent of one core, over ``--cpu-seconds``; and the window."""
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    deadline = wall_before + args.cpu_seconds
    while time.monotonic() < deadline:
        _wait(deadline + 5, workers, federation, "the CPU window")
    window = time.monotonic() - wall_before
    return 100 * (cpu_seconds(pid) - cpu_before) / window, window


def watch_dashboard(
    args: argparse.Namespace, workdir: Path, federation: LocalFederation, workers: Workers
) -> Watched:
    """The CPU window without and with the dashboard watched, alternating, then the
    round again, watched."""
    assert federation.superlink is not None
    pid = federation.superlink.process.pid
    ca = workdir / "credentials" / "certificates" / "ca.crt"
    figures = Watched()
    for _ in range(args.pairs):
        figures.cpu_without.append(cpu_window(args, pid, workers, federation)[0])
        with watched(federation.dashboard_port, ca, browser=True) as (scraper, browser):
            figures.cpu_with.append(cpu_window(args, pid, workers, federation)[0])
            if len(figures.cpu_with) == args.pairs:  # the last window: a round, watched
                before = cpu_seconds(pid)
                outcome = run_in_process(
                    federation,
                    build_server_app(args.nodes),
                    "load_benchmark",
                    workdir / "runs",
                    timeout=args.round_timeout,
                )
                figures.round_seconds = outcome.history.rounds[0].seconds
                figures.round_superlink_cpu = cpu_seconds(pid) - before
        figures.scrapes += scraper.scrapes
        figures.refreshes += browser.refreshes if browser else 0
        figures.browser_cpu += browser.cpu_seconds if browser else 0.0
    print(
        f"SuperLink CPU without / with the dashboard watched: {figures.cpu_without} / "
        f"{figures.cpu_with} % of one core",
        flush=True,
    )
    return figures


def measure(args: argparse.Namespace, workdir: Path) -> Figures:
    credentials = workdir / "credentials"
    figures = Figures(
        args.nodes,
        args.workers,
        args.nodes_per_channel,
        args.heartbeat_interval,
        ensure_credentials(credentials, args.nodes),
    )
    # LocalFederation finds the credentials in workdir/credentials and starts the
    # SuperLink with TLS and client authentication; a fresh state file each time.
    for name in ("superlink.db", "superlink.db-wal", "superlink.db-shm"):
        (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "superlink.db.blobs", ignore_errors=True)
    federation = LocalFederation(workdir, clients=args.nodes)
    workers: Workers | None = None
    try:
        federation.start_superlink("--heartbeat-interval", str(args.heartbeat_interval))
        assert federation.superlink is not None
        pid = federation.superlink.process.pid
        share = [list(range(1, args.nodes + 1))[w :: args.workers] for w in range(args.workers)]
        plans = [
            WorkerPlan(
                w,
                indices,
                federation.fleet_port,
                credentials / "certificates" / "ca.crt",
                credentials / "keys",
                args.nodes_per_channel,
                seed=w,
            )
            for w, indices in enumerate(share)
            if indices
        ]
        workers = Workers(plans)
        workers.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while workers.ready < len(plans):
            _wait(deadline, workers, federation, "the workers to load their keys")

        # (1) time to connect N nodes: registered and subscribed, per the SuperLink's log
        started = time.monotonic()
        workers.go.set()
        deadline = started + CONNECT_TIMEOUT
        while count_log(federation, _CONNECTED) < args.nodes:
            failed = workers.total(1)
            if failed and failed + workers.total(0) >= args.nodes:
                raise RunError(f"{workers.total(1)} nodes failed to join: {workers.errors()[:3]}")
            _wait(deadline, workers, federation, f"{args.nodes} nodes to connect")
        figures.connect_seconds = time.monotonic() - started
        print(f"{args.nodes} nodes connected in {figures.connect_seconds:.1f} s", flush=True)

        # (2) SuperLink CPU while every node heartbeats; wait one interval first so
        # that the heartbeats (spread over one interval) are all running.
        time.sleep(min(args.heartbeat_interval, 10.0))
        figures.rss_connected = rss_mib(pid)
        figures.cpu_percent, figures.cpu_window = cpu_window(args, pid, workers, federation)
        figures.heartbeat_errors = workers.total(3)
        figures.disconnects = count_log(federation, _DISCONNECTED)
        print(
            f"SuperLink CPU with {args.nodes} nodes heartbeating: {figures.cpu_percent:.1f}% "
            f"of one core over {figures.cpu_window:.0f} s",
            flush=True,
        )

        # (3) one round on all N nodes, the ServerApp in this process
        worker_pids = [p.pid for p in workers.processes if p.pid is not None]
        cpu_before_round = (
            cpu_seconds(pid),
            sum(cpu_seconds(w) for w in worker_pids),
            time.process_time(),
        )
        round_started, round_wall_started = time.monotonic(), time.time()
        with timed_downloads() as downloads:
            outcome = run_in_process(
                federation,
                build_server_app(args.nodes),
                "load_benchmark",
                workdir / "runs",
                timeout=args.round_timeout,
            )
        figures.downloads = (len(downloads), sum(downloads))
        figures.round_wall_seconds = time.monotonic() - round_started
        figures.round_cpu = {
            "SuperLink": cpu_seconds(pid) - cpu_before_round[0],
            "node workers": sum(cpu_seconds(w) for w in worker_pids) - cpu_before_round[1],
            "ServerApp": time.process_time() - cpu_before_round[2],
        }
        record = outcome.history.rounds[0]
        time.sleep(0.5)  # the workers report every 0.2 s
        workers.drain()
        figures.round_phases = phases(workers.timings(), round_wall_started)
        figures.round_seconds = record.seconds
        figures.fit_results = record.fit_results
        figures.fit_failures = list(record.fit_failures)
        print(f"round on {args.nodes} nodes: {record.seconds:.2f} s", flush=True)

        if args.dashboard:
            figures.dashboard = watch_dashboard(args, workdir, federation, workers)

        # (4) soak: RSS every 10 s while the nodes stay connected and heartbeating
        if args.soak > 0:
            started = time.monotonic()
            end = started + args.soak
            next_sample = started
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    figures.rss_samples.append(rss_mib(pid))
                    next_sample += RSS_SAMPLE_SECONDS
                    if next_sample > end + 1e-6:
                        break
                _wait(end + 30, workers, federation, "the soak")
            figures.soak = time.monotonic() - started
            figures.disconnects = count_log(federation, _DISCONNECTED)
            figures.heartbeat_errors = workers.total(3)
    finally:
        if workers is not None:
            workers.stop()
        federation.stop()
    return figures


def phases(timings: list[tuple[float, float]], start: float) -> str:
    """When the fit tasks reached the nodes and when the nodes had answered them."""
    if not timings:
        return "no fit task reached a node"
    received = sorted(t[0] - start for t in timings)
    answered = sorted(t[1] - start for t in timings)
    middle = len(timings) // 2
    return (
        f"seconds after the ServerApp started: tasks reached the nodes from "
        f"{received[0]:.2f} to {received[-1]:.2f} (median {received[middle]:.2f}); "
        f"nodes had answered from {answered[0]:.2f} to {answered[-1]:.2f} "
        f"(median {answered[middle]:.2f})"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(f: Figures) -> str:
    keygen = f"generated in {f.keygen_seconds:.1f} s" if f.keygen_seconds else "reused from workdir"
    lines = [
        f"load: {f.nodes} authenticated SuperNodes (TLS + client authentication, keys "
        f"{keygen}) in {f.workers} worker processes, {f.nodes_per_channel} node(s) per TLS "
        f"connection, heartbeat every {f.heartbeat_interval:g} s",
        f"(1) connected: {f.nodes} nodes in {f.connect_seconds:.1f} s "
        f"({f.nodes / f.connect_seconds:.0f} joins/s)",
        f"(2) SuperLink CPU, {f.nodes} nodes connected and heartbeating: "
        f"{f.cpu_percent:.1f}% of one core over {f.cpu_window:.0f} s "
        f"(RSS {f.rss_connected:.0f} MiB; {f.heartbeat_errors} heartbeat errors, "
        f"{f.disconnects} disconnects)",
        f"(3) one round, {f.nodes} nodes, tiny model, fit only: {f.round_seconds:.2f} s "
        f"(run start to end {f.round_wall_seconds:.2f} s), {f.fit_results} results, "
        f"{len(f.fit_failures)} failures",
    ]
    if f.round_cpu:
        spent = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in f.round_cpu.items())
        lines.append(f"    CPU during the round (2 cores shared by all): {spent}")
    if f.round_phases:
        lines.append(f"    {f.round_phases}")
    if f.downloads[0]:
        lines.append(
            f"    the ServerApp downloaded {f.downloads[0]} result blobs one after the other: "
            f"{f.downloads[1]:.2f} s in all ({1000 * f.downloads[1] / f.downloads[0]:.2f} ms each)"
        )
    if f.fit_failures:
        lines.append(f"    first failures: {'; '.join(f.fit_failures[:3])}")
    lines += [
        f"target {f.nodes} nodes heartbeating with SuperLink < {CPU_TARGET:g}% of one core: "
        f"{_verdict(f.cpu_percent < CPU_TARGET and f.disconnects == 0)}"
        + ("" if f.nodes >= 1000 else " (at fewer than the 1000 nodes of the target)"),
        f"target round <= {ROUND_TARGET:g} s: "
        f"{_verdict(f.round_seconds <= ROUND_TARGET and f.fit_results == f.nodes)}",
    ]
    if f.dashboard is not None:
        lines += dashboard_lines(f, f.dashboard)
    if f.rss_samples:
        first, low, high = f.rss_samples[0], min(f.rss_samples), max(f.rss_samples)
        drift = max(abs(low - first), abs(high - first)) / first
        lines += [
            f"(4) soak {f.soak:.0f} s: SuperLink RSS min {low:.1f} MiB, max {high:.1f} MiB, "
            f"first {first:.1f}, last {f.rss_samples[-1]:.1f} MiB "
            f"({len(f.rss_samples)} samples every {RSS_SAMPLE_SECONDS:g} s; "
            f"{f.disconnects} disconnects in all)",
            f"target RSS flat within +-{RSS_TOLERANCE:.0%}: "
            f"{_verdict(drift <= RSS_TOLERANCE)} (largest drift {drift:.1%})",
        ]
    return "\n".join(lines)


def dashboard_lines(f: Figures, d: Watched) -> list[str]:
    without, with_ = (sum(cpu) / len(cpu) for cpu in (d.cpu_without, d.cpu_with))
    more = with_ - without
    windows = ", ".join(
        f"{a:.1f} / {b:.1f}" for a, b in zip(d.cpu_without, d.cpu_with, strict=True)
    )
    superlink_round = f.round_cpu.get("SuperLink", 0.0)
    return [
        f"(2') SuperLink CPU, {f.nodes} nodes heartbeating, without / with the dashboard "
        f"open in Chromium and /metrics and the federation page read every second, "
        f"{len(d.cpu_with)} windows of {f.cpu_window:.0f} s each way, alternating: "
        f"{windows} % of one core; mean {without:.1f} / {with_:.1f} % ({more:+.1f} points; "
        f"{d.scrapes} scrapes, {d.refreshes} live refreshes, Chromium {d.browser_cpu:.1f} CPU s)",
        f"target SuperLink CPU within +{DASHBOARD_CPU_TARGET:g} points with the dashboard: "
        f"{_verdict(more <= DASHBOARD_CPU_TARGET)}",
        f"(3') the round again, watched: {d.round_seconds:.2f} s (unwatched "
        f"{f.round_seconds:.2f} s); SuperLink CPU {d.round_superlink_cpu:.2f} s "
        f"(unwatched {superlink_round:.2f} s)",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="SuperNodes (default 1000)")
    parser.add_argument(
        "--workers", type=int, default=4, help="processes simulating them (default 4)"
    )
    parser.add_argument(
        "--nodes-per-channel",
        type=int,
        default=1,
        help="nodes sharing one TLS connection (default 1: each node its own, as in reality)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=5.0,
        help="passed to the SuperLink as --heartbeat-interval (default 5)",
    )
    parser.add_argument(
        "--cpu-seconds",
        type=float,
        default=20.0,
        help="window over which the SuperLink's CPU use is measured (default 20)",
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=120.0,
        help="seconds the round may take before the benchmark gives up (default 120)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        help="then sample the SuperLink's RSS every 10 s for this many seconds (default 0)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep credentials (reused), state and logs here (default: a temporary folder)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="then measure the CPU again, alternating without and with the dashboard open "
        "in a headless Chromium (/usr/bin/chromium) and scraped every second",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="with --dashboard: CPU windows each way (default 2)",
    )
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    if args.nodes < 1 or args.workers < 1 or args.nodes_per_channel < 1:
        parser.error("--nodes, --workers and --nodes-per-channel must be >= 1")
    if args.heartbeat_interval < 0.1 or args.cpu_seconds <= 0 or args.soak < 0:
        parser.error("--heartbeat-interval must be >= 0.1, --cpu-seconds > 0, --soak >= 0")

    def run() -> Figures:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            return measure(args, args.workdir.resolve())
        with tempfile.TemporaryDirectory(prefix="pollen-load-") as tmp:
            return measure(args, Path(tmp))

    return run_benchmark("load", run, report)


if __name__ == "__main__":
    sys.exit(main())
