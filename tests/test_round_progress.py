"""The live progress of a run: what the round loop reports, and the terminal line that shows it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.server import ServerApp, ServerConfig
from pollen.server.round_progress import Phase, RoundProgress
from pollen.server.run import ServerAppConfig, run_on_grid
from pollen.server.strategy import FedAvg
from pollen.simulation import InProcessGrid
from pollen.transport.addresses import Address


class Recorded(RoundProgress):
    """Every call the round loop makes, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def phase_started(self, phase: Phase) -> None:
        self.events.append(("started", phase))

    def tasks_finished(self, ok: int, failed: int) -> None:
        self.events.append(("finished", ok, failed))

    def phase_ended(self, ok: int, failed: int) -> None:
        self.events.append(("ended", ok, failed))


class BrokenFirstNode(NumPyClient):
    """Adds one to the model; the node of partition 0 fails every fit."""

    def __init__(self, context: Context) -> None:
        self.partition = int(context.node_config["partition-id"])

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        if self.partition == 0:
            raise ValueError("this partition is broken")
        return [p + 1 for p in parameters], 1, {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.0, 1, {}


def run_with_progress(tmp_path: Path, num_nodes: int, num_rounds: int) -> Recorded:
    progress = Recorded()
    app = ServerApp(
        config=ServerConfig(num_rounds=num_rounds, seed=1),
        strategy=FedAvg(
            initial_parameters=[np.zeros(2, np.float32)], min_available_clients=num_nodes
        ),
    )
    grid = InProcessGrid(ClientApp(client_fn=BrokenFirstNode), num_nodes)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path, progress=progress)
    asyncio.run(run_on_grid(app, config, grid))
    return progress


def test_the_round_loop_reports_each_phases_tasks_as_they_finish(tmp_path: Path) -> None:
    progress = run_with_progress(tmp_path, num_nodes=5, num_rounds=2)

    phases = [e[1] for e in progress.events if e[0] == "started"]
    assert phases == [
        Phase(1, 2, "fit", 5),
        Phase(1, 2, "evaluate", 5),
        Phase(2, 2, "fit", 5),
        Phase(2, 2, "evaluate", 5),
    ]
    ends = [e[1:] for e in progress.events if e[0] == "ended"]
    assert ends == [(4, 1), (5, 0), (4, 1), (5, 0)]  # node 0's fit fails each round
    first_fit = progress.events[1 : progress.events.index(("ended", 4, 1))]
    oks = [ok for _, ok, _ in first_fit]
    assert oks == [1, 2, 3, 4]  # one report per result, counted as it arrives
    assert all(ok + failed <= 5 for _, ok, failed in first_fit)


def test_by_default_a_run_reports_nothing_and_still_runs(tmp_path: Path) -> None:
    app = ServerApp(
        config=ServerConfig(num_rounds=1),
        strategy=FedAvg(initial_parameters=[np.zeros(2, np.float32)], min_available_clients=2),
    )
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)
    grid = InProcessGrid(ClientApp(client_fn=BrokenFirstNode), 3)

    outcome, _ = asyncio.run(run_on_grid(app, config, grid))

    assert outcome.history.rounds[0].fit_results == 2
