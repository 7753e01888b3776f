"""The ServerApp: FedAvg over two SuperNodes for three rounds, training only.

Run it with ``pollen server-app server:app --root-certificates certificates/ca.crt --dir ./``,
or in simulation with ``pollen simulation --server-app server:app --client-app client:app
--num-supernodes 2``.
"""

from pollen.common import Metrics
from pollen.server import ServerApp, ServerConfig
from pollen.server.strategy import FedAvg

REPORTED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def weighted_average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Each node's training metrics, weighted by the number of examples it trained on."""
    examples = sum(num_examples for num_examples, _ in metrics)
    return {
        name: sum(num_examples * float(m[name]) for num_examples, m in metrics) / examples
        for name in REPORTED
    }


strategy = FedAvg(
    fraction_fit=1.0,  # every connected node trains in every round
    fraction_evaluate=0.0,  # no federated evaluation: validation happens inside fit
    min_available_clients=2,
    fit_metrics_aggregation_fn=weighted_average,
)

# The settings --run-config may change, with their defaults; any other key is refused
# (a misspelt `epochs=2` would otherwise be ignored). client.py reads them from
# context.run_config. The data settings apply to nodes whose --node-config does not
# set them: every node of a simulation ("" for data-path: $POLLEN_CIFAR10, else the cache).
run_config = {"local-epochs": 1, "data-path": "", "partitioning": "iid", "alpha": 0.5}

app = ServerApp(config=ServerConfig(num_rounds=3), strategy=strategy, run_config=run_config)
