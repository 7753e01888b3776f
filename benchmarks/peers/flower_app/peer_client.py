"""The Flower ClientApp of the peer benchmarks (runs inside Flower's own venv).

``train`` hands the model back: unchanged when the run config says
``perturb = false`` (round latency, like Pollen's ``noop_client``), or with one
element increased by one and the last set from the node's id (throughput and
memory, like ``perturb_client``), so that every result differs from the global
model and from the other nodes' results, as real training does.
``evaluate`` reports zero loss.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    if context.run_config["perturb"]:
        # What a NumPyClient does: arrays to NumPy, change them, arrays back.
        ndarrays = arrays.to_numpy_ndarrays()
        if not ndarrays[0].flags.writeable:
            ndarrays[0] = ndarrays[0].copy()
        ndarrays[0].reshape(-1)[0] += 1
        if not ndarrays[-1].flags.writeable:
            ndarrays[-1] = ndarrays[-1].copy()
        ndarrays[-1].reshape(-1)[-1] = context.node_id % (1 << 24)
        arrays = ArrayRecord(ndarrays)
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 1, "loss": 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
