"""Strategies written the way Flower's docs write them run on Pollen, their overrides called."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollen.client import ClientApp, NumPyClient
from pollen.common import (
    Code,
    FitRes,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from pollen.errors import RunError
from pollen.server import ServerApp, ServerConfig
from pollen.server.client_proxy import ClientProxy
from pollen.server.run import ServerAppConfig, run_on_grid
from pollen.server.strategy import FedAdam, FedAvg, FitIns, Strategy
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


class ConfigPerNode(FedAvg):
    """Flower's pattern: super().configure_fit, then a config of its own per client."""

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        pairs = super().configure_fit(server_round, parameters, client_manager)
        assert client_manager.num_available() == 3 and len(client_manager.all()) == 3
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, "lr": int(proxy.cid)}))
            for proxy, ins in pairs
        ]


class EchoConfig(NumPyClient):
    def fit(self, parameters: Any, config: Any) -> Any:
        return parameters, 1, {"lr": config.get("lr", -1)}

    def evaluate(self, parameters: Any, config: Any) -> Any:
        return 0.0, 1, {}


def test_configure_fit_with_flowers_signature_sends_each_node_its_config(
    tmp_path: Path,
) -> None:
    seen: list[Any] = []

    class Recording(ConfigPerNode):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            seen.extend(sorted((p.cid, r.metrics["lr"]) for p, r in results))
            return super().aggregate_fit(server_round, results, failures)

    strategy = Recording(initial_parameters=ZEROS, min_available_clients=3)
    app = ServerApp(config=ServerConfig(num_rounds=1), strategy=strategy)
    grid = InProcessGrid(ClientApp(client_fn=lambda context: EchoConfig()), num_nodes=3)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)
    outcome, _ = asyncio.run(run_on_grid(app, config, grid))

    assert seen == [("1", 1), ("2", 2), ("3", 3)]  # each node trained with its own lr
    assert outcome.history.rounds[0].fit_results == 3


def test_num_fit_clients_decides_how_many_nodes_train(tmp_path: Path) -> None:
    class OneAtATime(FedAvg):
        def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
            return 1, 1

    strategy = OneAtATime(initial_parameters=ZEROS, min_available_clients=3, min_fit_clients=1)
    (outcome, _) = run(strategy, tmp_path)

    assert [r.fit_results for r in outcome.history.rounds] == [1, 1, 1]


def test_initialize_parameters_and_evaluate_with_flowers_signatures(tmp_path: Path) -> None:
    evaluated: list[float] = []

    class FlowerStyle(FedAvg):
        def initialize_parameters(self, client_manager: Any) -> Parameters | None:
            assert client_manager.num_available() == 3
            return ndarrays_to_parameters([np.full(3, 10.0, np.float32)])

        def evaluate(self, server_round: int, parameters: Parameters) -> Any:
            evaluated.append(float(parameters_to_ndarrays(parameters)[0][0]))
            return None

    (outcome, _) = run(FlowerStyle(min_available_clients=3, fraction_evaluate=0.0), tmp_path, 1)

    assert evaluated == pytest.approx([10.0 + 14 / 6])
    np.testing.assert_allclose(outcome.parameters[0], [10.0 + 14 / 6] * 3, rtol=1e-6)


def test_aggregate_evaluate_with_flowers_signature_gets_proxies_and_failures(
    tmp_path: Path,
) -> None:
    seen: dict[str, Any] = {}

    class Inspecting(FedAvg):
        def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
            seen["cids"] = sorted(proxy.cid for proxy, _ in results)
            seen["failures"] = len(failures)
            return super().aggregate_evaluate(server_round, results, failures)

    grid = InProcessGrid(client_app, num_nodes=2)
    app = ServerApp(
        config=ServerConfig(num_rounds=1),
        strategy=Inspecting(initial_parameters=ZEROS, min_available_clients=2),
    )
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)

    outcome, _ = asyncio.run(run_on_grid(app, config, grid))

    assert seen == {"cids": ["1", "2"], "failures": 0}
    assert outcome.history.rounds[0].evaluate_loss is not None


