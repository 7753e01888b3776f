"""The low-level client interface that a ClientApp drives."""

from __future__ import annotations

from pollen.records.context import Context
from pollen.records.replies import EvaluateRes, FitRes
from pollen.records.typing import Config, NDArrays


class Client:
    """Implement these three methods, or subclass `NumPyClient` and call ``.to_client()``."""

    context: Context | None = None

    def get_parameters(self, config: Config) -> NDArrays:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_parameters")

    def fit(self, parameters: NDArrays, config: Config) -> FitRes:
        raise NotImplementedError(f"{type(self).__name__} does not implement fit")

    def evaluate(self, parameters: NDArrays, config: Config) -> EvaluateRes:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate")

    def to_client(self) -> Client:
        return self
