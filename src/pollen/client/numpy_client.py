"""`NumPyClient`: the way Flower's client-authentication example writes a client, with
checked return values."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.client.client import Client
from pollen.errors import ClientAppError, RecordError
from pollen.records.context import Context
from pollen.records.replies import EvaluateRes, FitRes
from pollen.records.typing import Config, Metrics, NDArrays, to_scalars


class NumPyClient:
    """Subclass and implement ``get_parameters``, ``fit`` and ``evaluate`` with numpy arrays."""

    context: Context | None = None

    def get_parameters(self, config: Config) -> NDArrays:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_parameters")

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, Metrics]:
        """Train on local data; return (new weights, number of examples, metrics)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement fit")

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Metrics]:
        """Evaluate on local data; return (loss, number of examples, metrics)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate")

    def to_client(self) -> Client:
        return NumPyClientAdapter(self)


def _arrays(method: str, value: Any) -> NDArrays:
    """The arrays ``method`` returned; numpy scalars become 0-d arrays (arithmetic on a
    0-d array, such as BatchNorm's ``num_batches_tracked``, gives a scalar)."""
    if not isinstance(value, list | tuple):
        raise ClientAppError(f"{method} must return a list of numpy arrays, got {type(value)}")
    arrays: NDArrays = []
    for index, item in enumerate(value):
        if isinstance(item, np.generic):
            item = np.asarray(item)
        if not isinstance(item, np.ndarray):
            raise ClientAppError(
                f"{method} must return a list of numpy arrays; item {index} is a "
                f"{type(item).__name__} (convert it with numpy.asarray)"
            )
        arrays.append(item)
    return arrays


def _count(method: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ClientAppError(f"{method} must return the number of examples as an int >= 0")
    return int(value)


def _metrics(method: str, value: Any) -> Metrics:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ClientAppError(f"{method} must return metrics as a dict, got {type(value)}")
    try:
        return to_scalars(value)
    except RecordError as exc:
        raise ClientAppError(f"{method} returned bad metrics: {exc}") from exc


def _triple(method: str, value: Any) -> tuple[Any, Any, Any]:
    if not isinstance(value, tuple | list) or len(value) != 3:
        raise ClientAppError(f"{method} must return a tuple of 3 values, got {value!r:.80}")
    return value[0], value[1], value[2]


class NumPyClientAdapter(Client):
    """Runs a `NumPyClient` as a `Client`, checking what it returns."""

    def __init__(self, numpy_client: NumPyClient) -> None:
        self.numpy_client = numpy_client

    def get_parameters(self, config: Config) -> NDArrays:
        return _arrays("get_parameters", self.numpy_client.get_parameters(config))

    def fit(self, parameters: NDArrays, config: Config) -> FitRes:
        arrays, count, metrics = _triple("fit", self.numpy_client.fit(parameters, config))
        return FitRes(_arrays("fit", arrays), _count("fit", count), _metrics("fit", metrics))

    def evaluate(self, parameters: NDArrays, config: Config) -> EvaluateRes:
        loss, count, metrics = _triple("evaluate", self.numpy_client.evaluate(parameters, config))
        if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
            raise ClientAppError(f"evaluate must return the loss as a float, got {loss!r:.40}")
        return EvaluateRes(float(loss), _count("evaluate", count), _metrics("evaluate", metrics))
