"""A ClientApp for transfer benchmarks: ``fit`` hands the model back, changed by one element.

Changing it keeps every result a distinct blob, as real training does, so that
no transfer is saved by content addressing.
"""

from __future__ import annotations

from pollen import ClientApp, Context, NumPyClient
from pollen.records.typing import Config, Metrics, NDArrays


class PerturbClient(NumPyClient):
    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        first = parameters[0].reshape(-1)
        first[0] += 1  # the arrays Pollen hands over are writable and this task's own
        return parameters, 1, {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.0, 1, {}


def client_fn(context: Context) -> PerturbClient:
    return PerturbClient()


app = ClientApp(client_fn)
