"""A ServerApp for the large-model benchmarks, sized by environment variables.

``POLLEN_BENCH_MODEL_MB`` (model size, four float32 arrays), ``POLLEN_BENCH_NODES``
(every node trains each round), ``POLLEN_BENCH_ROUNDS``. Training only
(``fraction_evaluate=0``): each round sends the model to every node and folds
every node's result, which ``perturb_client`` makes distinct.
"""

from __future__ import annotations

import os

import numpy as np

from pollen import FedAvg, ServerApp, ServerConfig

MODEL_MB = int(os.environ.get("POLLEN_BENCH_MODEL_MB", "100"))
NODES = int(os.environ.get("POLLEN_BENCH_NODES", "2"))
ROUNDS = int(os.environ.get("POLLEN_BENCH_ROUNDS", "3"))

_elements = MODEL_MB * 1024 * 1024 // 4 // 4
app = ServerApp(
    config=ServerConfig(num_rounds=ROUNDS, node_wait_timeout=120),
    strategy=FedAvg(
        fraction_evaluate=0.0,
        min_fit_clients=NODES,
        min_available_clients=NODES,
        initial_parameters=[np.full(_elements, i, np.float32) for i in range(4)],
    ),
)
