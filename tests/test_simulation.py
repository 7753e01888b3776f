"""`pollen simulation`, `run_simulation` and `start_simulation`: whole runs on virtual nodes."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pollen.cli.main import cli
from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.errors import ConfigurationError, PollenError
from pollen.server import ServerApp, ServerConfig
from pollen.server.strategy import FedAvg
from pollen.simulation import run_simulation, start_simulation


class PartitionClient(NumPyClient):
    """Adds (partition + 1) to every weight, trained on (partition + 1) examples; reports
    its partition and, from ``context.state``, how many fits it has done."""

    def __init__(self, partition: int, state: dict[str, object] | None = None) -> None:
        self.partition = partition
        self.step = partition + 1
        self.state = state

    def get_parameters(self, config: Config) -> NDArrays:
        return [np.zeros(2, np.float32)]

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        metrics: Metrics = {"partition": self.partition}
        if self.state is not None:
            fits = int(self.state.get("fits", 0)) + 1  # type: ignore[call-overload]
            self.state["fits"] = metrics["fits"] = fits
        return [p + self.step for p in parameters], self.step, metrics

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return float(parameters[0][0]), self.step, {"value": float(parameters[0][0])}


def from_context(context: Context) -> PartitionClient:
    return PartitionClient(int(context.node_config["partition-id"]), context.state)


def weighted_step(num_nodes: int) -> float:
    """One FedAvg round of PartitionClients: sum of k * k over sum of k, k = 1..N."""
    steps = np.arange(1, num_nodes + 1, dtype=np.float64)
    return float((steps * steps).sum() / steps.sum())


def server_app(num_rounds: int, seed: int | None = 1, **strategy: object) -> ServerApp:
    return ServerApp(
        config=ServerConfig(num_rounds=num_rounds, seed=seed),
        strategy=FedAvg(initial_parameters=[np.zeros(2, np.float32)], **strategy),  # type: ignore[arg-type]
    )


def test_fedavg_over_100_virtual_nodes_is_the_weighted_mean(tmp_path: Path) -> None:
    app = server_app(2, fraction_evaluate=0.0, min_available_clients=100)

    outcome = run_simulation(app, ClientApp(client_fn=from_context), 100, output_dir=tmp_path)

    np.testing.assert_allclose(outcome.parameters[0], [2 * weighted_step(100)] * 2, rtol=1e-6)
    for record in outcome.history.rounds:
        nodes = {(n.node_id, n.metrics["partition"], n.num_examples) for n in record.fit_nodes}
        assert nodes == {(i + 1, i, i + 1) for i in range(100)}  # distinct partition ids
    assert (tmp_path / str(outcome.run_id) / "final_model.npz").is_file()


def test_sampling_a_tenth_of_1000_nodes_is_distinct_per_round_and_seeded(
    tmp_path: Path,
) -> None:
    def sampled(seed: int, output: str) -> list[frozenset[int]]:
        app = server_app(3, seed=seed, fraction_fit=0.1, fraction_evaluate=0.0)
        outcome = run_simulation(
            app, ClientApp(client_fn=from_context), 1000, output_dir=tmp_path / output
        )
        rounds = [[n.node_id for n in r.fit_nodes] for r in outcome.history.rounds]
        assert all(len(nodes) == len(set(nodes)) == 100 for nodes in rounds)
        return [frozenset(nodes) for nodes in rounds]

    first = sampled(7, "a")

    assert sampled(7, "b") == first  # the same seed, the same samples
    assert len(set(first)) == 3  # each round its own sample
    assert sampled(8, "c") != first


def test_each_virtual_node_keeps_its_context_state_across_rounds(tmp_path: Path) -> None:
    app = server_app(3, fraction_evaluate=0.0)

    outcome = run_simulation(app, ClientApp(client_fn=from_context), 10, output_dir=tmp_path)

    for number, record in enumerate(outcome.history.rounds, start=1):
        assert [n.metrics["fits"] for n in record.fit_nodes] == [number] * 10


def test_a_client_fn_of_a_cid_gets_the_partition_id(tmp_path: Path) -> None:
    seen: set[str] = set()

    def client_fn(cid: str) -> NumPyClient:
        seen.add(cid)
        return PartitionClient(int(cid))

    app = server_app(1, fraction_evaluate=0.0)
    run_simulation(app, ClientApp(client_fn=client_fn), 5, output_dir=tmp_path)

    assert seen == {"0", "1", "2", "3", "4"}


def test_start_simulation_with_a_flower_18_client_fn_returns_flowers_history(
    tmp_path: Path,
) -> None:
    seen: set[str] = set()

    def client_fn(cid: str) -> NumPyClient:
        seen.add(cid)
        return PartitionClient(int(cid))

    def evaluate_fn(
        server_round: int, parameters: NDArrays, config: Config
    ) -> tuple[float, Metrics]:
        return float(parameters[0][0]) / 2, {"half": float(parameters[0][0]) / 2}

    strategy = FedAvg(
        initial_parameters=[np.zeros(2, np.float32)],
        min_available_clients=10,
        evaluate_fn=evaluate_fn,
        fit_metrics_aggregation_fn=lambda pairs: {"nodes": len(pairs)},
        evaluate_metrics_aggregation_fn=lambda pairs: {"nodes": len(pairs)},
    )

    history = start_simulation(
        client_fn=client_fn,
        num_clients=10,
        config=ServerConfig(num_rounds=3),
        strategy=strategy,
        client_resources={"num_cpus": 1},
        output_dir=tmp_path,
    )

    assert seen == {str(i) for i in range(10)}
    step = weighted_step(10)
    distributed, centralized = history.losses_distributed, history.losses_centralized
    assert [r for r, _ in distributed] == [r for r, _ in centralized] == [1, 2, 3]
    # every node evaluates the same model: the loss is its value, whatever the weights
    np.testing.assert_allclose(
        [loss for _, loss in distributed], [step, 2 * step, 3 * step], rtol=1e-6
    )
    np.testing.assert_allclose(
        [loss for _, loss in centralized], [step / 2, step, 1.5 * step], rtol=1e-6
    )
    assert history.metrics_distributed_fit == {"nodes": [(1, 10), (2, 10), (3, 10)]}
    assert history.metrics_distributed == {"nodes": [(1, 10), (2, 10), (3, 10)]}
    assert list(history.metrics_centralized) == ["half"]
    assert [r for r, _ in history.metrics_centralized["half"]] == [1, 2, 3]


def test_too_few_virtual_nodes_for_the_strategy_is_refused_before_any_round(
    tmp_path: Path,
) -> None:
    app = server_app(1, min_available_clients=5)
    with pytest.raises(ConfigurationError, match="min_available_clients \\(5\\)"):
        run_simulation(app, ClientApp(client_fn=from_context), 4, output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def write_apps(directory: Path, min_available: int = 2) -> tuple[str, str]:
    """A tiny ServerApp and ClientApp in ``directory``, under module names of their own
    (a module stays imported for the rest of the test session)."""
    tag = uuid.uuid4().hex[:8]
    (directory / f"sim_server_{tag}.py").write_text(
        textwrap.dedent(
            f"""
            import numpy as np
            from pollen.server import ServerApp, ServerConfig
            from pollen.server.strategy import FedAvg

            app = ServerApp(
                config=ServerConfig(num_rounds=2),
                strategy=FedAvg(
                    initial_parameters=[np.zeros(2, np.float32)],
                    min_available_clients={min_available},
                ),
                run_config={{"step": 1.0}},
            )
            """
        )
    )
    (directory / f"sim_client_{tag}.py").write_text(
        textwrap.dedent(
            """
            from pollen.client import ClientApp, NumPyClient

            class Adder(NumPyClient):
                def __init__(self, context):
                    self.k = context.node_config["partition-id"] + 1
                    self.step = context.run_config["step"]

                def fit(self, parameters, config):
                    return [p + self.step * self.k for p in parameters], self.k, {}

                def evaluate(self, parameters, config):
                    return float(parameters[0][0]), self.k, {}

            app = ClientApp(client_fn=lambda context: Adder(context))
            """
        )
    )
    return f"sim_server_{tag}:app", f"sim_client_{tag}:app"


def simulation(directory: Path, *args: str) -> tuple[int, str]:
    server, client = write_apps(directory)
    base = ["simulation", "--server-app", server, "--client-app", client]
    result = CliRunner().invoke(cli, [*base, "--app-dir", str(directory), *args])
    return result.exit_code, result.output


def test_the_command_runs_the_apps_and_writes_the_outputs(tmp_path: Path) -> None:
    output = tmp_path / "runs"
    code, text = simulation(
        tmp_path,
        "--num-supernodes",
        "4",
        "--backend-config",
        '{"client_resources": {"num_cpus": 1}}',
        "--run-config",
        "step=2.0",
        "--output-dir",
        str(output),
    )

    assert code == 0, text
    [run] = list(output.iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2 and metrics["finished"] is True
    final = np.load(run / "final_model.npz")["layer_0"]
    np.testing.assert_allclose(final, [2 * 2.0 * weighted_step(4)] * 2, rtol=1e-6)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--num-supernodes", "0"], ["--num-supernodes 0", "at least 1"]),
        (["--num-supernodes", "1"], ["min_available_clients (2)", "give at least 2"]),
        (["--backend", "threads"], ["no such backend", "in-process"]),
        (["--backend-config", '{"init_args": {}}'], ["init_args", "for the ray backend only"]),
        (
            ["--backend-config", '{"client_resources": {"num_cpus": 10000}}'],
            ["num_cpus=10000: more than the", "CPUs this machine has"],
        ),
        (
            ["--backend-config", '{"client_resources": {"num_gpus": 1000}}'],
            ["num_gpus=1000: more than the", "GPUs this machine has"],
        ),
        (["--backend-config", '{"client_resources": {"num_gpus": 1.5}}'], ["whole number"]),
        (["--backend-config", "{num_cpus: 1}"], ["not JSON"]),
        (["--backend-config", '{"num_cpus": 1}'], ["unknown key 'num_cpus'", "client_resources"]),
        (["--backend-config", '{"client_resources": {"cpus": 1}}'], ["client_resources.cpus"]),
        (["--run-config", "steps=2"], ["not a setting of this app", "step"]),
        (["--app-dir", "/nonexistent"], ["--app-dir /nonexistent: no such directory"]),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    if "--num-supernodes" not in args:
        args = [*args, "--num-supernodes", "3"]
    output = tmp_path / "runs"

    code, text = simulation(tmp_path, *args, "--output-dir", str(output))

    assert code == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not output.exists()  # refused before any round


def test_a_stopped_simulation_keeps_its_last_model_and_offers_no_resume(tmp_path: Path) -> None:
    def evaluate_fn(
        server_round: int, parameters: NDArrays, config: Config
    ) -> tuple[float, Metrics] | None:
        if server_round == 2:
            raise ValueError("the server-side evaluation broke")
        return None

    app = server_app(3, fraction_evaluate=0.0, evaluate_fn=evaluate_fn)

    with pytest.raises(PollenError) as raised:
        run_simulation(app, ClientApp(client_fn=from_context), 2, output_dir=tmp_path)

    message = str(raised.value)
    assert "stopped after round 1 of 3" in message and "--resume" not in message, message
    assert "last_model.npz" in message
