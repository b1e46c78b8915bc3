"""Sources of images, and the one place that decides what a path given by a user is.

A source has ``len``, ``read_range(start, stop)`` yielding ``(key, data)`` for records
``start..stop-1`` in order (``data`` the encoded bytes, decoded pixels for a dataset
directory, or ``None`` when the record cannot be read), ``describe()`` (its identity, part
of the lineage of what is made from it) and ``paths`` (what an output must stay apart
from). A source must be picklable and open its handles lazily, per process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class Source(Protocol):
    paths: list[Path]

    def __len__(self) -> int: ...

    def read_range(self, start: int, stop: int
                   ) -> Iterator[tuple[str, bytes | np.ndarray | None]]: ...

    def describe(self) -> dict: ...


class FolderSource:
    """Image files under a folder, recursively, in sorted order; keys are relative paths."""

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root)
        if not self.root.exists():
            raise UserError(f"{self.root} does not exist")
        if not self.root.is_dir():
            raise UserError(f"{self.root} is not a folder")
        files = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.files = files[:limit] if limit else files

    @property
    def paths(self) -> list[Path]:
        return [self.root]

    def __len__(self) -> int:
        return len(self.files)

    def read_range(self, start: int, stop: int) -> Iterator[tuple[str, bytes | None]]:
        for rel in self.files[start:stop]:
            try:
                yield rel, (self.root / rel).read_bytes()
            except OSError:
                yield rel, None

    def describe(self) -> dict:
        return {"kind": "folder", "path": str(self.root.resolve()), "count": len(self.files)}


class DatasetSource:
    """A finished dataset directory's images as a source of (already decoded) pixels."""

    def __init__(self, root: str | Path, limit: int | None = None):
        from pipeline.dataset import Dataset

        self.root = Path(root)
        self._dataset: Dataset | None = Dataset(self.root)
        keys = self._dataset.keys
        self.keys = keys[:limit] if limit else keys
        self._identity = self._dataset.identity()

    @property
    def paths(self) -> list[Path]:
        return [self.root]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}  # each worker maps the arrays itself

    def __len__(self) -> int:
        return len(self.keys)

    def read_range(self, start: int, stop: int) -> Iterator[tuple[str, np.ndarray]]:
        from pipeline.dataset import Dataset

        if self._dataset is None:
            self._dataset = Dataset(self.root)
        images = self._dataset.images
        for i in range(start, min(stop, len(self.keys))):
            yield self.keys[i], np.array(images[i])

    def describe(self) -> dict:
        return {**self._identity, "count": len(self)}


def open_source(path: str | Path, limit: int | None = None, category: str | None = None,
                split: str = "train") -> Source:
    """A dataset directory, an LSUN database (or a root of them with ``category``) or a
    folder of photos, by what is there."""
    from pipeline.dataset import is_dataset
    from pipeline.lsun import LsunSource, resolve_databases

    path = Path(path)
    if category:
        return LsunSource(resolve_databases([path], category, split), limit=limit)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if is_dataset(path):
        return DatasetSource(path, limit=limit)
    if path.is_dir() and (path / "data.mdb").is_file():
        return LsunSource([path], limit=limit)
    source = FolderSource(path, limit=limit)
    if len(source) == 0:
        raise UserError(f"no images (JPEG, PNG, WebP, BMP, TIFF) under {path}")
    return source
