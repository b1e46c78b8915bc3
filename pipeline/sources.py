"""Sources of images, and the one place that decides what a path given by a user is.

A source has ``len``, ``read_range(start, stop)`` yielding ``(key, data)`` for records
``start..stop-1`` in order (``data`` the encoded bytes, decoded pixels for a dataset
directory, or ``None`` when the record cannot be read), ``describe()`` (its identity, part
of the lineage of what is made from it) and ``paths`` (what an output must stay apart
from). A source must be picklable and open its handles lazily, per process.
"""

from __future__ import annotations

import errno
import os
import stat
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
    """Image files under a folder, recursively, in sorted order; keys are relative paths.

    Symlinks are followed, to files and to folders (a collection assembled from links reads
    as it looks), except a link to a folder that holds it: that would loop forever. What
    should hold images but cannot be read is an item too, read as ``None`` so the stage
    counts it as corrupt instead of silently leaving it out: a folder that cannot be listed
    (key ``"name/"``), a folder link that loops, a link that leads nowhere (named like an
    image, or with no suffix: it may have led to a folder, e.g. an unmounted drive), and a
    FIFO, socket or device named like an image. Only regular files are ever opened (reading
    a FIFO would block). ``why_unreadable(key)`` says why an item read as ``None``.
    """

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root)
        if not self.root.exists():
            raise UserError(f"{self.root} does not exist")
        if not self.root.is_dir():
            raise UserError(f"{self.root} is not a folder")
        self.unreadable: dict[str, str] = {}  # key -> why it reads as None
        files = sorted(self._walk(self.root, "", frozenset()))
        self.files = files[:limit] if limit else files

    @property
    def paths(self) -> list[Path]:
        return [self.root]

    def _walk(self, folder: Path, prefix: str,
              ancestors: frozenset[tuple[int, int]]) -> Iterator[str]:
        """Keys under ``folder`` (``prefix``: its key with a trailing slash)."""
        try:
            st = os.stat(folder)
            here = ancestors | {(st.st_dev, st.st_ino)}
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            if not prefix:
                raise UserError(f"cannot read folder {folder}: {e.strerror}") from e
            self.unreadable[prefix] = f"unreadable folder ({e.strerror})"
            yield prefix
            return
        for entry in entries:
            key = prefix + entry.name
            image_name = Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
            try:
                st = entry.stat()  # follows a symlink
            except OSError as e:
                if image_name or (entry.is_symlink() and not Path(entry.name).suffix):
                    self.unreadable[key] = (
                        "symlink loop" if e.errno == errno.ELOOP else
                        "dangling symlink" if e.errno == errno.ENOENT and entry.is_symlink()
                        else f"cannot read ({e.strerror})")
                    yield key
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in here:
                    self.unreadable[key + "/"] = "symlink loop (a link to a folder holding it)"
                    yield key + "/"
                else:
                    yield from self._walk(Path(entry.path), key + "/", here)
            elif image_name:
                if not stat.S_ISREG(st.st_mode):
                    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
                    self.unreadable[key] = f"not a regular file ({kind})"
                yield key

    def __len__(self) -> int:
        return len(self.files)

    def read_range(self, start: int, stop: int) -> Iterator[tuple[str, bytes | None]]:
        for rel in self.files[start:stop]:
            yield rel, None if rel in self.unreadable else self._read(rel)

    def _read(self, rel: str) -> bytes | None:
        """The file's bytes; None (and the reason noted) when it cannot be read."""
        try:
            # Non-blocking: a file replaced by a FIFO since the listing opens at once.
            fd = os.open(self.root / rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            self.unreadable[rel] = f"cannot open ({e.strerror})"
            return None
        with open(fd, "rb") as f:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    self.unreadable[rel] = "not a regular file"
                    return None
                return f.read()
            except OSError as e:
                self.unreadable[rel] = f"read error ({e.strerror})"
                return None

    def why_unreadable(self, key: str) -> str:
        """Why ``key`` read as ``None`` (in the process that read it)."""
        return self.unreadable.get(key, "unreadable file")

    def describe(self) -> dict:
        return {"kind": "folder", "path": str(self.root.resolve()), "count": len(self.files),
                "fingerprint": self._fingerprint()}

    def _fingerprint(self) -> str:
        """Names, sizes and modification times of the files: a folder whose photos changed
        since a stage read it is not mistaken for the same input."""
        import hashlib

        h = hashlib.sha256()
        for key in self.files:
            try:
                st = os.stat(self.root / key)
                line = f"{key}\0{st.st_size}\0{st.st_mtime_ns}\n"
            except OSError:
                line = f"{key}\0?\n"
            h.update(line.encode(errors="surrogateescape"))  # names need not be UTF-8
        return h.hexdigest()[:16]


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

_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device"}
