"""How the 1.8-era exchanges (get_parameters, fit, evaluate) are laid out as records.

Written once, read by both ends: the ClientApp's `NumPyClient` adapter and the
ServerApp's round loop. The names follow Flower's Message API, so that an
instruction or reply of this layout reads the same to a Message-API app: the
model in array record ``arrays``, instructions in config record ``config``, the
node's metrics with its ``num-examples`` in metric record ``metrics``.
"""

from __future__ import annotations

from typing import TypeVar

from pollen.errors import ClientAppError, RecordError
from pollen.records.messages import QUERY, Records
from pollen.records.replies import EvaluateRes, FitRes
from pollen.records.typing import Config, Metrics, NDArrays

A = TypeVar("A")

GET_PARAMETERS = f"{QUERY}.get_parameters"
"""A node is asked for its model's weights (the ServerApp's initial parameters)."""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
EVALUATION = "evaluation"
"""Metric record of an evaluation reply that holds its ``loss``."""
LOSS = "loss"


def instruction(model: A | None, config: Config) -> Records[A]:
    """The content of a fit, evaluate or get_parameters instruction."""
    return Records(arrays={} if model is None else {ARRAYS: model}, configs={CONFIG: config})


def model_of(content: Records[A]) -> A | None:
    """The model an instruction carries, or a reply's weights (None: none)."""
    return content.arrays.get(ARRAYS)


def config_of(content: Records[A]) -> Config:
    return dict(content.configs.get(CONFIG, {}))


def parameters_reply(arrays: NDArrays) -> Records[NDArrays]:
    return Records(arrays={ARRAYS: arrays})


def _with_count(metrics: Metrics, num_examples: int) -> Metrics:
    if NUM_EXAMPLES in metrics:
        raise ClientAppError(
            f"the metric name {NUM_EXAMPLES!r} is reserved for the number of examples; "
            "rename that metric"
        )
    return {**metrics, NUM_EXAMPLES: num_examples}


def fit_reply(result: FitRes) -> Records[NDArrays]:
    return Records(
        arrays={ARRAYS: result.parameters},
        metrics={METRICS: _with_count(result.metrics, result.num_examples)},
    )


def evaluate_reply(result: EvaluateRes) -> Records[NDArrays]:
    return Records(
        metrics={
            METRICS: _with_count(result.metrics, result.num_examples),
            EVALUATION: {LOSS: result.loss},
        }
    )


def num_examples(content: Records[A]) -> int:
    """The number of examples a fit or evaluate reply reports."""
    value = content.metrics.get(METRICS, {}).get(NUM_EXAMPLES, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"reply reports {NUM_EXAMPLES}={value!r:.40}; expected an int >= 0")
    return value


def metrics_of(content: Records[A]) -> Metrics:
    """A reply's metrics as the node's app returned them."""
    metrics = dict(content.metrics.get(METRICS, {}))
    metrics.pop(NUM_EXAMPLES, None)
    return metrics


def loss_of(content: Records[A]) -> float:
    value = content.metrics.get(EVALUATION, {}).get(LOSS)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"evaluation reply reports loss={value!r:.40}; expected a number")
    return float(value)


def fit_res(content: Records[A], arrays: NDArrays) -> FitRes:
    """A fit reply as the strategy takes it, with its downloaded ``arrays``."""
    return FitRes(arrays, num_examples(content), metrics_of(content))


def evaluate_res(content: Records[A]) -> EvaluateRes:
    return EvaluateRes(loss_of(content), num_examples(content), metrics_of(content))
