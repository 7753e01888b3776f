"""q-Fair Federated Learning (q-FFL, Li et al., ICLR 2020), folded one result at a time.

The update of q-FedAvg as Flower 1.42's legacy ``QFedAvg`` computes it. With
``w`` the model the round started from, ``L`` a loss, ``q`` and the learning
rate ``lr``, each node ``k`` returning ``w_k`` gives

    g_k = (w - w_k) / lr
    delta_k = (L + 1e-10)^q * g_k
    h_k = q * (L + 1e-10)^(q - 1) * |g_k|^2 + (L + 1e-10)^q / lr

and the new model is ``w - sum_k delta_k / sum_k h_k``. The paper uses each
node's own loss ``F_k(w)``; Flower uses one loss for every node, the server-side
evaluation of ``w`` (its ``evaluate_fn``), and so does Pollen's ``QFedAvg``,
which hands it in as ``loss``. Nodes are not weighted by their examples.

Memory: the running sum of the ``delta_k`` (the model's size, in the dtype
the weighted mean accumulates in) and a few MiB of scratch, whatever the nodes.
"""

from __future__ import annotations

import math

import numpy as np

from pollen.aggregation.blocks import Scratch, blocks
from pollen.aggregation.weighted_mean import RunningWeightedMean, _accumulator_dtype
from pollen.records.typing import NDArrays

LOSS_OFFSET = 1e-10
"""Added to the loss before it is raised to a power, as Flower does."""


class QFFLAggregate:
    """Sum of ``delta_k`` and of ``h_k`` over arriving results; `result` is the new model."""

    def __init__(
        self, weights_before: NDArrays, loss: float, q_param: float, learning_rate: float
    ) -> None:
        if not (math.isfinite(loss) and loss >= 0):
            raise ValueError(f"q-FFL needs a finite loss >= 0, got {loss}")
        self._reference = RunningWeightedMean(weights_before)  # for its checks only
        self._before = weights_before
        base = loss + LOSS_OFFSET
        self.loss_power = base**q_param
        """``(L + 1e-10)^q``: each node's gradient is scaled by it."""
        self._lipschitz = q_param * base ** (q_param - 1)
        self._inverse_lr = 1.0 / learning_rate
        self._sums: NDArrays | None = None
        self._scratch = Scratch()
        self.h_total = 0.0
        """``sum_k h_k`` so far."""
        self.count = 0

    def add(self, arrays: NDArrays) -> None:
        """Fold one node's returned weights in; RecordError if they do not fit the model."""
        self._reference.check(arrays)
        if self._sums is None:
            self._sums = [np.zeros(a.shape, _accumulator_dtype(a.dtype)) for a in self._before]
        squared_norm = 0.0
        for total, before, new in zip(self._sums, self._before, arrays, strict=True):
            flat_total = total.reshape(-1)
            flat_before = np.asarray(before).reshape(-1)
            flat_new = np.asarray(new).reshape(-1)
            for block in blocks(flat_total.size):
                size = block.stop - block.start
                grad = self._scratch.get(total.dtype, 0, size)
                np.copyto(grad, flat_before[block], casting="same_kind")
                np.subtract(grad, flat_new[block], out=grad, casting="same_kind")
                grad *= self._inverse_lr
                squared_norm += float(np.vdot(grad, grad).real)
                grad *= self.loss_power
                flat_total[block] += grad
        self.h_total += self._lipschitz * squared_norm + self._inverse_lr * self.loss_power
        self.count += 1

    def result(self) -> NDArrays | None:
        """The new model (None when nothing was folded in); call once."""
        if self._sums is None:
            return None
        out: NDArrays = []
        for total, before in zip(self._sums, self._before, strict=True):
            total /= self.h_total
            np.subtract(before, total, out=total, casting="same_kind")
            if before.dtype.kind in "biu":
                out.append(np.asarray(np.rint(total.real)).astype(before.dtype))
            else:
                out.append(total.astype(before.dtype, copy=False))
        self._sums = None
        return out
