"""Types shared by client and server apps (the names Flower users know)."""

from pollen.records.context import Context
from pollen.records.replies import EvaluateRes, FitRes
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

__all__ = [
    "Config",
    "Context",
    "EvaluateRes",
    "FitRes",
    "Metrics",
    "NDArray",
    "NDArrays",
    "Parameters",
    "Scalar",
    "UserConfig",
    "ndarrays_to_parameters",
    "parameters_to_ndarrays",
]
