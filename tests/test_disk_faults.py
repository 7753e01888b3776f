"""A full disk or a read-only file system under the SuperLink: reported in one line,
the state stays intact, and a run goes on once space is freed.

The faults are real: the SuperLink's database lives on a small tmpfs the test
mounts (skipped where mounting is not allowed) and fills or makes read-only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pollen.cli.local_federation import LocalFederation, spawn, wait_for_log
from pollen.errors import StorageError, StorageFull
from pollen.records import fit_evaluate
from pollen.records.content_address import content_digest
from pollen.records.messages import BlobRef, Message, Records
from pollen.superlink.blobstore import BlobStore
from pollen.superlink.dispatch import Dispatcher
from pollen.superlink.sqlite_state import SqliteState
from pollen.superlink.storage_faults import from_os_error, status_of
from pollen.transport.retry_policy import storage_full
from tests.conftest import APPS_DIR, rounds_recorded
from tests.test_cli_errors import assert_one_line_error, run_superlink


@contextlib.contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:  # lazily: a process of a failed test may still hold a file there
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(disk: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; delete the returned file to give them back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 20, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def integrity(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_blob_that_does_not_fit_is_refused_as_storage_full_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        store = BlobStore(disk / "blobs")
        data = os.urandom(2 << 20)
        writer = store.writer(BlobRef(content_digest(data), len(data)))
        with pytest.raises(StorageFull, match=r"storage full: cannot write .*free space there"):
            for offset in range(0, len(data), 1 << 18):
                writer.write(offset, data[offset : offset + (1 << 18)])
            writer.commit()
        writer.abort()  # as the upload handler does: harmless a second time
        assert list((disk / "blobs").iterdir()) == []


def test_a_state_write_on_a_full_disk_is_refused_whole_and_works_once_space_is_freed(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        state = SqliteState(disk / "superlink.db")
        try:
            run_id = state.create_run("app:x", {}, 1.0)
            padded: Records[BlobRef] = fit_evaluate.instruction(None, {"pad": "x" * 4000})
            many = [Message(run_id, 7, "train", padded) for _ in range(2000)]
            filler = fill(disk)
            with pytest.raises(StorageFull, match=r"superlink\.db"):
                state.add_messages(many)
            assert state.open_messages(7) == []  # all or nothing
            filler.unlink()
            state.add_messages(many[:10])
            assert len(state.open_messages(7)) == 10
        finally:
            state.close()
        assert integrity(disk / "superlink.db") == "ok"


class RefusingState(SqliteState):
    """A state whose disk refuses to mark nodes online."""

    def set_node_status(self, node_id: int, status: str, now: float) -> None:  # type: ignore[override]
        raise StorageError("SuperLink storage unwritable: test")


def test_a_subscription_the_state_cannot_record_leaves_the_node_offline(tmp_path: Path) -> None:
    state = RefusingState(tmp_path / "superlink.db")
    try:
        dispatcher = Dispatcher(state)
        with pytest.raises(StorageError):
            dispatcher.subscribe(5)
        assert dispatcher.online_nodes() == []  # no half-open stream that nobody reads
    finally:
        state.close()


def test_a_database_on_a_read_only_file_system_is_refused_in_one_line(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        SqliteState(disk / "superlink.db").close()
        remount(disk, "ro")
        code, output = run_superlink(disk / "superlink.db")
        remount(disk, "rw")
    assert code == 2
    assert_one_line_error(output, "cannot write there", "Read-only file system", "writable")


@pytest.mark.parametrize("seed", [0, 2])  # 0: quick_check finds it; 2: it cannot finish
def test_a_damaged_database_is_refused_at_start_in_one_line(tmp_path: Path, seed: int) -> None:
    database = tmp_path / "superlink.db"
    state = SqliteState(database)
    run_id = state.create_run("app:x", {}, 1.0)
    padded: Records[BlobRef] = fit_evaluate.instruction(None, {"pad": "x" * 3000})
    state.add_messages([Message(run_id, 7, "train", padded) for _ in range(50)])
    state.close()
    page = database.read_bytes().find(b"x" * 1000) // 4096  # a page of the messages' rows
    with database.open("r+b") as db:  # scribble over the middle of the messages table
        db.seek(4096 * page + 200)
        db.write(random.Random(seed).randbytes(3000))
    code, output = run_superlink(database)
    assert code == 2
    assert_one_line_error(output, f"--database {database}", "move it aside")


def test_a_full_disk_mid_run_is_reported_and_the_run_finishes_once_space_is_freed(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "64m") as disk:
        database = disk / "superlink.db"
        fed = LocalFederation(tmp_path / "fed", clients=2, database=database)
        fed.start_superlink()
        marker, gate = tmp_path / "training", tmp_path / "gate"
        try:
            for _ in range(2):
                fed.start_supernode(
                    "numpy_apps:app",
                    APPS_DIR,
                    f"behaviour=gated,marker={marker},gate={gate}",
                    "--max-backoff",
                    "1",
                )
            server = spawn(
                "serverapp",
                fed.serverapp_command(
                    "numpy_apps:four_mib_three_rounds", APPS_DIR, "--connect-timeout", "120"
                ),
                fed.log_dir,
            )
            try:
                deadline = time.monotonic() + 60
                while not marker.exists():  # round 1: the nodes train on the global model
                    assert time.monotonic() < deadline, server.log()
                    time.sleep(0.05)
                filler = fill(disk)
                gate.touch()  # their replies now find the disk full
                assert fed.superlink is not None
                wait_for_log(fed.superlink, re.compile(r"SuperLink storage full: .*disk"), 30)
                # each node hears of it: offering its reply again, or reconnecting if the
                # delivery of its instruction was what the disk refused
                deadline = time.monotonic() + 30
                while not all("SuperLink storage full" in node.log() for node in fed.nodes):
                    assert time.monotonic() < deadline, [node.log() for node in fed.nodes]
                    time.sleep(0.05)
                filler.unlink()
                assert server.process.wait(timeout=90) == 0, server.log()
            finally:
                server.stop()
        finally:
            fed.stop()
        assert integrity(database) == "ok"
        assert not list((disk / "superlink.db.blobs").glob(".*.part"))
    rounds = rounds_recorded(fed.workdir / "runs")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["fit_results"] == 2 for r in rounds)  # no reply lost to the full disk
    assert fed.superlink is not None
    assert "Traceback" not in fed.superlink.log()


@pytest.mark.parametrize(
    ("error", "kind", "fragment"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), StorageFull, "storage full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), StorageFull, "storage full"),
        (OSError(errno.EROFS, "Read-only file system"), StorageError, "unwritable"),
        (OSError(errno.EIO, "Input/output error"), StorageError, "unwritable"),
    ],
)
def test_what_the_disk_says_becomes_a_storage_fault_naming_the_place_and_the_fix(
    error: OSError, kind: type[StorageError], fragment: str
) -> None:
    fault = from_os_error(error, Path("/srv/pollen"))
    assert type(fault) is kind
    assert fragment in str(fault) and "/srv/pollen" in str(fault)
    assert error.strerror in str(fault)
    assert status_of(fault) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED if kind is StorageFull else grpc.StatusCode.UNAVAILABLE
    )
    assert from_os_error(OSError(errno.ENOENT, "No such file"), Path("/x")) is None


def test_a_disk_gone_read_only_mid_upload_is_a_storage_fault_even_when_cleanup_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer(BlobRef("", 10))
    read_only = OSError(errno.EROFS, "Read-only file system")

    def refuse(*args: object, **kwargs: object) -> None:
        raise read_only

    monkeypatch.setattr(writer._file, "write", refuse)
    monkeypatch.setattr(Path, "unlink", refuse)  # the partial file cannot go either
    with pytest.raises(StorageError, match=r"storage unwritable: .*Read-only file system"):
        writer.write(0, b"0123456789")
    writer.abort()  # as the upload handler does again: no OSError escapes


@pytest.mark.parametrize(
    ("code", "details", "retried"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "SuperLink storage full: cannot write /x", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "SuperLink out of file descriptors: cannot", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "node 3 has 4 blob transfers open, the most", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed attempts; wait", False),
        (grpc.StatusCode.UNAVAILABLE, "SuperLink storage full: cannot write /x", False),
    ],
)
def test_clients_wait_out_a_full_disk_but_not_an_oversized_message_or_a_rate_limit(
    code: grpc.StatusCode, details: str, retried: bool
) -> None:
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    assert storage_full(error) is retried


def test_a_superlink_started_on_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        fill(disk)
        code, output = run_superlink(disk / "superlink.db")
    assert code == 2
    assert_one_line_error(output, "the disk is full", "free space there")
