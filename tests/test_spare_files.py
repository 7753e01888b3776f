"""Deleted blob files kept as spares for the next uploads to write over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pollen.errors import StorageFull
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef
from pollen.superlink.blob_gc import BlobCollector
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.spare_files import PATTERN, SpareFiles
from pollen.superlink.sqlite_state import SqliteState


def upload(store: BlobStore, data: bytes, chunk_size: int = 4096) -> BlobRef:
    writer = store.writer(BlobRef(content_digest(data), len(data)))
    for offset in range(0, len(data), chunk_size):
        writer.write(offset, data[offset : offset + chunk_size])
    return writer.commit()


def spares(root: Path) -> list[Path]:
    return sorted(root.glob(PATTERN))


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.spares.floor = 0  # whatever the free space of the disk the tests run on
    return blobs


def test_a_deleted_blob_becomes_a_spare_and_the_next_upload_writes_over_it(
    store: BlobStore,
) -> None:
    old = upload(store, os.urandom(50_000))
    inode = store.path(old.digest).stat().st_ino
    store.delete(old.digest)
    assert not store.exists(old.digest)
    assert store.stored() == []  # a spare is not a blob
    assert len(spares(store.root)) == 1

    new_data = os.urandom(30_000)
    new = upload(store, new_data)

    assert store.path(new.digest).stat().st_ino == inode  # the same file, written over
    assert store.path(new.digest).read_bytes() == new_data  # nothing of the old blob left
    assert spares(store.root) == []


def test_an_upload_longer_than_the_spare_gets_all_its_bytes(store: BlobStore) -> None:
    store.delete(upload(store, b"short old blob").digest)
    data = os.urandom(100_000)

    assert store.path(upload(store, data).digest).read_bytes() == data


def test_the_spare_that_best_fits_is_taken(tmp_path: Path) -> None:
    kept = SpareFiles(tmp_path, floor=0)
    for name, size in [("small", 10), ("medium", 100), ("large", 1000)]:
        (tmp_path / name).write_bytes(b"x" * size)
        assert kept.keep(tmp_path / name)

    assert kept.take(50, tmp_path / "a") and (tmp_path / "a").stat().st_size == 100
    assert kept.take(5000, tmp_path / "b") and (tmp_path / "b").stat().st_size == 1000
    assert kept.take(1, tmp_path / "c") and (tmp_path / "c").stat().st_size == 10
    assert not kept.take(1, tmp_path / "d")


def test_spares_stay_within_their_limit_of_disk(tmp_path: Path) -> None:
    kept = SpareFiles(tmp_path, limit=250, floor=0)
    for index in range(4):
        (tmp_path / f"blob{index}").write_bytes(b"x" * 100)

    assert [kept.keep(tmp_path / f"blob{index}") for index in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    assert kept.held == 200
    assert len(spares(tmp_path)) == 2
    assert not list(tmp_path.glob("blob*"))  # the others were deleted


def test_a_full_disk_drops_every_spare_so_that_the_retry_finds_room(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.delete(upload(store, os.urandom(20_000)).digest)
    writer = store.writer(BlobRef("", 10))

    def full(_: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer._file, "write", full)
    with pytest.raises(StorageFull):
        writer.write(0, b"0123456789")

    assert list(store.root.iterdir()) == []


def test_a_run_that_ends_and_a_store_reopened_leave_no_spare(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state.db")
    try:
        store = BlobStore(tmp_path / "blobs")
        store.spares.floor = 0
        collector = BlobCollector(state, store, clock=lambda: 0.0)
        run_id = state.create_run("app:app", {}, 0.0)
        ref = upload(store, os.urandom(10_000))
        state.add_blob(ref.digest, ref.size, 0.0)
        state.hold_blobs(run_id, [ref.digest])
        store.delete(upload(store, os.urandom(10_000)).digest)
        assert spares(store.root)

        collector.release(run_id)

        assert list(store.root.iterdir()) == []
    finally:
        state.close()
    (store.root / PATTERN.replace("*", "left-by-a-crash")).write_bytes(b"x")
    BlobStore(store.root)
    assert list(store.root.iterdir()) == []


def test_a_blob_deleted_while_a_download_reads_it_is_not_written_over(
    store: BlobStore,
) -> None:
    old_data = os.urandom(3 * 4096)
    old = upload(store, old_data)
    download = store.read_chunks(old.digest, 0, 4096)
    received = next(download)

    store.delete(old.digest)  # e.g. its task expired while a slow node still downloads
    upload(store, os.urandom(3 * 4096))  # another node's result
    received += b"".join(download)

    assert received == old_data  # never another blob's bytes
    assert spares(store.root) == []


def test_a_blob_whose_download_has_finished_becomes_a_spare_again(store: BlobStore) -> None:
    ref = upload(store, os.urandom(10_000))
    assert b"".join(store.read_chunks(ref.digest, 0, 4096))

    store.delete(ref.digest)

    assert len(spares(store.root)) == 1


def test_no_spare_is_kept_on_a_disk_short_of_free_space(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    kept = SpareFiles(tmp_path, floor=free + 1024**3)  # more than this disk has free
    (tmp_path / "blob").write_bytes(b"x" * 100)

    assert not kept.keep(tmp_path / "blob")
    assert list(tmp_path.iterdir()) == []
