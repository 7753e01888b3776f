"""Model, data and training for the quickstart: a small CNN on scikit-learn's 8x8 digits."""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SEED = 42


class Net(nn.Module):
    """Two 3x3 convolutions (the first batch-normalised) and two linear layers for 1x8x8
    images, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def new_model() -> Net:
    """The same initial weights on every process."""
    torch.manual_seed(SEED)
    return Net()


@functools.lru_cache(maxsize=1)
def _digits_split() -> list[np.ndarray]:
    # Read once per process: a node builds its client for every task, and a simulation
    # runs many nodes in one process (re-reading took most of a 100-node round).
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return train_test_split(
        images, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target
    )


def load_data(partition_id: int, num_partitions: int, batch_size: int = 32):
    """This node's share of the digits: a train and a test loader (IID, fixed seed)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1}; "
            "set --node-config partition-id=K,num-partitions=N with K < N"
        )
    x_train, x_test, y_train, y_test = _digits_split()
    order = np.random.default_rng(SEED).permutation(len(x_train))
    mine = np.array_split(order, num_partitions)[partition_id]
    test_mine = np.array_split(np.arange(len(x_test)), num_partitions)[partition_id]
    train = TensorDataset(torch.from_numpy(x_train[mine]), torch.from_numpy(y_train[mine]))
    test = TensorDataset(torch.from_numpy(x_test[test_mine]), torch.from_numpy(y_test[test_mine]))
    generator = torch.Generator().manual_seed(SEED + partition_id)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(test, batch_size=256),
    )


def train(net: Net, loader: DataLoader, epochs: int, lr: float = 0.05) -> float:
    """Train with SGD (momentum 0.9); return the mean loss of the last epoch."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    net.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            count += len(labels)
    return total / max(count, 1)


def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """Return (mean loss, accuracy) on ``loader``."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (outputs.argmax(1) == labels).sum().item()
            count += len(labels)
    return loss / max(count, 1), correct / max(count, 1)


def named_weights(net: Net) -> dict[str, np.ndarray]:
    """The state_dict as NumPy arrays: BatchNorm's running statistics and its
    ``num_batches_tracked`` (a 0-d int64 array) included. Given to FedAvg as
    ``initial_parameters``, the names label the arrays of the saved models."""
    return {name: value.cpu().numpy() for name, value in net.state_dict().items()}


def get_weights(net: Net) -> list[np.ndarray]:
    return list(named_weights(net).values())


def set_weights(net: Net, weights: list[np.ndarray]) -> None:
    state = net.state_dict()
    check_shapes({name: tuple(value.shape) for name, value in state.items()}, weights)
    net.load_state_dict(
        OrderedDict((k, torch.tensor(w)) for k, w in zip(state, weights, strict=True))
    )


def check_shapes(mine: dict[str, tuple[int, ...]], weights: list[np.ndarray]) -> None:
    """Say which array of the run's model does not fit this model (instead of zip's
    'argument 2 is longer than argument 1')."""
    theirs = [tuple(np.shape(w)) for w in weights]
    if list(mine.values()) == theirs:
        return
    problem = f"it has {len(theirs)} arrays, this ClientApp's model {len(mine)}"
    for index, (name, shape) in enumerate(mine.items()):
        if index < len(theirs) and theirs[index] != shape:
            problem = f"array {index} ({name}) is {theirs[index]} there, {shape} here"
            break
    raise ValueError(
        f"the run's model does not fit this ClientApp's model: {problem}; "
        "run the ClientApp that belongs to the ServerApp"
    )
