"""Blob bytes moved per run, in the SuperLink's memory (a run's dashboard page).

An upload counts for the run its first chunk names. A download names only a digest:
it counts for the run that last uploaded that blob or last sent it in an
instruction, as remembered here (a blob several runs use counts for the latest; one
this SuperLink has not seen uploaded or sent since it started counts for no run).
Both tables are bounded: the oldest run or digest is forgotten first.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_RUNS = 1024
"""Runs whose bytes are kept; beyond, the run counted first is forgotten."""
MAX_DIGESTS = 16_384
"""Blobs whose run is remembered (about a round of 16 000 nodes); beyond, the one
named least recently is forgotten."""


class RunBytes:
    """Bytes in (uploads) and out (downloads) of each run since the SuperLink started."""

    def __init__(self, max_runs: int = MAX_RUNS, max_digests: int = MAX_DIGESTS) -> None:
        self.max_runs = max_runs
        self.max_digests = max_digests
        self._moved: dict[int, list[int]] = {}
        self._runs_of_blobs: dict[str, int] = {}

    def of(self, run_id: int) -> tuple[int, int]:
        """(in, out) of ``run_id``; (0, 0) for a run that moved none or was forgotten."""
        moved = self._moved.get(run_id)
        return (moved[0], moved[1]) if moved is not None else (0, 0)

    def run_of(self, digest: str) -> int:
        """The run a download of ``digest`` counts for (0: none known)."""
        return self._runs_of_blobs.get(digest, 0)

    def uses(self, run_id: int, digests: Iterable[str]) -> None:
        """``run_id`` uploaded or sent these blobs: their downloads count for it now."""
        if not run_id:
            return
        runs = self._runs_of_blobs
        for digest in digests:
            runs.pop(digest, None)  # to the end: the most recently named
            runs[digest] = run_id
        while len(runs) > self.max_digests:
            del runs[next(iter(runs))]

    def add(self, run_id: int, received: int, sent: int) -> None:
        """``run_id`` moved ``received`` bytes in and ``sent`` out (run 0: none counted)."""
        if not run_id:
            return
        moved = self._moved.get(run_id)
        if moved is None:
            if len(self._moved) >= self.max_runs:
                del self._moved[next(iter(self._moved))]
            moved = self._moved[run_id] = [0, 0]
        moved[0] += received
        moved[1] += sent
