"""Mods: functions that wrap every message a `ClientApp` handles.

``ClientApp(client_fn=..., mods=[fixedclipping_mod])`` runs each message through
``mod(message_type, content, context, call_next)``, the first mod outermost; a mod
calls ``call_next(content, context)`` for the app's own handler and may change what
goes in and what comes out. Flower's names: ``from flwr.client.mod import
fixedclipping_mod`` becomes ``from pollen.client.mod import fixedclipping_mod``.

The clipping mods clip a node's update on the node, for central differential
privacy with client-side clipping: the ServerApp's strategy is wrapped in
``DifferentialPrivacyClientSideFixedClipping`` (or ``...AdaptiveClipping``), which
sends the bound in each fit instruction's config and adds the noise. They use the
same clipping rule as the server-side wrappers
(`pollen.aggregation.dp_clipping`). Put them last in ``mods`` when other mods
change the weights.
"""

from __future__ import annotations

import logging

import numpy as np

from pollen.aggregation.dp_clipping import KEY_CLIPPING_NORM, KEY_NORM_BIT, clip_update
from pollen.client.client_app import Content, Handler
from pollen.errors import ClientAppError, RecordError
from pollen.records import fit_evaluate
from pollen.records.context import Context
from pollen.records.messages import TRAIN, base_type

logger = logging.getLogger(__name__)


def _clipped_fit(
    mod: str, wrapper: str, content: Content, context: Context, call_next: Handler
) -> tuple[Content, bool]:
    """Run the fit, then clip its reply's update to the instruction's bound; the reply
    and whether the update had to be clipped."""
    bound = fit_evaluate.config_of(content).get(KEY_CLIPPING_NORM)
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound > 0:
        raise ClientAppError(
            f"{mod}: the fit instruction's config has {KEY_CLIPPING_NORM}={bound!r:.20}, "
            f"expected a number > 0; wrap the ServerApp's strategy in {wrapper}"
        )
    received = fit_evaluate.model_of(content)
    if received is None:
        raise ClientAppError(f"{mod}: the fit instruction carries no model to clip against")
    # the app may train the arrays it received in place: keep the global model apart
    reference = [np.array(array, copy=True) for array in received]
    reply = call_next(content, context)
    weights = fit_evaluate.model_of(reply)
    if weights is None:
        raise ClientAppError(f"{mod}: the fit reply carries no weights to clip")
    try:
        clipped, was_clipped = clip_update(weights, reference, float(bound))
    except RecordError as exc:
        raise ClientAppError(f"{mod}: the ClientApp {exc}") from None
    reply.arrays[fit_evaluate.ARRAYS] = clipped
    if was_clipped:
        logger.info("%s: update clipped to norm %.4g", mod, bound)
    return reply, was_clipped


def fixedclipping_mod(
    message_type: str, content: Content, context: Context, call_next: Handler
) -> Content:
    """Clip this node's update (its trained weights minus the global model it received)
    to the L2 norm the server sent as ``clipping_norm`` in the fit config.

    For ``DifferentialPrivacyClientSideFixedClipping`` on the server. Messages other
    than ``train`` pass through unchanged.
    """
    if base_type(message_type) != TRAIN:
        return call_next(content, context)
    reply, _ = _clipped_fit(
        "fixedclipping_mod",
        "DifferentialPrivacyClientSideFixedClipping",
        content,
        context,
        call_next,
    )
    return reply


def adaptiveclipping_mod(
    message_type: str, content: Content, context: Context, call_next: Handler
) -> Content:
    """As `fixedclipping_mod`, and report in the fit metrics whether the update had to
    be clipped (``norm_bit``: 1 clipped, 0 not), from which the server adapts the bound.

    For ``DifferentialPrivacyClientSideAdaptiveClipping`` on the server. Messages
    other than ``train`` pass through unchanged.
    """
    if base_type(message_type) != TRAIN:
        return call_next(content, context)
    reply, was_clipped = _clipped_fit(
        "adaptiveclipping_mod",
        "DifferentialPrivacyClientSideAdaptiveClipping",
        content,
        context,
        call_next,
    )
    reply.metrics.setdefault(fit_evaluate.METRICS, {})[KEY_NORM_BIT] = int(was_clipped)
    return reply
