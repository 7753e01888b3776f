"""The quickstart's ClientApp (examples/quickstart-pytorch, imported, not copied), timed.

Each fit reply carries, in its metrics, when (``time.perf_counter()``: Linux's monotonic
clock, the same in every process of the machine) the message's ``client_fn`` started
(``bench-app-start``) and when its ``NumPyClient.fit`` started and ended
(``bench-fit-start``, ``bench-fit-end``), so that the ServerApp can tell how much of a
round ran outside training, whichever backend ran the node (a thread, a worker process).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart-pytorch"
sys.path.insert(0, str(EXAMPLE))

import client  # noqa: E402  (the example's client.py)
import task  # noqa: E402  (the example's task.py)

from pollen import ClientApp, Context  # noqa: E402
from pollen.records.typing import Config, Metrics, NDArrays  # noqa: E402

SPAN_KEYS = ("bench-app-start", "bench-fit-start", "bench-fit-end")

_started = threading.local()  # client_fn and fit of one message run in one thread


def _timed_client_fn(context: Context) -> Any:
    _started.at = time.perf_counter()
    return client.client_fn(context)


_fit = client.DigitsClient.fit


def _timed_fit(
    self: client.DigitsClient, parameters: NDArrays, config: Config
) -> tuple[NDArrays, int, Metrics]:
    start = time.perf_counter()
    weights, count, metrics = _fit(self, parameters, config)
    times = (getattr(_started, "at", start), start, time.perf_counter())
    return weights, count, {**metrics, **dict(zip(SPAN_KEYS, times, strict=True))}


client.DigitsClient.fit = _timed_fit  # type: ignore[method-assign]
app = ClientApp(client_fn=_timed_client_fn)


def initial_model() -> NDArrays:
    """The model the example's ServerApp starts from."""
    return task.get_weights(task.new_model())  # type: ignore[no-any-return]


def fit_config(server_round: int) -> Config:
    """The example's ServerApp's fit config: two local epochs."""
    return {"local-epochs": 2}
