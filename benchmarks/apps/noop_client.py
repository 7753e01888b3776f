"""A ClientApp that does no work: ``fit`` hands the model back, ``evaluate`` reports zero loss.

Used by ``benchmarks/round_latency.py`` so that a round's time is Pollen's own
overhead (task delivery, blob transfer, result fan-out), not training.
"""

from __future__ import annotations

from pollen import ClientApp, Context, NumPyClient
from pollen.records.typing import Config, Metrics, NDArrays


class NoopClient(NumPyClient):
    def get_parameters(self, config: Config) -> NDArrays:
        raise NotImplementedError("the benchmark's strategy supplies the initial parameters")

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        return parameters, 1, {}

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        return 0.0, 1, {}


def client_fn(context: Context) -> NoopClient:
    return NoopClient()


app = ClientApp(client_fn)
