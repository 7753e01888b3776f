"""What the large-model benchmarks share: one secure federation moving a big model.

A SuperLink, ``nodes`` SuperNodes and the ServerApp all run as child processes
with TLS and client authentication (credentials generated in the work folder).
The ClientApp (``apps/perturb_client.py``) hands the model back with one element
grown and one set from the node's id, so every result is a distinct blob, as in
real training. Each process's
peak RSS is read from ``/proc/PID/status`` (VmHWM) and CPU seconds from
``/proc/PID/stat``; round times come from the run's ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from federation_run import wait_until_connected
from process_stats import cpu_seconds, peak_rss

from pollen.cli.local_federation import Child, LocalFederation, spawn
from pollen.errors import RunError

APPS = Path(__file__).resolve().parent / "apps"
MB = 1024 * 1024


@dataclass
class LargeModelRun:
    model_mb: int
    nodes: int
    round_seconds: list[float]
    peak_rss: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process spent while the ServerApp ran (its start-up included)."""

    def cpu_per_round(self) -> str:
        parts = [
            f"{name} {seconds / len(self.round_seconds):.2f}"
            for name, seconds in self.cpu_seconds.items()
        ]
        total = sum(self.cpu_seconds.values()) / len(self.round_seconds)
        return f"CPU s per round: {', '.join(parts)}; all {total:.2f}"

    @property
    def effective_mb_per_s(self) -> float:
        """Model bytes moved per round (to every node and back) over the median round."""
        ordered = sorted(self.round_seconds)
        median = ordered[len(ordered) // 2]
        return 2 * self.nodes * self.model_mb / median


def _wait_for_serverapp(
    server: Child, federation: LocalFederation, timeout: float
) -> tuple[int, float]:
    """Wait for the ServerApp, following its peak memory and CPU time; RunError if anything
    dies."""
    deadline = time.monotonic() + timeout
    peak = 0
    cpu = 0.0
    while server.process.poll() is None:
        peak = max(peak, peak_rss(server.process.pid))
        cpu = max(cpu, cpu_seconds(server.process.pid))
        for child in [*federation.nodes, federation.superlink]:
            if child is not None and child.process.poll() is not None:
                raise RunError(f"{child.name} exited with {child.process.returncode}")
        if time.monotonic() > deadline:
            raise RunError(f"the run did not finish within {timeout:g} s")
        time.sleep(0.02)
    if server.process.returncode != 0:
        raise RunError(
            f"the ServerApp exited with {server.process.returncode}: "
            f"{server.log().strip().splitlines()[-1:]}"
        )
    return peak, cpu


def run_large_model(
    model_mb: int,
    nodes: int,
    rounds: int,
    workdir: Path,
    timeout: float = 1800,
    app: str = "large_server:app",
) -> LargeModelRun:
    """One run of the ServerApp ``app`` (a module of ``apps/``) on a fresh federation."""
    federation = LocalFederation(workdir / "federation", clients=nodes)
    try:
        federation.start_superlink()
        for _ in range(nodes):
            federation.start_supernode("perturb_client:app", APPS)
        wait_until_connected(federation, timeout=60)
        os.environ.update(
            POLLEN_BENCH_MODEL_MB=str(model_mb),
            POLLEN_BENCH_NODES=str(nodes),
            POLLEN_BENCH_ROUNDS=str(rounds),
        )
        others = [c for c in [federation.superlink, *federation.nodes] if c is not None]
        cpu_before = {c.name: cpu_seconds(c.process.pid) for c in others}
        server = spawn("serverapp", federation.serverapp_command(app, APPS), federation.log_dir)
        try:
            server_peak, server_cpu = _wait_for_serverapp(server, federation, timeout)
        finally:
            server.stop()
        cpu = {"serverapp": server_cpu}
        cpu.update({c.name: cpu_seconds(c.process.pid) - cpu_before[c.name] for c in others})
        peaks = {"serverapp": server_peak}
        peaks.update({c.name: peak_rss(c.process.pid) for c in others})
        [metrics] = (federation.workdir / "runs").glob("*/metrics.json")
        seconds = [r["seconds"] for r in json.loads(metrics.read_text())["rounds"]]
        return LargeModelRun(model_mb, nodes, seconds, peaks, cpu)
    finally:
        federation.stop()


def free_disk_check(workdir: Path, model_mb: int, nodes: int) -> None:
    """The SuperLink keeps the model and every result of a round on disk."""
    need = (1 + nodes) * model_mb * MB * 1.2
    free = os.statvfs(workdir).f_bavail * os.statvfs(workdir).f_frsize
    if free < need:
        raise RunError(
            f"{model_mb} MB with {nodes} nodes needs about {need / 1e9:.1f} GB of "
            f"disk in {workdir}, {free / 1e9:.1f} GB free; pass --workdir elsewhere"
        )


__all__ = ["LargeModelRun", "free_disk_check", "run_large_model"]
