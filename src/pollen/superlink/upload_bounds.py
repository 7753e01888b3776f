"""What a node may store on the SuperLink, checked before an upload writes a byte.

A listed node is trusted with its own results, not with the SuperLink's disk:

- no blob above ``--max-blob-size`` is written, from either API (default 16 GiB: a
  model of 7 billion parameters in 16-bit floats, or 4 billion in 32-bit, fits);
- a node uploads only for a run in which it holds an open (pending or delivered) task;
- the bytes one node keeps in one run are bounded by ``--node-quota`` (default ``4x``:
  four times the model it was sent for its open task). An honest node keeps about one
  model's worth, its result of the round, until the ServerApp has folded it in; four
  leaves room for a result in 64-bit floats of a 32-bit model and a retried upload.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from pollen.errors import ConfigurationError
from pollen.superlink.state import State

GiB = 1 << 30
DEFAULT_MAX_BLOB_SIZE = 16 * GiB
QUOTA_FLOOR = 1 << 20
"""A quota below 1 MiB is raised to it: a tiny model's result, whose header may
outweigh its arrays, is never refused."""

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)
_MULTIPLE = re.compile(r"(\d+(?:\.\d+)?)\s*x", re.IGNORECASE)


def parse_size(text: str, option: str) -> int:
    """``16GiB``, ``512MB``, ``1.5GiB`` or a number of bytes."""
    match = _SIZE.fullmatch(text.strip())
    size = int(float(match[1]) * _UNITS[(match[2] or "b").lower()]) if match else 0
    if size < 1:
        raise ConfigurationError(
            f"{option} {text!r} is not a size; write it as 16GiB, 512MiB, 2GB or a number of bytes"
        )
    return size


def format_size(size: int) -> str:
    for unit, name in ((1 << 40, "TiB"), (GiB, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size / unit:.4g} {name}"
    return f"{size} bytes"


@dataclass(frozen=True)
class NodeQuota:
    """The bytes one node may keep stored in one run: a multiple of the model it was
    sent (``4x``), or a fixed size (``8GiB``)."""

    multiple: float = 4.0
    fixed: int = 0

    @classmethod
    def parse(cls, text: str) -> NodeQuota:
        match = _MULTIPLE.fullmatch(text.strip())
        if match is None:
            return cls(fixed=parse_size(text, "--node-quota"))
        if float(match[1]) < 1:
            raise ConfigurationError(
                f"--node-quota {text!r} is below one model: a node could not return its "
                "result; write 1x or more (4x is the default), or a size such as 8GiB"
            )
        return cls(multiple=float(match[1]))

    def __str__(self) -> str:
        return format_size(self.fixed) if self.fixed else f"{self.multiple:g}x"

    def limit(self, model_size: int, max_blob_size: int) -> int:
        """The quota of a node that was sent a model of ``model_size`` bytes (0: none,
        as for a task that asks a node for its initial parameters: one blob)."""
        if self.fixed:
            return self.fixed
        if not model_size:
            return max_blob_size
        return max(QUOTA_FLOOR, int(self.multiple * model_size))

    def basis(self, model_size: int) -> str:
        """How the quota of a node sent ``model_size`` bytes came about, for messages."""
        if self.fixed:
            return f"--node-quota {self}"
        if not model_size:
            return f"--node-quota {self}, one --max-blob-size as it was sent no model"
        return f"--node-quota {self} of the {format_size(model_size)} model it was sent"


DEFAULT_NODE_QUOTA = NodeQuota()


class UploadQuota:
    """Bytes each node keeps in each run, uploads under way included, against its quota."""

    def __init__(self, state: State, quota: NodeQuota, max_blob_size: int) -> None:
        self._state = state
        self._quota = quota
        self._max_blob_size = max_blob_size
        self._under_way: Counter[tuple[int, int]] = Counter()

    def take(self, node_id: int, run_id: int, size: int) -> str | None:
        """Reserve ``size`` bytes for an upload of ``node_id`` in ``run_id``; or say why not."""
        model = self._state.model_size_for(node_id, run_id)
        limit = self._quota.limit(model, self._max_blob_size)
        kept = self._state.node_stored_bytes(node_id, run_id) + self._under_way[node_id, run_id]
        if kept + size > limit:
            return (
                f"node {node_id} would keep {format_size(kept + size)} in run {run_id}, above "
                f"its quota of {format_size(limit)} ({self._quota.basis(model)}); the "
                "SuperLink's operator can raise --node-quota"
            )
        self._under_way[node_id, run_id] += size
        return None

    def give_back(self, node_id: int, run_id: int, size: int) -> None:
        """The upload ended: what it stored counts from the state now."""
        self._under_way[node_id, run_id] -= size
        if self._under_way[node_id, run_id] <= 0:
            del self._under_way[node_id, run_id]
