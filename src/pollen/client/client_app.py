"""`ClientApp`: what a SuperNode runs for each task."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pollen.client.client import Client
from pollen.client.numpy_client import NumPyClient, NumPyClientAdapter
from pollen.errors import ClientAppError
from pollen.records.context import Context
from pollen.records.messages import TaskKind
from pollen.records.typing import Config, Metrics, NDArrays

ClientFn = Callable[..., Client | NumPyClient]


@dataclass
class Reply:
    """A ClientApp's answer to one task."""

    parameters: NDArrays | None = None
    num_examples: int = 0
    loss: float = 0.0
    metrics: Metrics = field(default_factory=dict)


def _wants_cid(client_fn: ClientFn) -> bool:
    # Older apps write client_fn(cid: str); newer ones client_fn(context: Context).
    try:
        parameters = list(inspect.signature(client_fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if not parameters:
        return False
    first = parameters[0]
    return first.name == "cid" or first.annotation in (str, "str")


class ClientApp:
    """Builds a client per task with ``client_fn`` and runs the task on it.

    ``client_fn(context)`` receives the node's `Context` (``context.node_config``
    holds ``--node-config``) and returns a `NumPyClient` or `Client`.
    """

    def __init__(self, client_fn: ClientFn) -> None:
        if not callable(client_fn):
            raise TypeError("ClientApp(client_fn=...) needs a function returning a client")
        self.client_fn = client_fn
        self._wants_cid = _wants_cid(client_fn)

    def _client(self, context: Context) -> Client:
        made: Any = self.client_fn(str(context.node_id) if self._wants_cid else context)
        if isinstance(made, NumPyClient):
            made.context = context
            return made.to_client()
        if isinstance(made, NumPyClientAdapter):  # client_fn returned NumPyClient.to_client()
            made.numpy_client.context = context
        if isinstance(made, Client):
            made.context = context
            return made
        raise ClientAppError(
            f"client_fn returned a {type(made).__name__}; return a NumPyClient or Client"
        )

    def run_task(
        self, kind: TaskKind, parameters: NDArrays, config: Config, context: Context
    ) -> Reply:
        """Run one task and return its reply."""
        client = self._client(context)
        if kind == "get_parameters":
            return Reply(parameters=client.get_parameters(config))
        if kind == "fit":
            fit = client.fit(parameters, config)
            return Reply(fit.parameters, fit.num_examples, 0.0, fit.metrics)
        evaluation = client.evaluate(parameters, config)
        return Reply(None, evaluation.num_examples, evaluation.loss, evaluation.metrics)
