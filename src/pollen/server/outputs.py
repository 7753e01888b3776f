"""A finished run on disk: ``final_model.npz`` and ``metrics.json``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pollen.errors import ConfigurationError
from pollen.server.checkpoint import write_metrics
from pollen.server.round_loop import RunOutcome

FINAL_MODEL = "final_model.npz"


def write_outputs(outcome: RunOutcome, directory: Path) -> Path:
    """Write the final model (arrays ``arr_0``, ``arr_1``, ... in order) and the metrics.

    Files are written under a temporary name and renamed, so a crash never
    leaves a half-written model behind.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"--output-dir {directory}: cannot create it ({exc.strerror}); choose another"
        ) from exc
    model_tmp = directory / (FINAL_MODEL + ".part")
    with model_tmp.open("wb") as handle:
        np.savez(handle, *outcome.parameters)
    os.replace(model_tmp, directory / FINAL_MODEL)
    document = {
        "final_model": FINAL_MODEL,
        **outcome.history.to_json(),
        "completed_rounds": len(outcome.history.rounds),
        "finished": True,
    }
    write_metrics(directory, document)
    return directory
