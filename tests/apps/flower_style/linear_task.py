"""A tiny NumPy task for the Flower-style apps: linear regression on synthetic data."""

from __future__ import annotations

import numpy as np

TRUE_WEIGHTS = np.array([2.0, -1.0, 0.5], dtype=np.float64)


def load_data(partition_id: int, examples: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Each partition's own points around the same true line."""
    rng = np.random.default_rng(partition_id)
    features = rng.normal(size=(examples, len(TRUE_WEIGHTS)))
    targets = features @ TRUE_WEIGHTS + rng.normal(scale=0.01, size=examples)
    return features, targets


def initial_weights() -> list[np.ndarray]:
    return [np.zeros(len(TRUE_WEIGHTS)), np.zeros(1)]


def loss(weights: list[np.ndarray], features: np.ndarray, targets: np.ndarray) -> float:
    predictions = features @ weights[0] + weights[1][0]
    return float(np.mean((predictions - targets) ** 2))


def train(
    weights: list[np.ndarray], features: np.ndarray, targets: np.ndarray, lr: float, steps: int = 5
) -> list[np.ndarray]:
    w, b = weights[0].copy(), weights[1].copy()
    for _ in range(steps):
        error = features @ w + b[0] - targets
        w -= lr * 2 * features.T @ error / len(targets)
        b -= lr * 2 * error.mean()
    return [w, b]
