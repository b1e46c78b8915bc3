"""Sources of encoded images: anything with ``len``, ``read_range`` and a description.

``read_range(start, stop)`` yields ``(key, data)`` for records ``start..stop-1`` in order,
``data`` the encoded bytes, or ``None`` when the record cannot be read. A source must be
picklable and open its handles lazily, per process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pipeline.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class Source(Protocol):
    def __len__(self) -> int: ...

    def read_range(self, start: int, stop: int) -> Iterator[tuple[str, bytes | None]]: ...

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
