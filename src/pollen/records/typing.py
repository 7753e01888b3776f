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
    tensors = []
    for array in ndarrays:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        tensors.append(buffer.getvalue())
    return Parameters(tensors=tensors, tensor_type="numpy.ndarray")


def parameters_to_ndarrays(parameters: Parameters) -> NDArrays:
    """Deserialise `Parameters` back into numpy arrays."""
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
