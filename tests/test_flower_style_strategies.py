"""Strategies written the way Flower's docs write them run on Pollen, their overrides called."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollen.common import Code, FitRes, Parameters, parameters_to_ndarrays
from pollen.errors import RunError
from pollen.server import ServerApp, ServerConfig
from pollen.server.client_proxy import ClientProxy
from pollen.server.run import ServerAppConfig, run_on_grid
from pollen.server.strategy import FedAdam, FedAvg
from pollen.simulation import InProcessGrid
from pollen.transport.addresses import Address
from tests.test_in_process_grid import client_app

ZEROS = [np.zeros(3, np.float32)]


class SaveModelStrategy(FedAvg):
    """The checkpointing subclass of Flower's docs ("subclass FedAvg, call
    super().aggregate_fit, save the weights with np.savez")."""

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Any]]:
        aggregated_parameters, aggregated_metrics = super().aggregate_fit(
            server_round, results, failures
        )
        if aggregated_parameters is not None:
            aggregated_ndarrays = parameters_to_ndarrays(aggregated_parameters)
            np.savez(f"round-{server_round}-weights.npz", *aggregated_ndarrays)
        return aggregated_parameters, aggregated_metrics


def run(strategy: FedAvg, tmp_path: Path, rounds: int = 3, nodes: int = 3) -> Any:
    app = ServerApp(config=ServerConfig(num_rounds=rounds, seed=1), strategy=strategy)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path / "runs")
    return asyncio.run(run_on_grid(app, config, InProcessGrid(client_app, num_nodes=nodes)))


def test_the_checkpointing_subclass_of_flowers_docs_saves_each_rounds_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    strategy = SaveModelStrategy(
        initial_parameters=ZEROS, min_available_clients=3, fraction_evaluate=0.0
    )

    (outcome, _directory) = run(strategy, tmp_path)

    per_round = (1 * 1 + 2 * 2 + 3 * 3) / (1 + 2 + 3)  # node k adds k, weighted by k
    for server_round in (1, 2, 3):
        saved = np.load(tmp_path / f"round-{server_round}-weights.npz")["arr_0"]
        np.testing.assert_allclose(saved, [server_round * per_round] * 3, rtol=1e-6)
    np.testing.assert_array_equal(saved, outcome.parameters[0])


def test_an_override_gets_flowers_results_and_failures(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Inspecting(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            seen["cids"] = sorted(proxy.cid for proxy, _ in results)
            seen["codes"] = {res.status.code for _, res in results}
            seen["examples"] = sorted(res.num_examples for _, res in results)
            seen["tensors"] = [len(res.parameters.tensors) for _, res in results]
            seen["failures"] = [str(failure) for failure in failures]
            return super().aggregate_fit(server_round, results, failures)

    strategy = Inspecting(initial_parameters=ZEROS, min_available_clients=3)
    grid = InProcessGrid(
        client_app,
        num_nodes=3,
        node_config=lambda i, n: {"partition-id": i, "num-partitions": n, "fail": i == 2},
    )
    app = ServerApp(config=ServerConfig(num_rounds=1), strategy=strategy)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)

    outcome, _ = asyncio.run(run_on_grid(app, config, grid))

    assert seen["cids"] == ["1", "2"] and seen["codes"] == {Code.OK}
    assert seen["examples"] == [1, 2] and seen["tensors"] == [1, 1]
    [failure] = seen["failures"]
    assert failure.startswith("node 3: ClientApp raised ValueError")
    np.testing.assert_allclose(outcome.parameters[0], [(1 + 4) / 3] * 3, rtol=1e-6)


def test_super_aggregate_fit_of_a_stateful_strategy_gives_its_own_numbers(
    tmp_path: Path,
) -> None:
    class Passing(FedAdam):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            return super().aggregate_fit(server_round, results, failures)

    def fedadam(cls: type[FedAdam]) -> FedAdam:
        return cls(initial_parameters=ZEROS, eta=0.1, min_available_clients=3)

    (streamed, _) = run(fedadam(FedAdam), tmp_path / "a")
    (gathered, _) = run(fedadam(Passing), tmp_path / "b")

    np.testing.assert_allclose(gathered.parameters[0], streamed.parameters[0], rtol=1e-6)


def test_an_aggregate_fit_returning_other_shapes_ends_the_run_keeping_the_last_good_model(
    tmp_path: Path,
) -> None:
    class Broken(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            aggregated, metrics = super().aggregate_fit(server_round, results, failures)
            if server_round == 2:
                return [np.zeros(5, np.float32)], metrics
            return aggregated, metrics

    strategy = Broken(initial_parameters=ZEROS, min_available_clients=3, fraction_evaluate=0.0)

    with pytest.raises(RunError) as stopped:
        run(strategy, tmp_path)

    message = str(stopped.value)
    assert "after round 1 of 3: round 2: Broken.aggregate_fit returned 1 arrays" in message
    assert "--resume 1" in message and "\n" not in message
    [last] = (tmp_path / "runs").glob("*/last_model.npz")
    np.testing.assert_allclose(np.load(last)["layer_0"], [14 / 6] * 3, rtol=1e-6)
