"""Deleting blobs that nothing needs any more, so that disk use follows live work.

A run holds the blobs of its tasks and results until it releases them (the
ServerApp does after each round) or finishes. A blob is deleted once no run
holds it and no open task of a running run names it. Blobs that were uploaded
but never used (a ServerApp that crashed in between) are swept after a grace
period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from pollen.superlink.blobstore import BlobStore
from pollen.superlink.dispatch import Clock
from pollen.superlink.state import State
from pollen.superlink.supervisor import Step

logger = logging.getLogger(__name__)

ORPHAN_GRACE_SECONDS = 600.0
SWEEP_SECONDS = 60.0


class BlobCollector:
    def __init__(self, state: State, store: BlobStore, clock: Clock) -> None:
        self.state = state
        self.store = store
        self.clock = clock

    def collect(self, digests: Iterable[str]) -> int:
        """Delete each of ``digests`` that is no longer in use; return how many went."""
        deleted = 0
        for digest in set(digests):
            if not self.state.blob_in_use(digest):
                self.store.delete(digest)
                self.state.remove_blob(digest)
                deleted += 1
        return deleted

    def release(
        self, run_id: int, digests: Iterable[str] | None = None, keep: Iterable[str] = ()
    ) -> int:
        """``run_id`` no longer needs ``digests`` (all its blobs but ``keep`` when None:
        it ended; a failed run keeps its checkpoint's model, to be resumed)."""
        deleted = self.collect(self.state.release_blobs(run_id, digests, keep))
        if digests is None:
            # a run that ended leaves no spare behind (other runs' spares go too:
            # they cost the next uploads some speed, never a byte of data)
            self.store.spares.drop()
        return deleted

    def sweep(self, grace: float = ORPHAN_GRACE_SECONDS) -> int:
        """Delete old blobs no run holds, and files the state does not know."""
        deleted = self.collect(self.state.unheld_blobs(self.clock() - grace))
        for digest in self.store.stored():
            if not self.state.has_blob(digest):
                self.store.delete(digest)
                deleted += 1
        if deleted:
            logger.info("deleted %d blobs no run needs", deleted)
        return deleted


def sweep_step(collector: BlobCollector) -> Step:
    """One sweep of unused blobs, after its interval (run by the SuperLink's supervisor)."""

    async def sweep() -> None:
        await asyncio.sleep(SWEEP_SECONDS)
        collector.sweep()

    return sweep
