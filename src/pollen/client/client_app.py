"""`ClientApp`: what a SuperNode runs for each message it receives."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pollen.client.client import Client
from pollen.client.numpy_client import NumPyClient, NumPyClientAdapter
from pollen.errors import ClientAppError
from pollen.records import fit_evaluate
from pollen.records.context import Context
from pollen.records.messages import EVALUATE, TRAIN, Records, base_type, check_message_type
from pollen.records.typing import NDArrays

ClientFn = Callable[..., Client | NumPyClient]

Content = Records[NDArrays]
"""A message's content inside an app: array records decoded into numpy arrays."""

Handler = Callable[[Content, Context], Content]
"""Does the work one message asks for: its content in, the reply's content out."""

Mod = Callable[[str, Content, Context, Handler], Content]
"""Wraps every handler call: ``mod(message_type, content, context, call_next)`` may
change the content on its way in, call ``call_next(content, context)``, and change
the reply's content on its way out (``pollen.client.mod.fixedclipping_mod``)."""


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


def _cid(context: Context) -> str:
    """What a ``client_fn(cid)`` gets: the node's partition in a simulation ("0".."N-1",
    as Flower's), else its node id."""
    partition = context.node_config.get("partition-id")
    return str(partition if partition is not None else context.node_id)


def _through(mod: Mod, message_type: str, call_next: Handler) -> Handler:
    return lambda content, context: mod(message_type, content, context, call_next)


class ClientApp:
    """Runs each message a node receives through the handler registered for its type.

    ``ClientApp(client_fn=...)`` registers the 1.8-era handlers: ``client_fn(context)``
    receives the node's `Context` (``context.node_config`` holds ``--node-config``)
    and returns a `NumPyClient` or `Client` (an older ``client_fn(cid: str)`` gets the
    node's ``partition-id`` as cid where its node_config has one, as in a simulation,
    else its node id), whose ``fit``, ``evaluate`` and
    ``get_parameters`` answer ``train``, ``evaluate`` and ``query.get_parameters``
    messages.

    ``mods`` wrap every handler call, the first one outermost (as Flower's).
    """

    def __init__(
        self, client_fn: ClientFn | None = None, mods: Sequence[Mod] | None = None
    ) -> None:
        self._handlers: dict[str, Handler] = {}
        self.mods = list(mods or ())
        self.client_fn = client_fn
        if client_fn is None:
            return
        if not callable(client_fn):
            raise TypeError("ClientApp(client_fn=...) needs a function returning a client")
        self._wants_cid = _wants_cid(client_fn)
        self.register(fit_evaluate.GET_PARAMETERS, self._get_parameters)
        self.register(TRAIN, self._fit)
        self.register(EVALUATE, self._evaluate)

    def register(self, message_type: str, handler: Handler) -> None:
        """Answer messages of ``message_type`` (``train``, or ``train.action`` for one
        action only) with ``handler``."""
        message_type = check_message_type(message_type)
        if message_type in self._handlers:
            raise ClientAppError(f"this ClientApp already handles {message_type!r} messages")
        self._handlers[message_type] = handler

    def handler_for(self, message_type: str) -> Handler:
        """The handler of ``message_type``, else of its kind (``train`` for ``train.x``)."""
        handler = self._handlers.get(message_type) or self._handlers.get(base_type(message_type))
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise ClientAppError(
                f"this ClientApp does not handle {message_type!r} messages (it handles: {known})"
            )
        return handler

    def handle(self, message_type: str, content: Content, context: Context) -> Content:
        """Run one message, through the mods, and return the content of its reply."""
        call = self.handler_for(message_type)
        for mod in reversed(self.mods):
            call = _through(mod, message_type, call)
        return call(content, context)

    # The 1.8-era handlers: a fresh client per message, as Flower builds one.
    def _client(self, context: Context) -> Client:
        assert self.client_fn is not None, "registered with a client_fn only"
        made: Any = self.client_fn(_cid(context) if self._wants_cid else context)
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

    def _get_parameters(self, content: Content, context: Context) -> Content:
        client = self._client(context)
        return fit_evaluate.parameters_reply(client.get_parameters(fit_evaluate.config_of(content)))

    def _fit(self, content: Content, context: Context) -> Content:
        client = self._client(context)
        model = fit_evaluate.model_of(content) or []
        result = client.fit(model, fit_evaluate.config_of(content))
        return fit_evaluate.fit_reply(result)

    def _evaluate(self, content: Content, context: Context) -> Content:
        client = self._client(context)
        model = fit_evaluate.model_of(content) or []
        result = client.evaluate(model, fit_evaluate.config_of(content))
        return fit_evaluate.evaluate_reply(result)
