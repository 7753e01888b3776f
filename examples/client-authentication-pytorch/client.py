"""The ClientApp: trains the CNN on this node's share of CIFAR-10.

Run it with ``pollen client-app client:app ... --node-config partition-id=0,num-partitions=2``.
"""

import time

import torch
from task import Net, get_weights, load_data, set_weights, test, train

from pollen.client import ClientApp, NumPyClient
from pollen.common import Context

# This example runs several SuperNodes on one machine: one core each.
torch.set_num_threads(1)


class CifarClient(NumPyClient):
    def __init__(self, trainloader, valloader, testloader, local_epochs: int) -> None:
        self.net = Net()
        self.trainloader = trainloader
        self.valloader = valloader
        self.testloader = testloader
        self.local_epochs = local_epochs

    def get_parameters(self, config):
        return get_weights(self.net)

    def fit(self, parameters, config):
        set_weights(self.net, parameters)
        started = time.perf_counter()
        results = train(self.net, self.trainloader, self.valloader, epochs=self.local_epochs)
        results["train_seconds"] = time.perf_counter() - started
        return get_weights(self.net), len(self.trainloader.dataset), results

    def evaluate(self, parameters, config):
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.testloader)
        return loss, len(self.testloader.dataset), {"accuracy": accuracy}


def client_fn(context: Context):
    """A client for this node: its partition from --node-config, its data settings from
    --node-config or else --run-config, its epochs from --run-config."""
    trainloader, valloader, testloader = load_data(context.node_config, context.run_config)
    local_epochs = int(context.run_config.get("local-epochs", 1))
    return CifarClient(trainloader, valloader, testloader, local_epochs).to_client()


app = ClientApp(client_fn=client_fn)
