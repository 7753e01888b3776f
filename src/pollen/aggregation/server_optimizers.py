"""Server-side optimizers: the step from the current global model and the round's mean.

FedAvgM (Hsu et al., 2019) and the FedOpt family (Reddi et al., "Adaptive
Federated Optimization", 2021) treat the nodes' weighted mean as a
pseudo-gradient and take an optimizer step with it on the server. Each rule
here follows Flower 1.42's legacy strategy of that name, its quirks included:

- `ServerMomentum` (FedAvgM): ``g = x - mean``; momentum ``m = mu * m + g``, with
  ``m = g`` the first time; ``x <- x - lr * m``.
- `ServerAdagrad`, `ServerAdam`, `ServerYogi` (FedAdagrad, FedAdam, FedYogi):
  ``d = mean - x``; ``m = beta_1 * m + (1 - beta_1) * d`` with ``m`` starting at
  zero; ``v`` per rule (below); ``x <- x + eta * m / (sqrt(v) + tau)``. FedAdam
  scales ``eta`` by ``sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` for round
  ``t``: Flower's bias correction counts from round + 1, so does this one.

The state (momentum, moments) lives in the optimizer object, which a strategy
keeps across rounds. Arrays are processed block by block: besides the state,
a step needs a few MiB of scratch whatever the model, and it writes the new
model over the mean it is given.

Precision: the state has the dtype the weighted mean accumulates in (float32
for float16/float32 models, float64 for float64 and integer ones), and the new
model keeps the model's dtype (integer arrays are rounded back). Flower's
FedAdam returns float64 arrays for a float32 model from round 1 on (numpy
promotes them through its ``np.float64`` step size); Pollen keeps float32, and
the values agree to float32 precision.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from pollen.aggregation.blocks import Scratch, blocks
from pollen.aggregation.weighted_mean import _accumulator_dtype
from pollen.records.typing import NDArray, NDArrays


class ServerOptimizer(ABC):
    """One step per round from the current model ``x`` and the round's weighted mean."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate

    def step(self, server_round: int, current: NDArrays, mean: NDArrays) -> NDArrays:
        """The new global model, written over ``mean`` (a writable, contiguous array
        of it is not copied); ``current`` is only read."""
        if len(current) != len(mean):
            raise ValueError(f"the model has {len(current)} arrays, the mean {len(mean)}")
        self._begin(server_round, mean)
        scratch = Scratch()
        result: NDArrays = []
        for index, (x, given) in enumerate(zip(current, mean, strict=True)):
            if x.shape != given.shape:
                raise ValueError(f"array {index}: model shape {x.shape}, mean shape {given.shape}")
            out = np.require(given, requirements=["C", "W"])  # no copy for our own means
            result.append(out)
            dtype = _accumulator_dtype(out.dtype)
            flat_x = np.asarray(x).reshape(-1)
            flat_out = out.reshape(-1)  # the mean is contiguous: a view
            rounded = out.dtype.kind in "biu"
            for block in blocks(flat_out.size):
                size = block.stop - block.start
                x_block = scratch.get(dtype, 0, size)
                np.copyto(x_block, flat_x[block], casting="same_kind")
                work = scratch.get(dtype, 1, size)
                np.copyto(work, flat_out[block], casting="same_kind")
                temps = (scratch.get(dtype, 2, size), scratch.get(dtype, 3, size))
                self._update(index, block, x_block, work, temps)
                flat_out[block] = np.rint(work.real) if rounded else work
        return result

    @abstractmethod
    def _begin(self, server_round: int, mean: NDArrays) -> None:
        """Prepare the round: create the state on first use, compute step sizes."""

    @abstractmethod
    def _update(
        self,
        index: int,
        block: slice,
        x: NDArray,
        work: NDArray,
        temps: tuple[NDArray, NDArray],
    ) -> None:
        """Turn ``work`` (one block of the mean) into the same block of the new model;
        ``x`` is the current model's block, ``temps`` scratch of the same size."""


def _zeros_like(arrays: NDArrays) -> NDArrays:
    return [np.zeros(a.shape, _accumulator_dtype(a.dtype)) for a in arrays]


