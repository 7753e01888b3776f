"""The global model of a run: in the ServerApp's memory, on the SuperLink, or both."""

from __future__ import annotations

from pollen.records.messages import BlobRef
from pollen.records.typing import NDArrays
from pollen.server.grid import Grid


class GlobalModel:
    """Uploads the model once per version, and lets go of the arrays while nodes train.

    While a round's results are folded in, the ServerApp holds the running sum
    and one result at a time; the global model itself waits on the SuperLink
    and is downloaded again only if it is needed once more (a round that
    produced no usable result, or server-side evaluation).
    """

    def __init__(
        self,
        grid: Grid,
        run_id: int,
        arrays: NDArrays | None,
        ref: BlobRef | None = None,
    ) -> None:
        assert arrays is not None or ref is not None, "a model is in memory or uploaded"
        self._grid = grid
        self._run_id = run_id
        self._arrays = arrays
        self._ref = ref

    async def arrays(self) -> NDArrays:
        if self._arrays is None:
            assert self._ref is not None, "a model is always in memory or uploaded"
            self._arrays = await self._grid.download_arrays(self._ref)
        return self._arrays

    def in_memory(self) -> NDArrays | None:
        """The arrays if the ServerApp holds them now (no download)."""
        return self._arrays

    async def ref(self) -> BlobRef:
        """The model's blob on the SuperLink, uploaded on first use."""
        if self._ref is None:
            self._ref = await self._grid.upload_arrays(await self.arrays(), self._run_id)
        return self._ref

    async def offload(self) -> None:
        """Keep the model only on the SuperLink until it is needed again."""
        await self.ref()
        self._arrays = None
