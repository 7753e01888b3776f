"""Differential privacy's rules: clip each update, noise the aggregate, adapt the bound.

Central DP for federated learning (McMahan et al., 2018, "Learning Differentially
Private Recurrent Language Models"): each node's update (its weights minus the
global model) is scaled down to an L2 norm of at most ``clipping_norm``, the
clipped updates are aggregated, and Gaussian noise of standard deviation
``noise_multiplier * clipping_norm / num_sampled_clients`` is added to the
aggregate. Adaptive clipping (Andrew et al., 2021, "Differentially Private
Learning with Adaptive Clipping") moves the bound towards a quantile of the
update norms, from a noised count of the updates it left unclipped.

Plain computations over arriving updates, written once: the server-side
wrappers (`pollen.server.strategy.dp_fixed_clipping`, `.dp_adaptive_clipping`)
and the node's clipping mods (`pollen.client.mod`) call them. Every function
works block by block, so that no model-sized temporary is made: clipping an
update changes the result's own arrays (a read-only or non-contiguous array
is copied first), noise is drawn a block at a time.

The norm is that of all arrays flattened into one vector (Flower's "flat
clipping"). Integer and bool arrays (a BatchNorm counter) are clipped and
noised like the others, in float64, and rounded back to their dtype: their
part of an update may then exceed the bound by the rounding (at most 0.5 per
element), and noise of a standard deviation well under 1 mostly rounds away.
For a formal guarantee, keep such counters out of the arrays a node returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from pollen.aggregation.model_shape import check_fits
from pollen.errors import ConfigurationError, RecordError
from pollen.records.typing import NDArray, NDArrays

KEY_CLIPPING_NORM = "clipping_norm"
"""Fit-config key of the bound a node clips its update to (Flower's name)."""
KEY_NORM_BIT = "norm_bit"
"""Fit-metrics key of a node's report that its update was clipped: 1 clipped, 0 not
(Flower's name and meaning)."""

_BLOCK = 1 << 18
"""Elements per step: the scratch memory stays a few MiB whatever the model."""


def _blocks(arrays: NDArrays, reference: NDArrays) -> Iterator[tuple[NDArray, NDArray]]:
    """Matching float64 blocks of ``arrays`` and ``reference`` (flattened)."""
    check_fits(arrays, [tuple(r.shape) for r in reference])
    for array, ref in zip(arrays, reference, strict=True):
        flat, flat_ref = np.asarray(array).reshape(-1), np.asarray(ref).reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            end = min(start + _BLOCK, flat.size)
            yield flat[start:end].astype(np.float64), flat_ref[start:end]


def _sum_of_squares(values: NDArray) -> float:
    return float(np.vdot(values, values).real)


def update_norm(arrays: NDArrays, reference: NDArrays) -> float:
    """The L2 norm of ``arrays - reference``, all arrays flattened into one vector."""
    total = 0.0
    for block, ref in _blocks(arrays, reference):
        block -= ref
        total += _sum_of_squares(block)
    return math.sqrt(total)


def _writable(array: NDArray) -> NDArray:
    """``array`` itself when it can be changed in place through a flat view, else a copy."""
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


def _store(target: NDArray, values: NDArray) -> None:
    """Write float64 ``values`` into ``target``, rounding for integer and bool dtypes."""
    kind = target.dtype.kind
    if kind == "b":
        target[...] = values > 0.5
    elif kind in "iu":
        info = np.iinfo(target.dtype)
        target[...] = np.clip(np.rint(values), info.min, info.max)
    else:
        target[...] = values


def clip_update(
    arrays: NDArrays, reference: NDArrays, clipping_norm: float
) -> tuple[NDArrays, bool]:
    """``reference + update * min(1, clipping_norm / |update|)`` with ``update = arrays -
    reference``, and whether the update was clipped (its norm exceeded the bound).

    ``arrays`` are changed in place (a read-only one is copied); a shape that does
    not match ``reference`` is a `RecordError`.
    """
    norm = update_norm(arrays, reference)
    if norm <= clipping_norm:
        return arrays, False
    scale = clipping_norm / norm
    clipped = [_writable(np.asarray(a)) for a in arrays]
    for array, ref in zip(clipped, reference, strict=True):
        flat, flat_ref = array.reshape(-1), np.asarray(ref).reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            end = min(start + _BLOCK, flat.size)
            block = flat[start:end].astype(np.float64)
            block -= flat_ref[start:end]
            block *= scale
            block += flat_ref[start:end]
            _store(flat[start:end], block)
    return clipped, True


def check_clipped(arrays: NDArrays, reference: NDArrays, clipping_norm: float) -> float:
    """The norm of ``arrays - reference``; `RecordError` if it exceeds ``clipping_norm``
    by more than the rounding of a node that wrote ``reference + clipped update`` in the
    arrays' dtypes (machine epsilon times each float array's norm, 0.5 per integer or
    bool element)."""
    norm = update_norm(arrays, reference)
    if norm > clipping_norm and norm > clipping_norm * (1 + 1e-9) + _rounding(arrays):
        raise RecordError(
            f"its update has norm {norm:.6g}, above clipping_norm={clipping_norm:.6g}: the "
            "node did not clip it; add fixedclipping_mod (or adaptiveclipping_mod) to its "
            "ClientApp's mods"
        )
    return norm


def _rounding(arrays: NDArrays) -> float:
    slack = 0.0
    rounded_elements = 0
    for array in arrays:
        flat = np.asarray(array).reshape(-1)
        if flat.dtype.kind not in "fc":
            rounded_elements += flat.size
            continue
        total = 0.0
        for start in range(0, flat.size, _BLOCK):
            total += _sum_of_squares(flat[start : start + _BLOCK].astype(np.float64))
        slack += float(np.finfo(flat.dtype).eps) * math.sqrt(total)
    return slack + 0.5 * math.sqrt(rounded_elements)


def noise_stddev(noise_multiplier: float, clipping_norm: float, num_sampled_clients: int) -> float:
    """The standard deviation of the noise added to the aggregate (Flower's formula):
    ``noise_multiplier * clipping_norm / num_sampled_clients``."""
    return noise_multiplier * clipping_norm / num_sampled_clients


def _noise_dtype(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    return np.float32 if dtype.kind in "fc" and dtype.itemsize <= 4 else np.float64


def add_gaussian_noise(arrays: NDArrays, stddev: float, rng: np.random.Generator) -> NDArrays:
    """``arrays`` plus independent N(0, stddev²) noise on every element, drawn from ``rng``
    a block at a time (in float32 for float32 models); changed in place where writable."""
    if stddev == 0:
        return arrays
    noised = [_writable(np.asarray(a)) for a in arrays]
    for array in noised:
        flat = array.reshape(-1)
        exact = array.dtype.kind in "fc"
        for start in range(0, flat.size, _BLOCK):
            end = min(start + _BLOCK, flat.size)
            noise = rng.standard_normal(end - start, dtype=_noise_dtype(array.dtype))
            noise *= stddev
            if exact:
                flat[start:end] += noise
            else:
                _store(flat[start:end], flat[start:end].astype(np.float64) + noise)
    return noised


def adaptive_noise_params(
    noise_multiplier: float, num_sampled_clients: int, clipped_count_stddev: float | None
) -> tuple[float, float]:
    """``(clipped_count_stddev, update_noise_multiplier)`` for adaptive clipping.

    Andrew et al. split the privacy budget between the count of unclipped updates
    (noise ``clipped_count_stddev``, by default ``num_sampled_clients / 20``) and the
    updates, whose noise multiplier grows to ``(z^-2 - (2 * clipped_count_stddev)^-2)
    ^ -1/2``, so that the two together are worth one Gaussian mechanism of multiplier
    ``z = noise_multiplier``.
    Without noise (``z = 0``) neither is noised. Flower's numbers and defaults.
    """
    if noise_multiplier == 0:
        return (0.0 if clipped_count_stddev is None else clipped_count_stddev), 0.0
    stddev = num_sampled_clients / 20 if clipped_count_stddev is None else clipped_count_stddev
    if noise_multiplier >= 2 * stddev:
        raise ConfigurationError(
            f"noise_multiplier={noise_multiplier} needs clipped_count_stddev above "
            f"noise_multiplier / 2 (it is {stddev:g}, by default num_sampled_clients / 20): "
            "raise clipped_count_stddev or lower noise_multiplier"
        )
    return stddev, (noise_multiplier**-2 - (2 * stddev) ** -2) ** -0.5


def next_clipping_norm(
    clipping_norm: float,
    unclipped: int,
    count: int,
    *,
    target_quantile: float,
    learning_rate: float,
    count_stddev: float,
    rng: np.random.Generator,
) -> float:
    """The bound for the next round (Andrew et al., 2021, geometric update):
    ``C * exp(-lr * (b - target_quantile))`` where ``b`` is the fraction of the
    ``count`` updates left *unclipped*, its count noised with ``N(0, count_stddev²)``.

    More unclipped updates than the target quantile: the bound shrinks; fewer, it
    grows, so it settles where a ``target_quantile`` fraction of the update norms
    lies below it.
    """
    noised = unclipped + (float(rng.normal(0.0, count_stddev)) if count_stddev > 0 else 0.0)
    return clipping_norm * math.exp(-learning_rate * (noised / count - target_quantile))
