"""The quickstart's ClientApp: trains the digits CNN on this node's partition."""

import torch
from task import get_weights, load_data, new_model, set_weights, test, train

from pollen.client import ClientApp, NumPyClient
from pollen.common import Context

torch.set_num_threads(1)  # several nodes share this machine's cores


class DigitsClient(NumPyClient):
    def __init__(self, trainloader, testloader) -> None:
        self.net = new_model()
        self.trainloader = trainloader
        self.testloader = testloader

    def get_parameters(self, config):
        return get_weights(self.net)

    def fit(self, parameters, config):
        set_weights(self.net, parameters)
        loss = train(self.net, self.trainloader, epochs=int(config.get("local-epochs", 1)))
        return get_weights(self.net), len(self.trainloader.dataset), {"train_loss": loss}

    def evaluate(self, parameters, config):
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.testloader)
        return loss, len(self.testloader.dataset), {"accuracy": accuracy}


def client_fn(context: Context):
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", 1))
    trainloader, testloader = load_data(partition_id, num_partitions)
    return DigitsClient(trainloader, testloader).to_client()


app = ClientApp(client_fn=client_fn)
