"""The seed's client.py, Flower 1.8 style: module-level model and data, client_fn(cid)."""

import pollen as fl
from pollen.common import NDArrays, Scalar
from tests.apps.flower_style.linear_task import initial_weights, load_data, loss, train

# Load model and data (once per process, as the seed does)
weights = initial_weights()
features, targets = load_data(partition_id=0)
valfeatures, valtargets = load_data(partition_id=99, examples=20)

seen_cids: list = []


# Define Flower client and client_fn
class FlowerClient(fl.client.NumPyClient):
    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return weights

    def fit(self, parameters, config):
        new = train(parameters, features, targets, lr=0.1)
        results = {
            "train_loss": loss(new, features, targets),
            "train_accuracy": 1.0 / (1.0 + loss(new, features, targets)),
            "val_loss": loss(new, valfeatures, valtargets),
            "val_accuracy": 1.0 / (1.0 + loss(new, valfeatures, valtargets)),
        }
        return new, len(features), results

    def evaluate(self, parameters, config):
        value = loss(parameters, valfeatures, valtargets)
        return value, len(valfeatures), {"accuracy": 1.0 / (1.0 + value)}


def client_fn(cid: str):
    seen_cids.append(cid)
    return FlowerClient().to_client()


# Run via `pollen client-app client:app`
app = fl.client.ClientApp(
    client_fn=client_fn,
)
