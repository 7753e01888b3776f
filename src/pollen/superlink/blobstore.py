"""Content-addressed blobs on disk: each digest stored once, however many readers."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path

from pollen.errors import BlobError, ConfigurationError, StorageError, StorageFull
from pollen.records.arrays import Buffer
from pollen.records.content_address import is_content_digest, new_hasher
from pollen.records.messages import BlobRef
from pollen.superlink.spare_files import SpareFiles
from pollen.superlink.storage_faults import as_storage_faults
from pollen.superlink.upload_bounds import DEFAULT_MAX_BLOB_SIZE


def _check_digest(digest: str) -> None:
    if not is_content_digest(digest):
        raise BlobError(f"{digest[:80]!r} is not a content digest (64 lowercase hex digits)")


class BlobWriter:
    """Receives one blob chunk by chunk, hashing as it goes; commits only if it matches.

    A sender that declares no digest (``ref.digest`` empty) lets the store name
    the blob by its content: the sender spares itself a pass over the bytes.
    """

    def __init__(self, store: BlobStore, ref: BlobRef) -> None:
        if ref.digest:
            _check_digest(ref.digest)
        self._store = store
        self.ref = ref
        self._temp = store.root / f".{uuid.uuid4().hex}.part"
        with self._refused_writes():
            # over a spare when one is kept: its pages are cached (see spare_files)
            reused = store.spares.take(ref.size, self._temp)
            self._file = self._temp.open("r+b" if reused else "wb")
        self._hasher = new_hasher()
        self.received = 0

    def write(self, offset: int, data: Buffer) -> None:
        if offset != self.received or self.received + len(data) > self.ref.size:
            raise BlobError(
                f"blob {self.ref.digest[:12] or 'upload'}: chunk at offset {offset} with "
                f"{len(data)} bytes "
                f"does not follow byte {self.received} of {self.ref.size}"
            )
        with self._refused_writes():
            self._file.write(data)
        self._hasher.update(data)
        self.received += len(data)

    @contextlib.contextmanager
    def _refused_writes(self) -> Iterator[None]:
        """A full or read-only disk becomes a `StorageError`; the partial file goes."""
        try:
            with as_storage_faults(self._store.root):
                yield
        except StorageError as exc:
            self.abort()
            if isinstance(exc, StorageFull):
                self._store.spares.drop()  # the disk they hold lets the retry through
            raise

    def commit(self) -> BlobRef:
        with self._refused_writes():
            self._file.truncate(self.received)  # a spare may have been longer
            self._file.close()  # flushes what is buffered: the disk may refuse it now
        digest = self._hasher.hexdigest()
        if self.received != self.ref.size or self.ref.digest not in ("", digest):
            self.abort()
            mismatch = " or content does not match the digest" if self.ref.digest else ""
            raise BlobError(
                f"blob {self.ref.digest[:12] or 'upload'}: received {self.received} of "
                f"{self.ref.size} bytes{mismatch}; upload it again"
            )
        with self._refused_writes():
            os.replace(self._temp, self._store.path(digest))
        return BlobRef(digest, self.ref.size)

    def abort(self) -> None:
        # On a full or read-only disk closing (its buffer) and unlinking may fail too;
        # a partial file left behind is removed at the next start.
        with contextlib.suppress(OSError):
            if hasattr(self, "_file"):
                self._file.close()
            self._temp.unlink(missing_ok=True)


class BlobStore:
    """Blob files under ``root``, named by their content digest (BLAKE3).

    ``max_blob_size``: uploads declaring more are refused before a byte is written.
    """

    def __init__(self, root: Path, max_blob_size: int = DEFAULT_MAX_BLOB_SIZE) -> None:
        self.root = root
        self.max_blob_size = max_blob_size
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".*.part"):  # uploads cut by a crash, spares
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"blob folder {root}: cannot use it ({exc.strerror or exc}); make it writable, "
                "or choose another --database (blobs are kept beside it)"
            ) from None

        self.spares = SpareFiles(root)
        self._readers: Counter[str] = Counter()  # downloads of each digest in progress

    def path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise BlobError(f"blob {digest[:12]} is not stored on this SuperLink") from exc

    def delete(self, digest: str) -> None:
        """Remove the blob; its file may be kept as a spare for the next upload.

        Not while a download of it is open: the next upload would write over the
        file that download is still reading, and send it another blob's bytes.
        """
        with as_storage_faults(self.root), contextlib.suppress(FileNotFoundError):
            if self._readers[digest]:
                self.path(digest).unlink()
            else:
                self.spares.keep(self.path(digest))

    def stored(self) -> list[str]:
        """Digests of the blob files present (temporary files excluded)."""
        return [p.name for p in self.root.iterdir() if not p.name.startswith(".")]

    def writer(self, ref: BlobRef) -> BlobWriter:
        return BlobWriter(self, ref)

    def read_chunks(
        self, digest: str, offset: int, chunk_size: int
    ) -> Generator[bytes, None, None]:
        """The blob's bytes from ``offset`` in chunks, read from disk as they are sent."""
        try:
            handle = self.path(digest).open("rb")
        except FileNotFoundError as exc:
            raise BlobError(f"blob {digest[:12]} is not stored on this SuperLink") from exc
        self._readers[digest] += 1
        try:
            with handle:
                handle.seek(offset)
                while chunk := handle.read(chunk_size):
                    yield chunk
        finally:
            self._readers[digest] -= 1
            if not self._readers[digest]:
                del self._readers[digest]
