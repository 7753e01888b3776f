"""The CIFAR-10 loader and the task of examples/client-authentication-pytorch, on small archives
that the tests build in the official layout (nothing is downloaded from the internet)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import importlib.util
import io
import os
import pickle
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pollen.errors import RunError
from pollen.server.run import ServerAppConfig, run_server_app
from pollen.transport.addresses import Address
from tests.conftest import REPO_ROOT, federation, free_port

EXAMPLE = REPO_ROOT / "examples" / "client-authentication-pytorch"
CLASSES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


def _batch(count: int, first: int, rng: np.random.Generator, label: bytes) -> dict[bytes, Any]:
    labels = [(first + i) % 10 for i in range(count)]
    data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    # Red plane: label * 25, so that tests can check how rows become images.
    data[:, :1024] = (np.array(labels, dtype=np.uint8) * 25)[:, None]
    return {
        b"batch_label": label,
        b"labels": labels,
        b"data": data,
        b"filenames": [f"image_{first + i}.png".encode() for i in range(count)],
    }


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar_archive(path: Path, per_batch: int = 60, test: int = 100, seed: int = 0) -> str:
    """A small ``cifar-10-python.tar.gz``: the official layout and pickle format (protocol 2,
    byte-string keys, uint8 N x 3072 ``data``, ``labels`` lists); returns its md5."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for index in range(1, 6):
            batch = _batch(per_batch, index * per_batch, rng, f"training batch {index}".encode())
            add_member(tar, f"data_batch_{index}", pickle.dumps(batch, protocol=2))
        add_member(tar, "test_batch", pickle.dumps(_batch(test, 0, rng, b"testing"), protocol=2))
        meta = {b"label_names": CLASSES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
        add_member(tar, "batches.meta", pickle.dumps(meta, protocol=2))
        add_member(tar, "readme.html", b"<html>CIFAR-10 (test copy)</html>")
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def load_example_module(name: str) -> ModuleType:
    """Import one of the example's modules with the example folder on sys.path, as
    ``pollen client-app --dir`` does, and take it off again."""
    saved = {key: sys.modules.pop(key) for key in ("cifar10", "task") if key in sys.modules}
    sys.path.insert(0, str(EXAMPLE))
    try:
        unique = f"client_authentication_example_{name}"
        spec = importlib.util.spec_from_file_location(unique, EXAMPLE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module  # dataclasses look their module up while being built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLE))
        for key in ("cifar10", "task"):
            sys.modules.pop(key, None)
        sys.modules.update(saved)


@functools.cache
def cifar10() -> ModuleType:
    return load_example_module("cifar10")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz"
    return path, write_cifar_archive(path)


@pytest.fixture(autouse=True)
def no_outside_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's cache, the real archive, or the internet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("POLLEN_CIFAR10_URL", f"http://127.0.0.1:{free_port()}/unreachable")
    for name in ("POLLEN_CIFAR10", "POLLEN_CIFAR10_MD5"):
        monkeypatch.delenv(name, raising=False)


def one_line_error(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_reads_images_and_labels_in_the_official_layout(
    archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, md5 = archive
    monkeypatch.setenv("POLLEN_CIFAR10_MD5", md5)
    data = cifar10().load(path)
    assert data.train_images.shape == (300, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.train_labels.shape == (300,) and data.train_labels.dtype == np.int64
    assert data.test_images.shape == (100, 3, 32, 32) and data.test_labels.shape == (100,)
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    # batches in order 1..5; the first 1024 values of a row are the red plane
    assert data.train_labels[:3].tolist() == [0, 1, 2]
    assert sorted(set(data.train_labels.tolist())) == list(range(10))
    np.testing.assert_array_equal(data.train_images[:, 0, 5, 7], data.train_labels * 25)
    # a folder holding the archive works too
    assert cifar10().find_archive(path.parent) == path


def test_iid_partitions_are_disjoint_equal_and_cover_the_training_set(
    archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, md5 = archive
    monkeypatch.setenv("POLLEN_CIFAR10_MD5", md5)
    module = cifar10()
    data = module.load(path)
    parts = [module.partition(data, k, 3) for k in range(3)]
    assert [len(p.train_labels) + len(p.val_labels) for p in parts] == [100, 100, 100]
    assert [len(p.val_labels) for p in parts] == [20, 20, 20]  # 20 % for validation
    assert sum(len(p.test_labels) for p in parts) == 100
    rows = np.concatenate([np.concatenate([p.train_images, p.val_images]) for p in parts])
    assert len({row.tobytes() for row in rows}) == 300  # disjoint, and together all of it
    again = module.partition(data, 1, 3)  # the same seed: every node cuts the same way
    np.testing.assert_array_equal(again.train_labels, parts[1].train_labels)
    np.testing.assert_array_equal(again.train_images, parts[1].train_images)


def test_dirichlet_partitions_are_skewed_reproducible_and_cover_everything() -> None:
    module = cifar10()
    labels = np.arange(1000) % 10
    parts = module.dirichlet_partitions(labels, 4, alpha=0.1, seed=7)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    assert min(len(p) for p in parts) >= 10
    counts = np.array([np.bincount(labels[p], minlength=10) for p in parts])
    assert (counts == 0).any()  # alpha 0.1: some node lacks some class
    for part, same in zip(parts, module.dirichlet_partitions(labels, 4, 0.1, seed=7), strict=True):
        np.testing.assert_array_equal(part, same)
    with pytest.raises(module.DataError) as excinfo:
        module.dirichlet_partitions(labels[:20], 10, alpha=0.01, seed=0, attempts=3)
    assert "raise alpha or lower num-partitions" in one_line_error(excinfo)


def test_bad_partition_settings_say_how_to_fix_them(archive: tuple[Path, str]) -> None:
    module = cifar10()
    data = module.read_archive(archive[0])
    with pytest.raises(module.DataError) as excinfo:
        module.partition(data, 2, 2)
    assert "partition-id=K,num-partitions=N" in one_line_error(excinfo)
    with pytest.raises(module.DataError, match="use iid or dirichlet"):
        module.partition(data, 0, 2, partitioning="shards")


def test_an_archive_with_the_wrong_checksum_is_refused(archive: tuple[Path, str]) -> None:
    module = cifar10()
    with pytest.raises(module.DataError) as excinfo:
        module.load(archive[0])  # the official md5 is expected; this is a test copy
    message = one_line_error(excinfo)
    assert f"md5 {archive[1]} is not the expected {module.MD5}" in message
    assert f"download cifar-10-python.tar.gz again from {module.URL}" in message


def test_a_truncated_archive_is_named_not_a_traceback(tmp_path: Path) -> None:
    module = cifar10()
    whole = tmp_path / "whole.tar.gz"
    write_cifar_archive(whole, per_batch=10, test=10)
    truncated = tmp_path / "cifar-10-python.tar.gz"
    truncated.write_bytes(whole.read_bytes()[:-200])
    with pytest.raises(module.DataError) as excinfo:
        module.read_archive(truncated)
    assert "not a readable cifar-10-python.tar.gz" in one_line_error(excinfo)


def test_a_doctored_pickle_cannot_run_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "data_batch_1", pickle.dumps({b"data": Payload()}, protocol=2))
    module = cifar10()
    with pytest.raises(module.DataError) as excinfo:
        module.read_archive(path)
    assert "is not a CIFAR-10 batch (it refers to" in one_line_error(excinfo)
    assert not (tmp_path / "pwned").exists()


def test_a_given_path_without_the_archive_says_where_to_put_it(tmp_path: Path) -> None:
    module = cifar10()
    with pytest.raises(module.DataError) as excinfo:
        module.find_archive(tmp_path / "nowhere.tar.gz")
    message = one_line_error(excinfo)
    assert f"not found at {tmp_path / 'nowhere.tar.gz'}" in message
    assert module.URL in message


def test_offline_without_the_archive_says_where_to_put_it(tmp_path: Path) -> None:
    # no path given, nothing at the default location, the URL points at a closed local port
    module = cifar10()
    with pytest.raises(module.DataError) as excinfo:
        module.find_archive()
    message = one_line_error(excinfo)
    default = tmp_path / "cache" / "pollen" / "cifar-10-python.tar.gz"
    assert f"CIFAR-10 is not at {default} and could not be downloaded" in message
    assert f"put it at {default}" in message and "data-path=PATH" in message
    # issue 12: an empty ~/.cache/pollen stayed behind; the cache folder was made for it too
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("url", ["closed-port", "missing-file"])
def test_a_failed_download_removes_only_the_folders_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    module = cifar10()
    cache = tmp_path / "cache"
    (cache / "other-app").mkdir(parents=True)  # ~/.cache exists, ~/.cache/pollen does not
    if url == "missing-file":
        monkeypatch.setenv("POLLEN_CIFAR10_URL", (tmp_path / "nothing.tar.gz").as_uri())
    with pytest.raises(module.DataError, match="could not be downloaded"):
        module.find_archive()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cache", "other-app"]

    (cache / "pollen").mkdir()  # a folder the user made is kept
    with pytest.raises(module.DataError, match="could not be downloaded"):
        module.find_archive()
    assert (cache / "pollen").is_dir() and not list((cache / "pollen").iterdir())


@contextlib.contextmanager
def serve_file(payload: bytes) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (OS-chosen port) that answers every GET with ``payload``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_keeps_the_file_only_when_its_checksum_matches(
    archive: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = cifar10()
    path, md5 = archive
    default = tmp_path / "cache" / "pollen" / "cifar-10-python.tar.gz"
    with serve_file(path.read_bytes()) as url:
        monkeypatch.setenv("POLLEN_CIFAR10_URL", url)
        with pytest.raises(module.DataError) as excinfo:  # expects the official md5
            module.find_archive()
        message = one_line_error(excinfo)
        assert f"downloaded from {url} has md5 {md5}, not {module.MD5}" in message
        assert not (tmp_path / "cache").exists()  # nor any *.part file

        monkeypatch.setenv("POLLEN_CIFAR10_MD5", md5)
        data = module.load()
    assert default.read_bytes() == path.read_bytes()
    assert len(data.train_labels) == 300
    assert module.find_archive() == default  # now found without a download


def test_the_command_line_checks_an_archive(
    archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = cifar10()
    assert module.main([str(archive[0])]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    monkeypatch.setenv("POLLEN_CIFAR10_MD5", archive[1])
    assert module.main([str(archive[0])]) == 0
    assert "CIFAR-10 ready" in capsys.readouterr().out


def test_the_task_is_the_classic_cnn_trained_as_the_seed_trains_it(
    archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("POLLEN_CIFAR10_MD5", archive[1])
    task = load_example_module("task")
    net = task.Net()
    shapes = [tuple(w.shape) for w in task.get_weights(net)]
    assert shapes == [
        (6, 3, 5, 5),
        (6,),
        *[(6,)] * 4,  # BatchNorm: weight, bias, running mean and variance
        (),  # its num_batches_tracked
        (16, 6, 5, 5),
        (16,),
        (120, 400),
        (120,),
        (84, 120),
        (84,),
        (10, 84),
        (10,),
    ]
    config = {"data-path": str(archive[0]), "partition-id": 1, "num-partitions": 2}
    trainloader, valloader, testloader = task.load_data(config)
    assert (len(trainloader.dataset), len(valloader.dataset), len(testloader.dataset)) == (
        120,
        30,
        50,
    )
    assert trainloader.batch_size == 32
    results = task.train(net, trainloader, valloader, epochs=1)
    assert sorted(results) == ["train_accuracy", "train_loss", "val_accuracy", "val_loss"]
    assert all(isinstance(v, float) for v in results.values())
    loss, accuracy = task.test(net, testloader)
    assert loss > 0 and 0 <= accuracy <= 1
    fresh = task.Net()
    task.set_weights(fresh, task.get_weights(net))
    for mine, theirs in zip(task.get_weights(fresh), task.get_weights(net), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(ValueError, match=r"array 2 \(bn1.weight\) is \(6, 3, 5, 5\) there"):
        task.set_weights(fresh, task.get_weights(net)[:2] + task.get_weights(net)[:-2])
    with pytest.raises(task.DataError, match="num-partitions=two: expected a whole number"):
        task.load_data({**config, "num-partitions": "two"})


def test_a_node_without_the_archive_fails_its_task_in_one_line_and_keeps_running(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    client = load_example_module("client")  # sets one thread per process, as nodes want
    torch.set_num_threads(threads)
    server = load_example_module("server")
    missing = tmp_path / "missing.tar.gz"

    async def scenario() -> None:
        configs: list[dict[str, object]] = [{"data-path": str(missing)}] * 2
        async with federation(tmp_path, client.app, configs) as (link, nodes):
            config = ServerAppConfig(
                superlink=Address("127.0.0.1", link.driver_port), output_root=tmp_path / "runs"
            )
            with pytest.raises(RunError) as excinfo:
                await run_server_app(server.app, config)
            assert all(not node.task.done() for node in nodes)
        message = one_line_error(excinfo)
        assert f"CIFAR-10 archive not found at {missing}; download" in message
        assert "Traceback" not in message and "raised" not in message

    asyncio.run(scenario())
