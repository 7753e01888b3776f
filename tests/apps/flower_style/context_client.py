"""A Flower-style ClientApp with client_fn(context): the node's partition from its node config,
the learning rate from the server's on_fit_config_fn."""

from pollen.client import ClientApp, NumPyClient
from pollen.common import Context, Metrics, NDArrays, Scalar
from tests.apps.flower_style.linear_task import initial_weights, load_data, loss, train


class LinearClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.features, self.targets = load_data(partition_id)

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return initial_weights()

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, Metrics]:
        lr = float(config["lr"])
        new = train(parameters, self.features, self.targets, lr=lr)
        return (
            new,
            len(self.targets),
            {"train_loss": loss(new, self.features, self.targets), "lr": lr},
        )

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, Metrics]:
        value = loss(parameters, self.features, self.targets)
        return value, len(self.targets), {"mse": value, "round": config["server_round"]}


def client_fn(context: Context):
    partition_id = int(context.node_config["partition-id"])
    return LinearClient(partition_id).to_client()


app = ClientApp(client_fn=client_fn)