def test_a_node_may_be_given_parameters_of_its_own(tmp_path: Path) -> None:
    class OwnModel(FedAvg):
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            pairs = super().configure_fit(server_round, parameters, client_manager)
            special = ndarrays_to_parameters([np.full(3, 100.0, np.float32)])
            return [
                (proxy, FitIns(special, ins.config) if proxy.cid == "1" else ins)
                for proxy, ins in pairs
            ]

    strategy = OwnModel(initial_parameters=ZEROS, min_available_clients=2, fraction_evaluate=0)
    (outcome, _) = run(strategy, tmp_path, rounds=1, nodes=2)

    # node 1 (1 example) started from 100 and added 1; node 2 (2 examples) from 0, added 2
    np.testing.assert_allclose(outcome.parameters[0], [(101 * 1 + 2 * 2) / 3] * 3, rtol=1e-6)


def test_a_strategy_written_only_in_flowers_methods_runs(tmp_path: Path) -> None:
    class Minimal(Strategy):
        def initialize_parameters(self, client_manager: Any) -> Parameters | None:
            return ndarrays_to_parameters(ZEROS)

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            return [(p, FitIns(parameters, {})) for p in client_manager.sample(2)]

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            arrays = [parameters_to_ndarrays(r.parameters) for _, r in results]
            return ndarrays_to_parameters([np.max([a[0] for a in arrays], axis=0)]), {}

        def configure_evaluate(
            self, server_round: int, parameters: Any, client_manager: Any
        ) -> Any:
            return []

        def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
            return None, {}

        def evaluate(self, server_round: int, parameters: Any) -> Any:
            return None

    (outcome, _) = run(Minimal(), tmp_path, rounds=2, nodes=2)

    np.testing.assert_allclose(outcome.parameters[0], [4.0] * 3)  # the larger update, twice


def test_a_dp_wrapper_refuses_a_strategy_with_flower_style_overrides() -> None:
    from pollen.errors import ConfigurationError
    from pollen.server.strategy import DifferentialPrivacyServerSideFixedClipping

    with pytest.raises(ConfigurationError, match="overrides configure_fit with Flower's"):
        DifferentialPrivacyServerSideFixedClipping(ConfigPerNode(), 1.0, 1.0, 2)


def test_a_strategy_that_aggregates_neither_way_is_refused_when_the_server_app_is_built() -> None:
    from pollen.errors import ConfigurationError

    class Nothing(Strategy):
        def initialize_parameters(self) -> Any:
            return None

        def configure_fit(self, *args: Any) -> Any:
            return []

        def configure_evaluate(self, *args: Any) -> Any:
            return []

        def aggregate_evaluate(self, *args: Any) -> Any:
            return None, {}

    with pytest.raises(ConfigurationError, match="implements neither fit_aggregator"):
        ServerApp(strategy=Nothing())


def test_parameters_given_to_several_nodes_are_uploaded_once(tmp_path: Path) -> None:
    uploads: list[int] = []

    class Counting(InProcessGrid):
        async def upload_arrays(self, arrays: Any, run_id: int = 0) -> Any:
            uploads.append(len(arrays))
            return await super().upload_arrays(arrays, run_id)

    class SharedModel(FedAvg):
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            shared = ndarrays_to_parameters([np.full(3, 100.0, np.float32)])
            pairs = super().configure_fit(server_round, parameters, client_manager)
            return [(proxy, FitIns(shared, ins.config)) for proxy, ins in pairs]

    strategy = SharedModel(initial_parameters=ZEROS, min_available_clients=3, fraction_evaluate=0)
    app = ServerApp(config=ServerConfig(num_rounds=1), strategy=strategy)
    config = ServerAppConfig(Address("unused", 1), output_root=tmp_path)

    outcome, _ = asyncio.run(run_on_grid(app, config, Counting(client_app, num_nodes=3)))

    # the round's global model, the one model all three nodes were given, the new model
    assert len(uploads) == 3
    np.testing.assert_allclose(outcome.parameters[0], [100 + 14 / 6] * 3, rtol=1e-6)
