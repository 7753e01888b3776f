"""Model, data and training: the classic small CNN on this node's share of CIFAR-10."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
import torch
from cifar10 import Cifar10, DataError, load, partition
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SEED = 42
BATCH_SIZE = 32
LEARNING_RATE = 0.001
MOMENTUM = 0.9

# One shuffling stream per process: each round's epoch sees the data in a new order,
# and a rerun sees the same orders.
_SHUFFLE = torch.Generator().manual_seed(SEED)
T = TypeVar("T")
_KINDS = {int: "a whole number", float: "a number", str: "text"}


class Net(nn.Module):
    """Two 5x5 convolutions with max-pooling, then 400 -> 120 -> 84 -> 10 (the PyTorch tutorial's
    CIFAR-10 network), with batch normalisation after the first convolution, as most real
    models have: its running statistics travel and are averaged with the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to floats in [-1, 1] (mean 0.5 and deviation 0.5 per channel)."""
    return images.to(DEVICE, torch.float32).div_(127.5).sub_(1.0)


# --- data ---------------------------------------------------------------------------------


def _setting(key: str, default: T, *configs: tuple[str, Mapping[str, object]]) -> T:
    """``key`` from the first of ``configs`` (option name, settings) that has it, else
    ``default``; as the type of ``default``."""
    option, value = next(((name, c[key]) for name, c in configs if key in c), ("", default))
    try:
        return type(default)(value)  # type: ignore[call-arg]
    except (TypeError, ValueError):
        raise DataError(
            f"{option} {key}={value}: expected {_KINDS[type(default)]}, e.g. {key}={default}"
        ) from None


_READING = threading.Lock()


def _archive(data_path: str) -> Cifar10:
    # Read once per process: a simulation runs many nodes in one process, each cutting its
    # own partition out of the same archive; its threads wait for one read, not each do one.
    with _READING:
        return _read_once(data_path)


@functools.lru_cache(maxsize=1)
def _read_once(data_path: str) -> Cifar10:
    return load(data_path or None)


@functools.cache
def _partition(
    data_path: str, partition_id: int, num_partitions: int, partitioning: str, alpha: float
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    # Cut once per node: every task of every run on this node (or virtual node) reuses it.
    part = partition(_archive(data_path), partition_id, num_partitions, partitioning, alpha, SEED)

    def dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))

    return (
        dataset(part.train_images, part.train_labels),
        dataset(part.val_images, part.val_labels),
        dataset(part.test_images, part.test_labels),
    )


def load_data(
    node_config: Mapping[str, object],
    run_config: Mapping[str, object] | None = None,
    batch_size: int = BATCH_SIZE,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """This node's train, validation and test loaders.

    Its partition comes from its ``--node-config``: ``partition-id`` (0) and
    ``num-partitions`` (1). The data settings, ``data-path`` (see cifar10.py),
    ``partitioning`` (``iid`` or ``dirichlet``) and ``alpha`` (0.5, for dirichlet),
    come from its ``--node-config``, else from the run's ``--run-config`` (a
    simulation's virtual nodes have no node config but their partition).
    """
    node = ("--node-config", node_config)
    either = (node, ("--run-config", run_config or {}))
    train, val, test = _partition(
        _setting("data-path", "", *either),
        _setting("partition-id", 0, node),
        _setting("num-partitions", 1, node),
        _setting("partitioning", "iid", *either).lower(),
        _setting("alpha", 0.5, *either),
    )
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=_SHUFFLE),
        DataLoader(val, batch_size=256),
        DataLoader(test, batch_size=256),
    )


# --- training and evaluation -----------------------------------------------------------------


def train(
    net: Net, trainloader: DataLoader, valloader: DataLoader, epochs: int = 1
) -> dict[str, float]:
    """SGD (lr 0.001, momentum 0.9) for ``epochs`` epochs.

    Returns ``train_loss`` and ``train_accuracy`` (over the last epoch, as it ran)
    and ``val_loss`` and ``val_accuracy`` (of the trained model).
    """
    net.to(DEVICE)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    net.train()
    loss_sum, correct, count = 0.0, 0, 0
    for _ in range(epochs):
        loss_sum, correct, count = 0.0, 0, 0
        for images, labels in trainloader:
            labels = labels.to(DEVICE)
            optimizer.zero_grad()
            outputs = net(normalize(images))
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((outputs.argmax(1) == labels).sum().item())
            count += len(labels)
    val_loss, val_accuracy = test(net, valloader)
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_accuracy": correct / max(count, 1),
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
    }


def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """(mean loss, accuracy) of ``net`` on ``loader``."""
    net.to(DEVICE)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            labels = labels.to(DEVICE)
            outputs = net(normalize(images))
            loss += criterion(outputs, labels).item()
            correct += int((outputs.argmax(1) == labels).sum().item())
            count += len(labels)
    return loss / max(count, 1), correct / max(count, 1)


# --- weights as NumPy arrays, the form in which they travel ------------------------------------


def get_weights(net: Net) -> list[np.ndarray]:
    """The state_dict as NumPy arrays, BatchNorm's statistics and its 0-d
    ``num_batches_tracked`` counter included."""
    return [value.cpu().numpy() for value in net.state_dict().values()]


def set_weights(net: Net, weights: list[np.ndarray]) -> None:
    state = net.state_dict()
    check_shapes({name: tuple(value.shape) for name, value in state.items()}, weights)
    net.load_state_dict(
        OrderedDict((k, torch.tensor(v)) for k, v in zip(state, weights, strict=True)), strict=True
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
