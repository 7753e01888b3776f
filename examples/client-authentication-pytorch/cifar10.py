"""CIFAR-10 without torchvision: the official "python version" archive, checked, read, split.

The archive (``cifar-10-python.tar.gz``, 163 MiB) is found, in this order, at
``--node-config data-path=PATH`` (else ``--run-config data-path=PATH``, which is how
a simulation's virtual nodes get it), at ``$POLLEN_CIFAR10``, or at the default
location ``~/.cache/pollen/cifar-10-python.tar.gz`` (``$XDG_CACHE_HOME`` is
honoured); only in the last case is it downloaded when missing. PATH may be the
archive itself or a folder holding it. Every archive is checked against the
official md5 before it is read.

Run ``python cifar10.py [PATH]`` to fetch and check the archive ahead of time.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollen import PollenError

logger = logging.getLogger(__name__)

ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"

PATH_ENV = "POLLEN_CIFAR10"
"""Where the archive is when ``data-path`` is not given."""
URL_ENV = "POLLEN_CIFAR10_URL"
"""A mirror to download from instead of the official URL."""
MD5_ENV = "POLLEN_CIFAR10_MD5"
"""The md5 to expect instead of the official one (a mirror's repackaging, test archives)."""

DOWNLOAD_TIMEOUT = 10.0
"""Seconds to wait to connect and for each read; past that the node counts as offline."""

_HINT = (
    f"pass --node-config data-path=PATH (in a simulation --run-config data-path=PATH) "
    f"or set {PATH_ENV}=PATH"
)


class DataError(PollenError):
    """CIFAR-10 is missing, damaged or asked for in a way that cannot work; says how to fix it."""


@dataclass(frozen=True)
class Cifar10:
    """The whole data set: images uint8 (N, 3, 32, 32), labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


def default_location() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pollen" / ARCHIVE


def expected_md5() -> str:
    return (os.environ.get(MD5_ENV) or MD5).strip().lower()


# --- finding (and, at the default location, downloading) the archive -------------------


def find_archive(data_path: str | Path | None = None) -> Path:
    """The archive to read: ``data_path``, else ``$POLLEN_CIFAR10``, else the default location.

    Only the default location is filled by a download; a path that was given
    and holds no archive is an error saying where to put it.
    """
    given = data_path if data_path not in (None, "") else os.environ.get(PATH_ENV) or None
    if given is not None:
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / ARCHIVE
        if not path.is_file():
            raise DataError(
                f"CIFAR-10 archive not found at {path}; download {ARCHIVE} from {URL} "
                "and put it there, or point data-path at the file"
            )
        return path
    path = default_location()
    if not path.is_file():
        download(os.environ.get(URL_ENV) or URL, path, expected_md5())
    return path


def download(url: str, destination: Path, md5: str, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Fetch ``url`` to ``destination``, keeping it only if its md5 is ``md5``.

    A failed download leaves nothing behind, not even the folders it created
    (``~/.cache/pollen``).
    """
    created = _missing_folders(destination.parent)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(created)
        raise DataError(
            f"cannot create {destination.parent} for CIFAR-10 ({exc.strerror}); {_HINT}"
        ) from None
    try:
        return _fetch(url, destination, md5, timeout)
    except BaseException:
        _remove_empty(created)
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: another node's download is using it
            return


def _fetch(url: str, destination: Path, md5: str, timeout: float) -> Path:
    # A name of our own: two nodes on one machine may download at the same time.
    part = destination.with_name(f"{destination.name}.{os.getpid()}.part")
    digest = hashlib.md5(usedforsecurity=False)
    logger.info("downloading CIFAR-10 from %s to %s", url, destination)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, HTTPError and timeouts are OSErrors; a cut connection may be either.
            reason = getattr(exc, "reason", None) or exc
            raise DataError(
                f"CIFAR-10 is not at {destination} and could not be downloaded from {url} "
                f"({' '.join(str(reason).split())}); download {ARCHIVE} where there is a network "
                f"and put it at {destination}, or {_HINT}"
            ) from None
        if digest.hexdigest() != md5:
            raise DataError(
                f"the file downloaded from {url} has md5 {digest.hexdigest()}, not {md5}; "
                f"the download was damaged or the server sent something else: try again, or put "
                f"{ARCHIVE} at {destination} yourself"
            )
        os.replace(part, destination)
    finally:
        part.unlink(missing_ok=True)  # what is left of a failed or interrupted download
    return destination


def verify(path: Path, md5: str | None = None) -> None:
    """Refuse an archive whose md5 is not the expected one (truncated, or not CIFAR-10)."""
    expected = md5 or expected_md5()
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror}); {_HINT}") from None
    if digest.hexdigest() != expected:
        raise DataError(
            f"{path}: md5 {digest.hexdigest()} is not the expected {expected}; the file is "
            f"incomplete or not the CIFAR-10 python archive: download {ARCHIVE} again from {URL}"
        )


