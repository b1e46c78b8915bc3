"""Shared fixtures: small real inputs (photos from skimage/sklearn, real LMDBs)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.samples import encode, lsun_key, package_photos, random_view, write_lmdb

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
