"""A ServerApp for ``strategies.py memory``: ``large_server``'s workload with another strategy.

``POLLEN_BENCH_STRATEGY`` names the class of ``pollen.server.strategy``
(FedAvg, FedMedian, Krum, ...); ``POLLEN_BENCH_MODEL_MB``, ``POLLEN_BENCH_NODES``
and ``POLLEN_BENCH_ROUNDS`` as in ``large_server.py``: four float32 arrays,
every node trains each round, no evaluation.
"""

from __future__ import annotations

import os

import numpy as np

import pollen.server.strategy as strategies
from pollen import ServerApp, ServerConfig

STRATEGY = os.environ.get("POLLEN_BENCH_STRATEGY", "FedAvg")
MODEL_MB = int(os.environ.get("POLLEN_BENCH_MODEL_MB", "100"))
NODES = int(os.environ.get("POLLEN_BENCH_NODES", "2"))
ROUNDS = int(os.environ.get("POLLEN_BENCH_ROUNDS", "3"))

_elements = MODEL_MB * 1024 * 1024 // 4 // 4
app = ServerApp(
    config=ServerConfig(num_rounds=ROUNDS, node_wait_timeout=120),
    strategy=getattr(strategies, STRATEGY)(
        fraction_evaluate=0.0,
        min_fit_clients=NODES,
        min_available_clients=NODES,
        initial_parameters=[np.full(_elements, i, np.float32) for i in range(4)],
    ),
)
