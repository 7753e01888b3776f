"""The blobs a SuperNode holds, by digest, so that it never downloads one twice in a row."""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_MAX_BYTES = 1 << 30


class BlobCache:
    """The ``capacity`` most recently used blobs. Apps get copies, never these buffers.

    Blobs larger than ``max_bytes`` are not kept: for them a second copy would
    cost more memory than a download costs time.
    """

    def __init__(self, capacity: int = 2, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
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

    def accepts(self, size: int) -> bool:
        return size <= self.max_bytes

    def make_room(self) -> bytearray | None:
        """Evict the least recently used blob if the cache is full; return its buffer,
        free for reuse (a download into memory already touched costs less)."""
        if len(self._blobs) < self.capacity:
            return None
        return self._blobs.popitem(last=False)[1]

    def put(self, digest: str, blob: bytearray) -> bytearray | None:
        """Keep ``blob``; return a buffer this evicted, free for reuse (nobody else has it)."""
        if not self.accepts(len(blob)):
            return None
        self._blobs[digest] = blob
        self._blobs.move_to_end(digest)
        evicted = None
        while len(self._blobs) > self.capacity:
            evicted = self._blobs.popitem(last=False)[1]
        return evicted
