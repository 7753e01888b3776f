"""The blobs a SuperNode holds, by digest, so that it never downloads one twice in a row."""

from __future__ import annotations

from collections import OrderedDict


class BlobCache:
    """The ``capacity`` most recently used blobs. Apps get copies, never these buffers."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._blobs: OrderedDict[str, bytearray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, digest: str) -> bytearray | None:
        blob = self._blobs.get(digest)
        if blob is None:
            self.misses += 1
            return None
        self.hits += 1
        self._blobs.move_to_end(digest)
        return blob

    def put(self, digest: str, blob: bytearray) -> None:
        self._blobs[digest] = blob
        self._blobs.move_to_end(digest)
        while len(self._blobs) > self.capacity:
            self._blobs.popitem(last=False)
