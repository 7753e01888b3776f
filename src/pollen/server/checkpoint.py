"""A run's progress after every round, so that a stopped ServerApp can resume it.

The global model after the last completed round (round 0: the initial model)
stays on the SuperLink: its blob is held by the run until the next checkpoint
replaces it, also when the run stopped or failed (until the run is pruned).
``metrics.json`` in the run's output folder names it, next to the history so
far and ``completed_rounds``. The file is written under a temporary name and
renamed: a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from pollen.errors import ConfigurationError, RunError
from pollen.records.messages import BlobRef
from pollen.server.history import History, RoundRecord

METRICS = "metrics.json"


@dataclass
class Checkpoint:
    completed_rounds: int
    model: BlobRef
    history: History
    directory: Path


def write_file(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write`` under a temporary name, then rename it: a crash
    or a full disk never leaves a half-written file (and never an older one damaged)."""
    partial = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as handle:
            write(handle)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise RunError(f"cannot write {path} ({exc.strerror}); {output_dir_fix(exc)}") from None
    return path


def output_dir_fix(exc: OSError) -> str:
    """What to do about an output folder that refused a write."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space there or choose another --output-dir"
    return "choose a folder you can write to with --output-dir"


def write_metrics(directory: Path, document: dict[str, Any]) -> None:
    """Replace ``metrics.json`` atomically."""
    text = _metrics_text(document).encode()
    write_file(directory / METRICS, lambda handle: handle.write(text))


def _metrics_text(document: dict[str, Any], rounds: list[str] | None = None) -> str:
    """``document`` as JSON with one top-level key, and one round, per line: readable, and
    written by json's C encoder (``indent`` takes its pure-Python one, about 5 times slower,
    and metrics.json is rewritten after every round as its history grows). ``rounds``: the
    rounds' lines already encoded, written as the value of ``"rounds"``."""
    lines = []
    for key, value in document.items():
        name = json.dumps(key)
        if key == "rounds" and rounds is not None:
            lines.append(_list_text(name, rounds))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(_list_text(name, [json.dumps(item) for item in value]))
        else:
            lines.append(f"  {name}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _list_text(name: str, items: list[str]) -> str:
    if not items:
        return f"  {name}: []"
    return f"  {name}: [\n" + ",\n".join(f"    {item}" for item in items) + "\n  ]"


class _RoundLines:
    """Each round's line of ``metrics.json``, encoded once: the file is rewritten after
    every round, and encoding every round so far each time (``History.to_json`` of the
    whole run) made a round's cost grow with the run (2 ms a round by round 50 of a
    tiny-model simulation, 25 ms by round 300). A round is encoded when it is first
    written; a completed round does not change. Kept for the last history written (runs
    in other threads that write meanwhile are encoded in full, not mixed up)."""

    def __init__(self) -> None:
        self._records: list[RoundRecord] = []
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def lines(self, history: History) -> list[str]:
        with self._lock:
            return self._update(history.run_id, history.rounds)

    def _update(self, run_id: int, rounds: list[RoundRecord]) -> list[str]:
        kept = 0
        for mine, theirs in zip(self._records, rounds, strict=False):
            if mine is not theirs:
                break
            kept += 1
        del self._records[kept:], self._lines[kept:]
        for record in rounds[kept:]:
            # the round as History.to_json writes it (one rule, not a copy of it)
            [encoded] = History(run_id, [record]).to_json()["rounds"]
            self._records.append(record)
            self._lines.append(json.dumps(encoded))
        return list(self._lines)


_round_lines = _RoundLines()


def _write_history(directory: Path, history: History, fields: dict[str, Any]) -> None:
    """``metrics.json``: ``history`` (each round encoded once per run) and ``fields``."""
    document = {**replace(history, rounds=[]).to_json(), **fields}
    text = _metrics_text(document, _round_lines.lines(history)).encode()
    write_file(directory / METRICS, lambda handle: handle.write(text))


def write_finished(directory: Path, history: History, final_model: str) -> None:
    """``metrics.json`` of a run that finished: it names its final model, no checkpoint."""
    fields = {"completed_rounds": len(history.rounds), "finished": True, "final_model": final_model}
    _write_history(directory, history, fields)


def write_checkpoint(
    directory: Path,
    completed_rounds: int,
    model: BlobRef,
    history: History,
    extra: dict[str, Any] | None = None,
) -> None:
    fields = {
        "completed_rounds": completed_rounds,
        "finished": False,
        "checkpoint": {"digest": model.digest, "size": model.size},
        **(extra or {}),
    }
    _write_history(directory, history, fields)


def _read(directory: Path, run_id: int) -> Checkpoint:
    document = json.loads((directory / METRICS).read_text())
    if int(document["run_id"]) != run_id:
        raise ValueError(f"it is run {document['run_id']}'s")
    if document.get("finished"):
        raise ConfigurationError(f"--resume {run_id}: the run already finished; see {directory}")
    model = BlobRef(str(document["checkpoint"]["digest"]), int(document["checkpoint"]["size"]))
    history = History.from_json(document)
    return Checkpoint(int(document["completed_rounds"]), model, history, directory)


def read_checkpoints(directories: list[Path], run_id: int) -> list[Checkpoint]:
    """The checkpoints of run ``run_id`` in ``directories`` (several SuperLinks may have
    had a run of that id); a one-line error when there is none to resume."""
    found: list[Checkpoint] = []
    problems: list[str] = []
    for directory in directories:
        try:
            found.append(_read(directory, run_id))
        except ConfigurationError as exc:
            problems.append(str(exc).removeprefix(f"--resume {run_id}: "))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{directory}: {exc}")
    if found:
        return found
    detail = "; ".join(problems) or "no output folder of that run"
    raise ConfigurationError(
        f"--resume {run_id}: no usable checkpoint ({detail}); check the run id and --output-dir"
    )
