"""Small NumPy apps for the tests. Behaviour is chosen per node with --node-config.

``behaviour``: ``ok`` (default: add 1 to every weight), ``raise`` (fit raises),
``wrong-shape`` (fit returns arrays of other shapes), ``same`` (fit returns the
model unchanged), ``slow`` (fit touches the
file ``marker`` then sleeps ``delay`` seconds), ``gated`` (fit touches ``marker``
then waits until the file ``gate`` exists). ``examples`` sets num_examples.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pollen.client import ClientApp, NumPyClient
from pollen.common import Config, Context, Metrics, NDArrays
from pollen.server import ServerApp, ServerConfig
from pollen.server.strategy import FedAvg

INITIAL = [np.zeros((2, 3), np.float32), np.arange(4, dtype=np.int64)]


class AddOneClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.node_config = context.node_config

    def get_parameters(self, config: Config) -> NDArrays:
        return [a.copy() for a in INITIAL]

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        behaviour = self.node_config.get("behaviour", "ok")
        if behaviour == "raise":
            raise ValueError("fit failed on purpose")
        if behaviour == "wrong-shape":
            return [np.zeros(5, np.float32)], 1, {}
        if behaviour == "same":
            return parameters, 1, {}
        if behaviour == "slow":
            Path(str(self.node_config["marker"])).touch()
            time.sleep(float(self.node_config.get("delay", 60)))
        if behaviour == "gated":
            Path(str(self.node_config["marker"])).touch()
            while not Path(str(self.node_config["gate"])).exists():
                time.sleep(0.05)
        examples = int(self.node_config.get("examples", 1))
        return [p + 1 for p in parameters], examples, {"train_loss": 1.0 / examples}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return float(parameters[0].sum()), 2, {"accuracy": 0.5}


app = ClientApp(client_fn=lambda context: AddOneClient(context))


def make_server_app(
    num_rounds: int = 3,
    min_available: int = 2,
    min_fit: int = 2,
    fraction_evaluate: float = 1.0,
    initial: NDArrays = INITIAL,
    **config: float,
) -> ServerApp:
    strategy = FedAvg(
        min_available_clients=min_available,
        min_fit_clients=min_fit,
        min_evaluate_clients=1,
        fraction_evaluate=fraction_evaluate,
        initial_parameters=[a.copy() for a in initial],
    )
    return ServerApp(config=ServerConfig(num_rounds=num_rounds, **config), strategy=strategy)


server_app = make_server_app()
one_round = make_server_app(num_rounds=1, min_fit=1, fraction_evaluate=0.0)
two_nodes_one_round = make_server_app(num_rounds=1, min_available=2, min_fit=1)
two_rounds_both_nodes = make_server_app(num_rounds=2, min_available=2, min_fit=1)
four_rounds = make_server_app(num_rounds=4, min_available=2, min_fit=2)
# 4 MiB of weights: a few rounds of blobs fill a small disk
four_mib_three_rounds = make_server_app(
    num_rounds=3, fraction_evaluate=0.0, initial=[np.zeros(1 << 20, np.float32)]
)
# waits 1 s per round, then goes on with the results it has (stragglers count as failures)
round_timeout_one_second = make_server_app(
    num_rounds=2, min_available=2, min_fit=1, fraction_evaluate=0.0, round_timeout=1.0
)
