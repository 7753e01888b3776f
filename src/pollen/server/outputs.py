"""A run's folder on disk: where it goes, and the models written into it.

``OUTPUT_DIR/RUN_ID/`` holds ``metrics.json`` (see `checkpoint`) and, once the
run ends, ``final_model.npz`` (it finished) or ``last_model.npz`` (it stopped:
the model of its last completed round). Run ids are unique only within one
SuperLink database, so a folder that already holds another run's outputs is
never written over: that run's outputs go to ``RUN_ID-SUPERLINK_ID/`` instead.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pollen.errors import ConfigurationError
from pollen.records.typing import NDArrays
from pollen.server.checkpoint import METRICS, output_dir_fix, write_file

FINAL_MODEL = "final_model.npz"
LAST_MODEL = "last_model.npz"


def check_output_root(root: Path) -> None:
    """Refuse an output folder that cannot be created or written, before a run starts."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"--output-dir {root}: cannot write there ({exc.strerror or exc}); "
            + output_dir_fix(exc)
        ) from None


def _owner(directory: Path) -> tuple[int, str] | None:
    """(run id, SuperLink id) of the run whose outputs ``directory`` holds, if any."""
    try:
        document = json.loads((directory / METRICS).read_text())
        return int(document["run_id"]), str(document.get("superlink_id", ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return (-1, "")  # something else's: never written over


def run_directory(root: Path, run_id: int, superlink_id: str) -> Path:
    """The folder of this run: ``RUN_ID/`` unless another run's outputs are there."""
    plain = root / str(run_id)
    owner = _owner(plain) if plain.is_dir() and any(plain.iterdir()) else None
    if owner is None or owner == (run_id, superlink_id):
        return plain
    return root / f"{run_id}-{superlink_id}"


def candidate_directories(root: Path, run_id: int) -> list[Path]:
    """Folders that may hold run ``run_id``'s outputs, of any SuperLink."""
    found = [root / str(run_id)] if (root / str(run_id)).is_dir() else []
    return found + sorted(root.glob(f"{run_id}-*"))


def array_names(names: Sequence[str] | None, count: int) -> list[str]:
    """The names the app gave its arrays, or ``layer_0``, ``layer_1``, ..."""
    if names is not None and len(names) == count and len(set(names)) == count:
        return list(names)
    return [f"layer_{index}" for index in range(count)]


def write_model(directory: Path, name: str, arrays: NDArrays, names: Sequence[str] | None) -> Path:
    """Write ``arrays`` as ``directory/name`` (``.npz``, named arrays), atomically."""
    named = dict(zip(array_names(names, len(arrays)), arrays, strict=True))
    # numpy's stub misses **kwds
    return write_file(directory / name, lambda handle: np.savez(handle, **named))  # type: ignore[arg-type]
