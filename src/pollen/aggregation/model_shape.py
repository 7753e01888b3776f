"""Does an update fit the global model: the one check every aggregation rule makes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pollen.errors import RecordError


def _describe(shapes: Sequence[tuple[int, ...]]) -> str:
    text = ", ".join(str(shape) for shape in shapes[:6])
    return text + (", ..." if len(shapes) > 6 else "")


def check_fits(
    arrays: Sequence[Any],
    shapes: Sequence[tuple[int, ...]],
    kinds: Sequence[tuple[np.dtype[Any], np.dtype[Any]]] = (),
) -> None:
    """RecordError unless ``arrays`` has the model's count and ``shapes`` and, given
    ``kinds`` (per array: the dtype it is stored in, the model's dtype), dtypes that cast
    to them without changing kind (no complex into a float model, no float into a bool)."""
    got = [tuple(np.shape(a)) for a in arrays]
    if got != [tuple(s) for s in shapes]:
        raise RecordError(
            f"returned {len(got)} arrays with shapes {_describe(got)}; the global model "
            f"has {len(shapes)} arrays with shapes {_describe(shapes)}"
        )
    for index, (array, (stored, dtype)) in enumerate(zip(arrays, kinds, strict=False)):
        given = np.asarray(array).dtype
        if not np.can_cast(given, stored, "same_kind"):
            raise RecordError(f"array {index} has dtype {given}; the global model's is {dtype}")
