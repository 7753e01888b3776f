"""The benchmark models, the same on Pollen's side and on Flower's (numpy only, so that
either side's venv imports it)."""

from __future__ import annotations

import numpy as np


def build_model(model_bytes: int, layers: int = 4) -> list[np.ndarray]:
    """The tiny model (4x2 and 2 float32) when ``model_bytes`` is 0, else ``layers`` random
    float32 arrays of ``model_bytes`` bytes in all (random: nothing could compress them)."""
    if model_bytes == 0:
        return [np.zeros((4, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]
    count = model_bytes // 4
    sizes = [count // layers] * layers
    sizes[-1] += count - sum(sizes)
    rng = np.random.default_rng(0)
    return [rng.random(size, dtype=np.float32) for size in sizes]
