"""A ServerApp for the round-latency benchmark: FedAvg over a tiny model on every node.

``build_app(num_rounds, nodes)`` makes one with other settings; ``app`` is the
default (20 rounds, 2 nodes), so ``pollen serverapp noop_server:app`` works too.
"""

from __future__ import annotations

import numpy as np

from pollen import FedAvg, ServerApp, ServerConfig
from pollen.records.typing import NDArrays


def tiny_model() -> NDArrays:
    """Two small float32 arrays (a 4x2 weight matrix and a bias): 40 bytes in all."""
    return [np.zeros((4, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]


def build_app(num_rounds: int = 20, nodes: int = 2, node_wait_timeout: float = 30.0) -> ServerApp:
    """Every round fits and evaluates on all ``nodes`` nodes."""
    return ServerApp(
        config=ServerConfig(num_rounds=num_rounds, node_wait_timeout=node_wait_timeout),
        strategy=FedAvg(
            min_available_clients=nodes,
            min_fit_clients=nodes,
            min_evaluate_clients=nodes,
            initial_parameters=tiny_model(),
        ),
    )


app = build_app()
