"""Types shared by client and server apps (the names Flower users know)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from pollen.records.context import Context
from pollen.records.replies import Code, EvaluateIns, EvaluateRes, FitIns, FitRes, Status
from pollen.records.typing import (
    Config,
    Metrics,
    NDArray,
    NDArrays,
    Parameters,
    Scalar,
    UserConfig,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

MetricsAggregationFn = Callable[[list[tuple[int, Metrics]]], Metrics]
"""Combines the nodes' ``(num_examples, metrics)`` pairs into one `Metrics` (as in Flower)."""


def ndarray_to_bytes(ndarray: NDArray) -> bytes:
    """One array as ``.npy`` bytes (the form of each tensor in `Parameters`)."""
    buffer = io.BytesIO()
    np.save(buffer, ndarray, allow_pickle=False)
    return buffer.getvalue()


def bytes_to_ndarray(tensor: bytes) -> NDArray:
    """The array of ``.npy`` bytes made by `ndarray_to_bytes`."""
    array: NDArray = np.load(io.BytesIO(tensor), allow_pickle=False)
    return array


__all__ = [
    "Code",
    "Config",
    "Context",
    "EvaluateIns",
    "EvaluateRes",
    "FitIns",
    "FitRes",
    "Metrics",
    "MetricsAggregationFn",
    "NDArray",
    "NDArrays",
    "Parameters",
    "Scalar",
    "Status",
    "UserConfig",
    "bytes_to_ndarray",
    "ndarray_to_bytes",
    "ndarrays_to_parameters",
    "parameters_to_ndarrays",
]
