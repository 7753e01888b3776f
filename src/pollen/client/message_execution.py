"""Running one message on a `ClientApp`: the rule every way of reaching a node shares.

A SuperNode (over the Fleet API) and an in-process Grid (tests, simulation) both
hand a message's decoded arrays to `execute` and store what it returns. A
failing ClientApp becomes an error reply, never a dead node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pollen.client.client_app import ClientApp, Content
from pollen.errors import ClientAppError, PollenError, RecordError
from pollen.records.arrays import ArrayBytes
from pollen.records.context import Context
from pollen.records.messages import BlobRef, Message, Records
from pollen.records.typing import NDArrays, to_scalars

logger = logging.getLogger(__name__)


@dataclass
class Execution:
    """What one message produced: the reply's arrays, laid out for sending, and its
    other records (its array records are filled in once the arrays are stored)."""

    arrays: dict[str, ArrayBytes] = field(default_factory=dict)
    content: Records[BlobRef] = field(default_factory=Records)
    error: str = ""


def _encoded(content: Content) -> Execution:
    try:
        metrics = {name: to_scalars(values) for name, values in content.metrics.items()}
        configs = {name: to_scalars(values) for name, values in content.configs.items()}
    except RecordError as exc:
        raise ClientAppError(f"the reply's records are not valid: {exc}") from exc
    # sent straight from the app's arrays: each chunk is copied once, into its message
    arrays = {name: ArrayBytes(values) for name, values in content.arrays.items()}
    return Execution(arrays, Records(metrics=metrics, configs=configs))


def execute(
    app: ClientApp, message: Message, arrays: dict[str, NDArrays], context: Context
) -> Execution:
    """Run ``message`` (its array records decoded into ``arrays``) on ``app``."""
    content: Content = Records(
        arrays=arrays,
        metrics=message.content.metrics,
        configs=message.content.configs,
    )
    try:
        return _encoded(app.handle(message.message_type, content, context))
    except PollenError as exc:
        return Execution(error=str(exc))
    except Exception as exc:  # the user's code failed: report it, keep the node alive
        logger.exception(
            "ClientApp failed on a %s message of run %d", message.message_type, message.run_id
        )
        return Execution(error=f"ClientApp raised {type(exc).__name__}: {exc}")
