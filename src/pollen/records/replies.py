"""What a node is asked to do and what local training and evaluation return, on the
node and on the server alike (the shapes of Flower's `flwr.common` types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pollen.records.typing import Config, Metrics, NDArrays, Parameters


class Code(Enum):
    """How a node's work ended (Flower's ``flwr.common.Code``)."""

    OK = 0
    GET_PROPERTIES_NOT_IMPLEMENTED = 1
    GET_PARAMETERS_NOT_IMPLEMENTED = 2
    FIT_NOT_IMPLEMENTED = 3
    EVALUATE_NOT_IMPLEMENTED = 4


@dataclass
class Status:
    """A code and a message (Flower's ``flwr.common.Status``)."""

    code: Code
    message: str


def _ok() -> Status:
    return Status(Code.OK, "Success")


@dataclass
class FitRes:
    """What local training returns: new weights, examples used, metrics.

    ``status`` comes last, so that both Pollen's ``FitRes(arrays, n, metrics)`` and
    Flower's ``FitRes(status=..., parameters=..., num_examples=..., metrics=...)`` build
    one. A strategy's ``aggregate_fit`` (Flower's signature) gets ``parameters`` as
    `ArrayParameters`: arrays that are also Flower's `Parameters`.
    """

    parameters: NDArrays
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    status: Status = field(default_factory=_ok)


@dataclass
class EvaluateRes:
    """What local evaluation returns: loss, examples used, metrics."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    status: Status = field(default_factory=_ok)


@dataclass(init=False)
class _Instructions:
    """A node's instructions: its config and, as Flower's carry it, the model it starts
    from (None: the round's global model). Built as ``FitIns(config)`` or, as in
    Flower, ``FitIns(parameters, config)``."""

    parameters: Parameters | NDArrays | None
    config: Config

    def __init__(
        self, parameters: Parameters | NDArrays | Config | None = None, config: Config | None = None
    ) -> None:
        if config is None and isinstance(parameters, dict):
            parameters, config = None, parameters  # Pollen's FitIns(config)
        self.parameters = parameters if not isinstance(parameters, dict) else None
        self.config = dict(config or {})


class FitIns(_Instructions):
    """Instructions for one node's training."""


class EvaluateIns(_Instructions):
    """Instructions for one node's evaluation of the global model."""
