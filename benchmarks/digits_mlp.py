"""The convergence workload of ``strategies.py``: a NumPy MLP on the 8x8 digits, non-IID.

NumPy only, so that Flower's venv (``peers/flower_strategies.py converge``) runs
the very same training as Pollen's side. The data come in as arrays (Pollen's
side loads scikit-learn's bundled digits and hands them over).

- **Split**: 20% of the digits (stratified, fixed seed) are the server's test
  set; the rest is split over the nodes class by class with Dirichlet(alpha)
  proportions (alpha = 0.1: most nodes hold two or three classes), drawn again
  until every node holds at least ``MIN_EXAMPLES`` examples.
- **Model**: 64 -> 32 (ReLU) -> 10 (softmax), float32, He-initialised with a fixed seed.
- **Local training**: ``EPOCHS`` epochs of plain SGD (``LR``, batches of
  ``BATCH``) on the node's data, shuffled by a generator seeded with the node and
  the round (the round comes in the fit config as ``server_round``); with a
  ``proximal_mu`` in the config (FedProx) the gradient gains mu x (w - w_global).
- **Evaluation**: accuracy and mean cross-entropy of the global model on the
  test set, on the server (a strategy's ``evaluate_fn``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SEED = 2024
HIDDEN = 32
EPOCHS = 2
BATCH = 16
LR = 0.1
MIN_EXAMPLES = 10

Arrays = list[np.ndarray]


def split(
    images: np.ndarray, labels: np.ndarray, nodes: int, alpha: float, seed: int = SEED
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """(each node's (x, y), the test set (x, y)); x: float32 rows of 64 pixels in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[: round(0.2 * np.sum(y == c))] for c in range(10)]
    )
    train = np.setdiff1d(np.arange(len(y)), test)
    while True:
        shares: list[list[int]] = [[] for _ in range(nodes)]
        for c in range(10):
            members = rng.permutation(train[y[train] == c])
            cuts = (np.cumsum(rng.dirichlet([alpha] * nodes)) * len(members)).astype(int)[:-1]
            for node, part in enumerate(np.split(members, cuts)):
                shares[node].extend(part.tolist())
        if min(len(s) for s in shares) >= MIN_EXAMPLES:
            break
    parts = [(x[np.array(s)], y[np.array(s)]) for s in shares]
    return parts, (x[test], y[test])


def initial_model(seed: int = SEED) -> Arrays:
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0.0, np.sqrt(2.0 / 64), (64, HIDDEN))).astype(np.float32),
        np.zeros(HIDDEN, np.float32),
        (rng.normal(0.0, np.sqrt(2.0 / HIDDEN), (HIDDEN, 10))).astype(np.float32),
        np.zeros(10, np.float32),
    ]


def _forward(w: Arrays, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.maximum(x @ w[0] + w[1], 0.0)
    logits = hidden @ w[2] + w[3]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return hidden, probabilities


def train(
    weights: Arrays, x: np.ndarray, y: np.ndarray, config: Mapping[str, Any], node: int
) -> Arrays:
    """The node's new weights after local SGD from ``weights`` (which are left as they are)."""
    w = [np.array(a, np.float32) for a in weights]
    anchor = [a.copy() for a in w]
    mu = float(config.get("proximal_mu", 0.0))
    rng = np.random.default_rng([SEED, node, int(config.get("server_round", 0))])
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            xb, yb = x[batch], y[batch]
            hidden, probabilities = _forward(w, xb)
            error = probabilities
            error[np.arange(len(yb)), yb] -= 1.0
            error /= len(yb)
            back = (error @ w[2].T) * (hidden > 0)
            grads = [xb.T @ back, back.sum(axis=0), hidden.T @ error, error.sum(axis=0)]
            for k, g in enumerate(grads):
                if mu:
                    g = g + mu * (w[k] - anchor[k])
                w[k] -= np.float32(LR) * g.astype(np.float32)
    return w


def evaluate(weights: Arrays, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``weights`` on (x, y)."""
    w = [np.asarray(a, np.float32) for a in weights]
    _, probabilities = _forward(w, x)
    loss = float(-np.mean(np.log(probabilities[np.arange(len(y)), y] + 1e-12)))
    return loss, float(np.mean(probabilities.argmax(axis=1) == y))
