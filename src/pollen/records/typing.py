"""The value types of records: scalars, configs, metrics, arrays and parameters."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pollen.errors import RecordError

Scalar = bool | int | float | str | bytes
"""One config or metric value."""

NDArray = npt.NDArray[Any]
NDArrays = list[NDArray]
"""A model's weights: a list of numpy arrays."""

Config = dict[str, Scalar]
"""Instructions sent with a task (learning rate, epochs, ...)."""

Metrics = dict[str, Scalar]
"""Figures returned with a result (accuracy, loss, ...)."""

UserConfig = dict[str, Scalar]
"""A node's or run's configuration, as given by `--node-config` or `--run-config`."""


@dataclass
class Parameters:
    """Model weights as a list of serialised tensors (Flower-compatible shape).

    Pollen moves arrays as one flat buffer internally; this type exists so that
    apps written with ``ndarrays_to_parameters`` keep working.
    """

    tensors: list[bytes] = field(default_factory=list)
    tensor_type: str = "numpy.ndarray"


def ndarrays_to_parameters(ndarrays: NDArrays) -> Parameters:
    """Serialise numpy arrays (``.npy`` each) into `Parameters`."""
    return Parameters(tensors=[_npy(array) for array in ndarrays], tensor_type="numpy.ndarray")


class ArrayParameters(list[NDArray], Parameters):
    """Arrays in memory that are Flower's `Parameters` too.

    Code written for Flower reads ``parameters_to_ndarrays(p)`` (the arrays, no
    copy) or ``p.tensors`` (``.npy`` bytes, serialised on first read); Pollen's own
    code uses it as the list of arrays it is. A round's results reach a strategy's
    ``aggregate_fit`` this way without a serialisation of each model.
    """

    def __init__(self, arrays: NDArrays) -> None:
        list.__init__(self, arrays)
        self.tensor_type = "numpy.ndarray"
        self._tensors: list[bytes] | None = None

    @property
    def tensors(self) -> list[bytes]:
        if self._tensors is None:
            self._tensors = [_npy(array) for array in self]
        return self._tensors

    @tensors.setter
    def tensors(self, tensors: list[bytes]) -> None:
        self._tensors = list(tensors)
        self[:] = [np.load(io.BytesIO(t), allow_pickle=False) for t in tensors]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Parameters):
            return self.tensors == other.tensors and self.tensor_type == other.tensor_type
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _npy(array: NDArray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def parameters_to_ndarrays(parameters: Parameters | NDArrays) -> NDArrays:
    """Deserialise `Parameters` back into numpy arrays (arrays already, such as
    `ArrayParameters`: those arrays, no copy)."""
    if isinstance(parameters, list):
        return list(parameters)
    return [np.load(io.BytesIO(t), allow_pickle=False) for t in parameters.tensors]


def to_scalar(key: str, value: object) -> Scalar:
    """``value`` as a `Scalar`; numpy scalars become Python ones, others are refused."""
    # numpy scalars first: np.float64 and np.str_ are also float and str instances
    if isinstance(value, np.generic):
        item = value.item()
        if isinstance(item, bool | int | float | str | bytes):
            return item
    elif isinstance(value, bool | int | float | str | bytes):
        return value
    raise RecordError(
        f"value of {key!r} is a {type(value).__name__}; use bool, int, float, str or bytes"
    )


def to_scalars(values: Mapping[str, object]) -> dict[str, Scalar]:
    """Every value of ``values`` as a `Scalar` (see `to_scalar`)."""
    return {str(key): to_scalar(str(key), value) for key, value in values.items()}