# --- reading the archive ---------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # The callables numpy's pickles refer to, taken from live arrays rather than
    # imported by their (version-dependent) module paths.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Reads CIFAR batches, which are pickles: only numpy arrays, dicts, lists and strings.

    A pickle may call any function it names; this one refuses every name but
    the few that numpy arrays need, so a doctored archive cannot run code.
    """

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}") from None


def _unpickle(tar: tarfile.TarFile, name: str, path: Path) -> dict[bytes, Any]:
    member = f"{FOLDER}/{name}"
    try:
        handle = tar.extractfile(member)
    except KeyError:
        handle = None
    if handle is None:
        raise DataError(
            f"{path}: {member} is missing; expected the official layout ({FOLDER}/ with "
            f"data_batch_1..5, test_batch, batches.meta): download {ARCHIVE} again from {URL}"
        )
    with handle:
        try:
            content = _BatchUnpickler(handle, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: {member} is not a CIFAR-10 batch ({exc})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: {member} is not a CIFAR-10 batch (not a dict)")
    return content


def _batch(tar: tarfile.TarFile, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    content = _unpickle(tar, name, path)
    data, labels = content.get(b"data"), content.get(b"labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: {FOLDER}/{name} has no N x 3072 'data' array")
    if labels is None or len(labels) != len(data):
        raise DataError(f"{path}: {FOLDER}/{name} has no 'labels' list of {len(data)} entries")
    label_array = np.asarray(labels, dtype=np.int64)
    if label_array.size and not 0 <= label_array.min() <= label_array.max() <= 9:
        raise DataError(f"{path}: {FOLDER}/{name} has labels outside 0..9")
    # Each row holds the red, then the green, then the blue 32 x 32 plane.
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), label_array


def read_archive(path: Path) -> Cifar10:
    """The data set in ``path`` (not checked against the md5: see `verify`)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            train = [_batch(tar, name, path) for name in TRAIN_BATCHES]
            test_images, test_labels = _batch(tar, TEST_BATCH, path)
            names = _unpickle(tar, META, path).get(b"label_names", [])
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"{path}: not a readable {ARCHIVE} ({exc}); download it again from {URL}"
        ) from None
    return Cifar10(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        classes=tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
    )


def load(data_path: str | Path | None = None) -> Cifar10:
    """Find (or download), verify and read CIFAR-10."""
    path = find_archive(data_path)
    verify(path)
    return read_archive(path)


# --- partitions --------------------------------------------------------------------------


def iid_partitions(count: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """``count`` indices shuffled with ``seed`` and cut into ``num_partitions`` near-equal parts."""
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet_partitions(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    attempts: int = 100,
) -> list[np.ndarray]:
    """Non-IID parts: each class is shared out in proportions drawn from Dirichlet(alpha).

    Small ``alpha`` gives each part few classes; large ``alpha`` approaches IID.
    Draws are repeated (same seed, so the same result everywhere) until every
    part holds at least ``min_size`` examples.
    """
    rng = np.random.default_rng(seed)
    smallest = 0
    for _ in range(attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, piece in zip(parts, np.split(members, cuts), strict=True):
                part.append(piece)
        result = [np.sort(np.concatenate(part)) for part in parts]
        smallest = min(len(part) for part in result)
        if smallest >= min_size:
            return result
    raise DataError(
        f"Dirichlet(alpha={alpha}) over {num_partitions} partitions left one with only "
        f"{smallest} examples after {attempts} draws; raise alpha or lower num-partitions"
    )


@dataclass(frozen=True)
class Partition:
    """One node's share: train and validation split of its part, and its part of the test set."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def partition(
    data: Cifar10,
    partition_id: int,
    num_partitions: int,
    partitioning: str = "iid",
    alpha: float = 0.5,
    seed: int = 42,
    val_fraction: float = 0.2,
) -> Partition:
    """Partition ``partition_id`` of ``num_partitions``; the same seed gives every node the same
    cut, so the parts are disjoint and cover the training set.

    ``partitioning``: ``iid`` or ``dirichlet`` (non-IID, see `dirichlet_partitions`). The
    node's part is split into train and validation (``val_fraction``); the official
    test set is shared out IID, so every node tests on the same distribution.
    """
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise DataError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1}; give each node "
            "--node-config partition-id=K,num-partitions=N with 0 <= K < N"
        )
    if partitioning == "iid":
        parts = iid_partitions(len(data.train_labels), num_partitions, seed)
    elif partitioning == "dirichlet":
        if not alpha > 0:
            raise DataError(f"alpha={alpha}: must be > 0 (e.g. 0.5; smaller is less IID)")
        parts = dirichlet_partitions(data.train_labels, num_partitions, alpha, seed)
    else:
        raise DataError(f"partitioning={partitioning!r}: use iid or dirichlet")
    mine = parts[partition_id]
    shuffled = np.random.default_rng(seed + 1 + partition_id).permutation(mine)
    val_count = round(len(shuffled) * val_fraction)
    val, train = np.sort(shuffled[:val_count]), np.sort(shuffled[val_count:])
    test = iid_partitions(len(data.test_labels), num_partitions, seed)[partition_id]
    return Partition(
        train_images=data.train_images[train],
        train_labels=data.train_labels[train],
        val_images=data.train_images[val],
        val_labels=data.train_labels[val],
        test_images=data.test_images[test],
        test_labels=data.test_labels[test],
    )


def main(argv: list[str]) -> int:
    """``python cifar10.py [PATH]``: fetch (at the default location) and check the archive."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = find_archive(argv[0] if argv else None)
        verify(path)
        data = read_archive(path)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"CIFAR-10 ready: {path} ({len(data.train_labels)} training and "
        f"{len(data.test_labels)} test images)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