class ServerMomentum(ServerOptimizer):
    """FedAvgM's server SGD with heavy-ball momentum (no Nesterov), as in torch.optim.SGD.

    ``g = x - mean``; with ``momentum > 0``: ``m = momentum * m + g`` (``m = g`` the
    first time), ``g = m``; then ``x <- x - learning_rate * g``.
    """

    def __init__(self, learning_rate: float, momentum: float) -> None:
        super().__init__(learning_rate)
        self.momentum = momentum
        self.momentum_vector: NDArrays | None = None
        """The momentum buffer, None until the first step."""
        self._first = False

    def _begin(self, server_round: int, mean: NDArrays) -> None:
        self._first = self.momentum_vector is None
        if self.momentum > 0.0 and self.momentum_vector is None:
            self.momentum_vector = _zeros_like(mean)

    def _update(
        self,
        index: int,
        block: slice,
        x: NDArray,
        work: NDArray,
        temps: tuple[NDArray, NDArray],
    ) -> None:
        np.subtract(x, work, out=work)  # the pseudo-gradient x - mean
        if self.momentum_vector is not None:
            buffer = self.momentum_vector[index].reshape(-1)[block]
            if self._first:
                buffer[...] = work
            else:
                buffer *= self.momentum
                buffer += work
            work[...] = buffer
        work *= self.learning_rate
        np.subtract(x, work, out=work)


class AdaptiveOptimizer(ServerOptimizer):
    """The FedOpt family: first moment ``m``, second moment ``v`` per rule, step
    ``x + eta * m / (sqrt(v) + tau)``."""

    def __init__(self, eta: float, beta_1: float, beta_2: float, tau: float) -> None:
        super().__init__(eta)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.tau = tau
        self.m_t: NDArrays | None = None
        """First moment, None until the first step."""
        self.v_t: NDArrays | None = None
        """Second moment, None until the first step."""
        self._eta = eta

    def _begin(self, server_round: int, mean: NDArrays) -> None:
        if self.m_t is None:
            self.m_t = _zeros_like(mean)
        if self.v_t is None:
            self.v_t = _zeros_like(mean)
        self._eta = self.step_size(server_round)

    def step_size(self, server_round: int) -> float:
        """The step size of round ``server_round``."""
        return self.learning_rate

    def _update(
        self,
        index: int,
        block: slice,
        x: NDArray,
        work: NDArray,
        temps: tuple[NDArray, NDArray],
    ) -> None:
        assert self.m_t is not None and self.v_t is not None, "created by _begin"
        delta = work
        np.subtract(delta, x, out=delta)  # d = mean - x
        m = self.m_t[index].reshape(-1)[block]
        v = self.v_t[index].reshape(-1)[block]
        first, second = temps
        m *= self.beta_1
        np.multiply(delta, 1 - self.beta_1, out=first)
        m += first
        self._second_moment(v, delta, first, second)
        # x + eta * m / (sqrt(v) + tau), into work
        np.sqrt(v, out=first)
        first += self.tau
        np.multiply(m, self._eta, out=work)
        work /= first
        work += x

    @abstractmethod
    def _second_moment(self, v: NDArray, delta: NDArray, first: NDArray, second: NDArray) -> None:
        """Update ``v`` in place from ``delta``; ``first`` and ``second`` are scratch."""


class ServerAdagrad(AdaptiveOptimizer):
    """FedAdagrad: ``v = v + d^2``."""

    def _second_moment(self, v: NDArray, delta: NDArray, first: NDArray, second: NDArray) -> None:
        np.multiply(delta, delta, out=first)
        v += first


class ServerAdam(AdaptiveOptimizer):
    """FedAdam: ``v = beta_2 * v + (1 - beta_2) * d^2``; the step size is bias-corrected
    with ``server_round + 1`` as Flower 1.42 does."""

    def step_size(self, server_round: int) -> float:
        t = server_round + 1.0
        correction = math.sqrt(1 - math.pow(self.beta_2, t)) / (1 - math.pow(self.beta_1, t))
        return self.learning_rate * correction

    def _second_moment(self, v: NDArray, delta: NDArray, first: NDArray, second: NDArray) -> None:
        v *= self.beta_2
        np.multiply(delta, delta, out=first)
        first *= 1 - self.beta_2
        v += first


class ServerYogi(AdaptiveOptimizer):
    """FedYogi: ``v = v - (1 - beta_2) * d^2 * sign(v - d^2)``."""

    def _second_moment(self, v: NDArray, delta: NDArray, first: NDArray, second: NDArray) -> None:
        np.multiply(delta, delta, out=first)
        np.subtract(v, first, out=second)
        np.sign(second, out=second)
        first *= 1 - self.beta_2
        first *= second
        v -= first
