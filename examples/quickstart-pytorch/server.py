"""The quickstart's ServerApp: FedAvg over two nodes for five rounds.

As in Flower's quickstart, `server_fn` builds each run's strategy and config from
the run config, so `--run-config num-server-rounds=2,local-epochs=1` changes them.
"""

from task import named_weights, new_model

from pollen.common import Context, Metrics
from pollen.server import ServerApp, ServerAppComponents, ServerConfig
from pollen.server.strategy import FedAvg


def weighted_average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Accuracy over all nodes' test examples."""
    examples = sum(n for n, _ in metrics)
    return {"accuracy": sum(n * m["accuracy"] for n, m in metrics) / examples}


def server_fn(context: Context) -> ServerAppComponents:
    epochs = int(context.run_config["local-epochs"])
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=2,
        min_evaluate_clients=2,
        min_available_clients=2,
        initial_parameters=named_weights(new_model()),  # names label final_model.npz's arrays
        on_fit_config_fn=lambda server_round: {"local-epochs": epochs},
        evaluate_metrics_aggregation_fn=weighted_average,
    )
    rounds = int(context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))


# the settings --run-config may change, with their defaults
app = ServerApp(server_fn=server_fn, run_config={"num-server-rounds": 5, "local-epochs": 2})
