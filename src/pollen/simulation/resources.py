"""What each virtual node may use (``client_resources``), what this machine has, and
how many virtual nodes a backend runs at once on which GPU.

Flower's meaning, for every backend: ``num_cpus`` CPUs and ``num_gpus`` GPUs (a
fraction shares one GPU: 0.125 lets eight nodes run on it at once) per virtual node
in flight. The number in flight is the smallest of CPUs / ``num_cpus``, GPUs /
``num_gpus`` (when ``num_gpus`` > 0) and the number of virtual nodes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pollen.errors import ConfigurationError

_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class ClientResources:
    """What one virtual node in flight holds: CPUs and GPUs (fractions allowed)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @classmethod
    def from_config(cls, section: Mapping[str, float]) -> ClientResources:
        """From a checked ``client_resources`` object (missing keys take the defaults);
        more than one GPU must be a whole number, as a fraction shares one GPU."""
        resources = cls(float(section.get("num_cpus", 1.0)), float(section.get("num_gpus", 0.0)))
        if resources.num_gpus > 1 and not resources.num_gpus.is_integer():
            raise ConfigurationError(
                f"client_resources.num_gpus={resources.num_gpus:g}: above 1 a whole number "
                "of GPUs; a fraction (up to 1) shares one GPU between virtual nodes"
            )
        return resources

    def check_fits(self, cpus: float, gpus: float, where: str) -> None:
        """ConfigurationError when one virtual node asks for more than ``where`` has."""
        if self.num_cpus > cpus:
            raise ConfigurationError(
                f"client_resources.num_cpus={self.num_cpus:g}: more than the {cpus:g} CPUs "
                f"{where}; ask for at most that many"
            )
        if self.num_gpus > gpus:
            raise ConfigurationError(
                f"client_resources.num_gpus={self.num_gpus:g}: more than the {gpus:g} GPUs "
                f"{where}; ask for at most {gpus:g} (0 runs without a GPU)"
            )

    def concurrency(self, cpus: float, gpus: float, num_nodes: int | None = None) -> int:
        """How many virtual nodes run at once on ``cpus`` CPUs and ``gpus`` GPUs: at
        least 1, at most ``num_nodes``; ``num_cpus`` 0 counts as no CPU bound beyond
        one node per CPU."""
        bounds = [int(cpus / self.num_cpus) if self.num_cpus > 0 else int(cpus)]
        if self.num_gpus > 0:
            bounds.append(int(gpus / self.num_gpus + 1e-9))
        size = max(1, min(bounds))
        return min(size, num_nodes) if num_nodes else size


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them: that
    variable's list when it is set, else one index per NVIDIA GPU the driver lists."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        devices = [device.strip() for device in named.split(",") if device.strip()]
        return [] if devices[:1] == ["-1"] else devices
    try:
        return [str(i) for i in range(len(list(_NVIDIA_GPUS.iterdir())))]
    except OSError:  # no NVIDIA driver
        return []


def gpu_slots(workers: int, num_gpus: float, gpus: list[str]) -> list[str | None]:
    """Worker ``i``'s ``CUDA_VISIBLE_DEVICES``: with ``num_gpus`` < 1, 1/``num_gpus``
    workers share each GPU, filled one GPU after another; with a whole ``num_gpus``,
    each worker gets that many GPUs of its own. ``None``: leave the variable as it is
    (``num_gpus`` 0)."""
    if num_gpus <= 0:
        return [None] * workers
    if num_gpus < 1:
        per_gpu = int(1 / num_gpus + 1e-9)
        return [gpus[i // per_gpu] for i in range(workers)]
    each = int(num_gpus)
    return [",".join(gpus[i * each : (i + 1) * each]) for i in range(workers)]
