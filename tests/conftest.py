"""Shared fixtures: small real inputs (photos from skimage/sklearn, real LMDBs)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from demo.samples import encode, lsun_key, package_photos, random_view, write_lmdb

os.environ.setdefault("DCGAN_CURATE_CACHE", "")  # overridden per test below


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Key caches go to a per-session temporary folder, never the user's."""
    monkeypatch.setenv("DCGAN_CURATE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """The colour photos that ship with scikit-image and scikit-learn."""
    return [p for _, p in package_photos()]


# Records that are not valid images, each must be dropped as corrupt.
def bad_records(photo: np.ndarray) -> list[tuple[bytes, bytes]]:
    jpeg = encode(photo, "jpeg", 90)
    webp = encode(photo, "webp", 75)
    return [
        (b"bad-truncated-jpeg", jpeg[: len(jpeg) // 2]),
        (b"bad-truncated-webp", webp[: len(webp) // 2]),
        (b"bad-empty", b""),
        (b"bad-text", b"this is not an image at all"),
        (b"bad-garbled-jpeg", jpeg[:200] + bytes(range(256)) * 20 + b"\xff\xd9"),
    ]


@pytest.fixture(scope="session")
def lsun_records(photos) -> list[tuple[bytes, bytes]]:
    """Good WebP and JPEG records (LSUN-style keys) plus an odd key, in LMDB key order."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        img = random_view(photos[i % len(photos)], rng)
        fmt = "jpeg" if i % 4 == 3 else "webp"
        records.append((lsun_key(rng), encode(img, fmt, 75)))
    odd = random_view(photos[0], rng)
    records.append((b"../../etc/passwd\xff\xfe/odd key", encode(odd, "webp")))
    return records


@pytest.fixture(scope="session")
def lsun_db(tmp_path_factory, lsun_records, photos):
    """A real LMDB: 25 valid records (WebP, JPEG, an odd key) and 5 corrupt ones."""
    path = tmp_path_factory.mktemp("lsun") / "bedroom_train_lmdb"
    return write_lmdb(path, lsun_records + bad_records(photos[1]))


@pytest.fixture
def one_torch_thread():
    """Two cores shared by many jobs: one intra-op thread is faster than two here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory, photos):
    """60 JPEG files: random crops of the package photos (an image folder to train on)."""
    root = tmp_path_factory.mktemp("jpegs") / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        (root / f"{i:03d}.jpg").write_bytes(
            encode(random_view(photos[i % len(photos)], rng, short_side=80), "jpeg", 90))
    return root


@pytest.fixture(scope="module")
def data32(jpeg_folder, tmp_path_factory):
    """The folder through the real extraction stage: a 32 px dataset directory."""
    from pipeline.extract import ExtractConfig, extract
    from pipeline.sources import FolderSource

    out = tmp_path_factory.mktemp("data") / "photos32"
    extract(FolderSource(jpeg_folder), out, ExtractConfig(resolution=32, workers=1),
            progress=False)
    return out
