"""Blobs on the SuperLink's disk, and the SuperNode's small in-memory blob cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from pollen.errors import BlobError
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef
from pollen.superlink.blobstore import BlobStore
from pollen.supernode.blob_cache import BlobCache

DATA = bytes(range(256)) * 40 + b"tail"  # 10 244 bytes


def ref_of(data: bytes) -> BlobRef:
    return BlobRef(content_digest(data), len(data))


def upload(store: BlobStore, data: bytes, chunk_size: int = 1000) -> BlobRef:
    writer = store.writer(ref_of(data))
    for offset in range(0, len(data), chunk_size):
        writer.write(offset, data[offset : offset + chunk_size])
    return writer.commit()


def leftovers(root: Path) -> list[str]:
    """Partial uploads still on disk."""
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".part"))


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


# --- writing --------------------------------------------------------------------------------


def test_blob_written_in_chunks_is_stored_under_its_digest(store: BlobStore) -> None:
    ref = upload(store, DATA, chunk_size=999)

    assert ref == ref_of(DATA)
    assert store.exists(ref.digest)
    assert store.size(ref.digest) == len(DATA)
    assert store.path(ref.digest).read_bytes() == DATA
    assert leftovers(store.root) == []


def test_blob_written_in_one_chunk(store: BlobStore) -> None:
    ref = upload(store, DATA, chunk_size=len(DATA))

    assert store.path(ref.digest).read_bytes() == DATA


def test_empty_blob_can_be_stored(store: BlobStore) -> None:
    ref = store.writer(ref_of(b"")).commit()

    assert store.size(ref.digest) == 0
    assert b"".join(store.read_chunks(ref.digest, 0, 10)) == b""


def test_storing_the_same_blob_twice_keeps_one_file(store: BlobStore) -> None:
    upload(store, DATA)
    ref = upload(store, DATA, chunk_size=4096)

    assert [p.name for p in store.root.iterdir()] == [ref.digest]


def test_creating_a_store_creates_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "blobs"

    BlobStore(root)

    assert root.is_dir()


def test_writer_tracks_bytes_received(store: BlobStore) -> None:
    writer = store.writer(ref_of(DATA))
    writer.write(0, DATA[:100])
    writer.write(100, DATA[100:250])

    assert writer.received == 250
    writer.abort()


# --- refused uploads ------------------------------------------------------------------------


def test_upload_with_the_wrong_digest_is_refused_and_leaves_nothing(store: BlobStore) -> None:
    wrong = BlobRef(content_digest(b"something else"), len(DATA))
    writer = store.writer(wrong)
    writer.write(0, DATA)

    with pytest.raises(BlobError, match="does not match"):
        writer.commit()

    assert not store.exists(wrong.digest)
    assert list(store.root.iterdir()) == []


def test_short_upload_is_refused_and_leaves_nothing(store: BlobStore) -> None:
    ref = ref_of(DATA)
    writer = store.writer(ref)
    writer.write(0, DATA[:5000])

    with pytest.raises(BlobError, match=f"received 5000 of {len(DATA)} bytes"):
        writer.commit()

    assert not store.exists(ref.digest)
    assert list(store.root.iterdir()) == []


def test_chunk_past_the_declared_size_is_refused(store: BlobStore) -> None:
    writer = store.writer(BlobRef(ref_of(DATA).digest, 100))

    with pytest.raises(BlobError, match="does not follow"):
        writer.write(0, DATA[:101])

    writer.abort()
    assert leftovers(store.root) == []


@pytest.mark.parametrize("offset", [0, 50, 150, -1])
def test_out_of_order_chunk_is_refused(store: BlobStore, offset: int) -> None:
    writer = store.writer(ref_of(DATA))
    writer.write(0, DATA[:100])

    with pytest.raises(BlobError, match=f"offset {offset}"):
        writer.write(offset, DATA[offset : offset + 100])

    writer.abort()
    assert leftovers(store.root) == []


def test_refused_chunk_does_not_spoil_the_upload(store: BlobStore) -> None:
    writer = store.writer(ref_of(DATA))
    writer.write(0, DATA[:100])
    with pytest.raises(BlobError):
        writer.write(200, DATA[200:300])

    writer.write(100, DATA[100:])
    ref = writer.commit()

    assert store.path(ref.digest).read_bytes() == DATA


def test_aborted_upload_leaves_nothing(store: BlobStore) -> None:
    writer = store.writer(ref_of(DATA))
    writer.write(0, DATA[:10])

    writer.abort()

    assert list(store.root.iterdir()) == []


def test_failed_upload_keeps_an_earlier_copy_of_the_blob(store: BlobStore) -> None:
    ref = upload(store, DATA)
    writer = store.writer(ref)
    writer.write(0, DATA[:10])

    with pytest.raises(BlobError):
        writer.commit()

    assert store.path(ref.digest).read_bytes() == DATA


# --- digests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="short"),
        pytest.param("A" * 64, id="uppercase"),
        pytest.param("g" * 64, id="not-hex"),
        pytest.param("a" * 65, id="too-long"),
        pytest.param("../" + "a" * 61, id="path-traversal"),
        pytest.param("a" * 63 + "/", id="slash"),
    ],
)
def test_invalid_digests_are_refused_everywhere(store: BlobStore, digest: str) -> None:
    if digest:  # an upload may declare none: see the test below
        with pytest.raises(BlobError, match="not a content digest"):
            store.writer(BlobRef(digest, 3))
    with pytest.raises(BlobError):
        store.path(digest)
    with pytest.raises(BlobError):
        store.exists(digest)
    with pytest.raises(BlobError):
        list(store.read_chunks(digest, 0, 10))
    assert list(store.root.iterdir()) == []


# --- reading --------------------------------------------------------------------------------


def test_read_chunks_from_the_start(store: BlobStore) -> None:
    ref = upload(store, DATA)

    chunks = list(store.read_chunks(ref.digest, 0, 4096))

    assert [len(c) for c in chunks] == [4096, 4096, len(DATA) - 8192]
    assert b"".join(chunks) == DATA


@pytest.mark.parametrize("offset", [1, 999, 5000, len(DATA) - 1])
def test_read_chunks_from_an_offset(store: BlobStore, offset: int) -> None:
    ref = upload(store, DATA)

    chunks = list(store.read_chunks(ref.digest, offset, 1000))

    assert b"".join(chunks) == DATA[offset:]
    assert all(len(c) == 1000 for c in chunks[:-1])


def test_read_chunks_at_the_end_yields_nothing(store: BlobStore) -> None:
    ref = upload(store, DATA)

    assert list(store.read_chunks(ref.digest, len(DATA), 1000)) == []


def test_reading_a_missing_blob_is_a_blob_error(store: BlobStore) -> None:
    missing = ref_of(b"never uploaded").digest

    with pytest.raises(BlobError, match="not stored"):
        list(store.read_chunks(missing, 0, 10))
    with pytest.raises(BlobError, match="not stored"):
        store.size(missing)
    assert not store.exists(missing)


# --- stale partial uploads ------------------------------------------------------------------


def test_stale_part_files_are_removed_when_a_store_opens(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    first = BlobStore(root)
    ref = upload(first, DATA)
    crashed = first.writer(ref_of(b"interrupted upload"))
    crashed.write(0, b"interr")
    (root / ".deadbeef.part").write_bytes(b"left over by a crash")
    assert len(leftovers(root)) == 2

    reopened = BlobStore(root)

    assert leftovers(root) == []
    assert reopened.path(ref.digest).read_bytes() == DATA  # committed blobs stay
    crashed.abort()  # close its file handle


def test_opening_a_store_keeps_files_that_are_not_partial_uploads(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    root.mkdir()
    (root / "README").write_text("keep me")
    (root / "x.part").write_text("not one of ours: no leading dot")

    BlobStore(root)

    assert sorted(p.name for p in root.iterdir()) == ["README", "x.part"]


# --- BlobCache ------------------------------------------------------------------------------


def test_cache_returns_what_was_put() -> None:
    cache = BlobCache()
    blob = bytearray(b"weights")

    cache.put("d1", blob)

    assert cache.get("d1") is blob
    assert (cache.hits, cache.misses) == (1, 0)


def test_cache_miss_returns_none_and_is_counted() -> None:
    cache = BlobCache()

    assert cache.get("unknown") is None
    assert (cache.hits, cache.misses) == (0, 1)


def test_cache_evicts_the_least_recently_put_blob() -> None:
    cache = BlobCache(capacity=2)
    cache.put("a", bytearray(b"A"))
    cache.put("b", bytearray(b"B"))

    cache.put("c", bytearray(b"C"))

    assert cache.get("a") is None
    assert cache.get("b") == b"B"
    assert cache.get("c") == b"C"


def test_cache_get_makes_a_blob_recently_used() -> None:
    cache = BlobCache(capacity=2)
    cache.put("a", bytearray(b"A"))
    cache.put("b", bytearray(b"B"))
    cache.get("a")

    cache.put("c", bytearray(b"C"))

    assert cache.get("b") is None
    assert cache.get("a") == b"A"
    assert cache.get("c") == b"C"


def test_cache_put_again_replaces_and_refreshes() -> None:
    cache = BlobCache(capacity=2)
    cache.put("a", bytearray(b"old"))
    cache.put("b", bytearray(b"B"))
    cache.put("a", bytearray(b"new"))

    cache.put("c", bytearray(b"C"))

    assert cache.get("a") == b"new"
    assert cache.get("b") is None


def test_cache_of_capacity_one_keeps_only_the_latest() -> None:
    cache = BlobCache(capacity=1)
    for name in "abc":
        cache.put(name, bytearray(name.encode()))

    assert [cache.get(name) for name in "abc"] == [None, None, b"c"]
    assert (cache.hits, cache.misses) == (1, 2)


def test_cache_counts_hits_and_misses() -> None:
    cache = BlobCache(capacity=3)
    cache.put("a", bytearray())

    for name in ("a", "a", "b", "a", "c"):
        cache.get(name)

    assert (cache.hits, cache.misses) == (3, 2)


def test_blob_cache_does_not_keep_blobs_above_its_byte_budget() -> None:
    from pollen.supernode.blob_cache import BlobCache

    cache = BlobCache(capacity=2, max_bytes=10)
    cache.put("small", bytearray(10))
    cache.put("large", bytearray(11))
    assert cache.get("small") is not None
    assert cache.get("large") is None


def test_an_upload_that_declares_no_digest_is_named_by_its_content(store: BlobStore) -> None:
    data = b"x" * 3000
    writer = store.writer(BlobRef("", len(data)))
    writer.write(0, data[:1000])
    writer.write(1000, data[1000:])
    ref = writer.commit()
    assert ref == BlobRef(content_digest(data), len(data))
    assert store.path(ref.digest).read_bytes() == data


def test_an_upload_without_digest_that_ends_short_is_refused(store: BlobStore) -> None:
    writer = store.writer(BlobRef("", 10))
    writer.write(0, b"12345")
    with pytest.raises(BlobError, match="received 5 of 10 bytes"):
        writer.commit()
    assert list(store.root.iterdir()) == []


def test_cache_make_room_evicts_only_when_full_and_hands_back_the_buffer() -> None:
    cache = BlobCache(capacity=2)
    first, second = bytearray(b"first"), bytearray(b"second")
    cache.put("a", first)
    assert cache.make_room() is None  # room left: nothing evicted
    cache.put("b", second)

    assert cache.make_room() is first
    assert cache.get("a") is None and cache.get("b") is second
