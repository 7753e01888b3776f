"""A ClientApp for transfer benchmarks: ``fit`` hands the model back with two elements changed.

The first element grows by one each round and the last becomes a number drawn
from the node's id, so that every result differs from the global model and from
every other node's result, as real training does: no transfer or storage is
saved by content addressing. (Changing only the first element made both nodes'
results identical: the SuperLink stored one and the ServerApp downloaded one.)
"""

from __future__ import annotations

from pollen import ClientApp, Context, NumPyClient
from pollen.records.typing import Config, Metrics, NDArrays


class PerturbClient(NumPyClient):
    def __init__(self, node_id: int) -> None:
        self.mark = node_id % (1 << 24)  # exact in float32; two nodes differ but by 1 in 2**24

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        # the arrays Pollen hands over are writable and this task's own
        parameters[0].reshape(-1)[0] += 1
        parameters[-1].reshape(-1)[-1] = self.mark
        return parameters, 1, {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.0, 1, {}


def client_fn(context: Context) -> PerturbClient:
    return PerturbClient(context.node_id)


app = ClientApp(client_fn)
