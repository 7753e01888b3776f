"""A Flower-style ServerApp using FedAvg's keyword arguments and the flwr.common helpers."""

from pollen.common import (
    Metrics,
    MetricsAggregationFn,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from pollen.server import ServerApp, ServerConfig
from pollen.server.strategy import FedAvg
from tests.apps.flower_style.linear_task import initial_weights, load_data, loss

held_out = load_data(partition_id=1234, examples=50)
server_evaluations: list[tuple[int, float]] = []


def fit_config(server_round: int) -> dict[str, Scalar]:
    return {"lr": 0.1, "server_round": server_round}


def evaluate_config(server_round: int) -> dict[str, Scalar]:
    return {"server_round": server_round}


def evaluate(
    server_round: int, parameters: NDArrays, config: dict[str, Scalar]
) -> tuple[float, dict[str, Scalar]] | None:
    value = loss(parameters, *held_out)
    server_evaluations.append((server_round, value))
    return value, {"server_mse": value}


def average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    examples = sum(n for n, _ in metrics)
    return {key: sum(n * float(m[key]) for n, m in metrics) / examples for key in metrics[0][1]}


aggregate: MetricsAggregationFn = average
initial: Parameters = ndarrays_to_parameters(initial_weights())
for restored, original in zip(parameters_to_ndarrays(initial), initial_weights(), strict=True):
    assert (restored == original).all()

strategy = FedAvg(
    fraction_fit=1.0,
    fraction_evaluate=1.0,
    min_fit_clients=2,
    min_evaluate_clients=2,
    min_available_clients=2,
    evaluate_fn=evaluate,
    on_fit_config_fn=fit_config,
    on_evaluate_config_fn=evaluate_config,
    accept_failures=True,
    initial_parameters=initial,
    fit_metrics_aggregation_fn=aggregate,
    evaluate_metrics_aggregation_fn=aggregate,
)

app = ServerApp(config=ServerConfig(num_rounds=2, round_timeout=60.0), strategy=strategy)
