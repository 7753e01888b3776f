"""A run's progress after every round, so that a crashed ServerApp can resume it.

The global model after the last completed round stays on the SuperLink (its
blob is held by the run until the next checkpoint replaces it; the SuperLink's
state survives crashes), and ``metrics.json`` in the run's output folder names
it, next to the history so far and ``completed_rounds``. The file is written
under a temporary name and renamed: a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollen.errors import ConfigurationError, RunError
from pollen.records.messages import BlobRef
from pollen.server.history import History

METRICS = "metrics.json"


@dataclass
class Checkpoint:
    completed_rounds: int
    model: BlobRef
    history: History


def write_metrics(directory: Path, document: dict[str, Any]) -> None:
    """Replace ``metrics.json`` atomically."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / (METRICS + ".part")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(temporary, directory / METRICS)
    except OSError as exc:
        raise RunError(
            f"cannot write {directory / METRICS} ({exc.strerror}); "
            "free some space or choose another --output-dir"
        ) from None


def write_checkpoint(
    directory: Path, completed_rounds: int, model: BlobRef, history: History
) -> None:
    document = {
        **history.to_json(),
        "completed_rounds": completed_rounds,
        "finished": False,
        "checkpoint": {"digest": model.digest, "size": model.size},
    }
    write_metrics(directory, document)


def read_checkpoint(directory: Path, run_id: int) -> Checkpoint:
    """The last checkpoint of ``run_id``; a one-line error when there is none to resume."""
    try:
        document = json.loads((directory / METRICS).read_text())
        if document.get("finished"):
            raise ConfigurationError(
                f"--resume {run_id}: the run already finished; see {directory}"
            )
        model = BlobRef(str(document["checkpoint"]["digest"]), int(document["checkpoint"]["size"]))
        return Checkpoint(int(document["completed_rounds"]), model, History.from_json(document))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"--resume {run_id}: no usable checkpoint in {directory} ({exc}); check the run id "
            "and --output-dir"
        ) from None
