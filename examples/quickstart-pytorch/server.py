"""The quickstart's ServerApp: FedAvg over two nodes for five rounds."""

from task import named_weights, new_model

from pollen.common import Metrics
from pollen.server import ServerApp, ServerConfig
from pollen.server.strategy import FedAvg


def weighted_average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Accuracy over all nodes' test examples."""
    examples = sum(n for n, _ in metrics)
    return {"accuracy": sum(n * m["accuracy"] for n, m in metrics) / examples}


strategy = FedAvg(
    fraction_fit=1.0,
    fraction_evaluate=1.0,
    min_fit_clients=2,
    min_evaluate_clients=2,
    min_available_clients=2,
    initial_parameters=named_weights(new_model()),  # names label final_model.npz's arrays
    on_fit_config_fn=lambda server_round: {"local-epochs": 2},
    evaluate_metrics_aggregation_fn=weighted_average,
)

app = ServerApp(config=ServerConfig(num_rounds=5), strategy=strategy)
