"""The report's pictures: pixels of items a stage kept or dropped, fetched in one batch.

A dropped item's pixels are not in the dataset that dropped it: they come from the stage's
input (a dataset row found by key, an LSUN record, a photo file, decoded with
``pipeline.decode``). Every request is answered with a small image file or a note saying why
there is none (a corrupt record, a source that is gone).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import Dataset
from pipeline.decode import DecodeError, decode
from pipeline.errors import UserError
from pipeline.sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

TILE = 128  # longest side of a whole source image shown as a tile
PHOTO = 320  # longest side of a source photo shown with its face boxes


class Origin:
    """Where the items of one stage's input are: read by key."""

    label = "source"

    def read(self, keys: list[str]) -> Iterator[tuple[str, np.ndarray | str]]:
        """Each key with its pixels (RGB uint8), or a note saying why there are none; one
        at a time (source photos can be large)."""
        raise NotImplementedError

    def rows(self, rows: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError(f"{self.label} has no rows")


@dataclass
class DatasetOrigin(Origin):
    """A dataset directory: its stored pixels (the training crops), found by key."""

    ds: Dataset
    label: str = "dataset"

    def read(self, keys: list[str]) -> Iterator[tuple[str, np.ndarray | str]]:
        rows = self.ds.find(keys)
        images = self.ds.images
        for k, i in sorted(rows.items(), key=lambda kv: kv[1]):  # memory-map order
            yield k, np.array(images[i])
        for k in keys:
            if k not in rows:
                yield k, f"not in {self.ds.root}"

    def rows(self, rows: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        images = self.ds.images
        for i in sorted(set(rows)):
            yield i, np.array(images[i])


@dataclass
class LsunOrigin(Origin):
    """LSUN databases: the encoded record of each key, decoded."""

    databases: list[Path]
    label: str = "LSUN record"

    def read(self, keys: list[str]) -> Iterator[tuple[str, np.ndarray | str]]:
        from pipeline.lsun import open_env

        envs = []
        for db in self.databases:
            try:
                envs.append(open_env(db))
            except UserError as e:
                log.warning("%s", e)
        for k in keys:
            data = None
            for env in envs:
                with env.begin(buffers=False) as txn:
                    data = next((v for b in key_bytes(k) if (v := txn.get(b)) is not None),
                                None)
                if data is not None:
                    break
            yield k, _decode(data) if data is not None else "record not found in the database"


@dataclass
class FolderOrigin(Origin):
    """A folder of photos: keys are paths relative to it."""

    root: Path
    label: str = "photo file"

    def read(self, keys: list[str]) -> Iterator[tuple[str, np.ndarray | str]]:
        root = self.root.resolve()
        for k in keys:
            path = (root / k).resolve()
            # A key is never trusted as a path: only image files inside the folder are read.
            if root not in path.parents or path.suffix.lower() not in IMAGE_SUFFIXES:
                yield k, "not a photo of the folder"
                continue
            try:
                data = path.read_bytes()
            except OSError:
                yield k, "file not found"
                continue
            yield k, _decode(data)


@dataclass
class MissingOrigin(Origin):
    """An input that cannot be read any more: every item gets the note."""

    note: str
    label: str = "source"

    def read(self, keys: list[str]) -> Iterator[tuple[str, np.ndarray | str]]:
        for k in keys:
            yield k, self.note


def key_bytes(text: str) -> list[bytes]:
    """LMDB keys a manifest key may stand for: its UTF-8, and with ``\\xNN`` escapes undone
    (``pipeline.lsun.key_text`` writes non-UTF-8 bytes that way)."""
    raw = text.encode("utf-8")
    if b"\\x" not in raw:
        return [raw]
    import re

    unescaped = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), raw)
    return [raw, unescaped]


def _decode(data: bytes) -> np.ndarray | str:
    try:
        return decode(data)
    except DecodeError as e:
        return f"{e.reason}: {e.detail}" if e.detail else e.reason


def fit(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` scaled down (area-averaged) so its longest side is at most ``side``."""
    import cv2

    h, w = img.shape[:2]
    s = side / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


@dataclass
class Request:
    origin: Origin
    key: str
    kind: str  # tile (stored crop or whole image), photo (source photo), face (crop of box)
    row: int | None = None  # a dataset row, when known (no lookup by key)
    box: tuple[int, int, int, int] | None = None
    crop: dict[str, Any] = field(default_factory=dict)  # face: size, margin, border


@dataclass
class Picture:
    """A written picture (``src`` relative to the page, its size) or why there is none."""

    src: str | None
    width: int = 0
    height: int = 0
    note: str = ""
    source_size: tuple[int, int] = (0, 0)  # (width, height) before scaling: boxes are in it


class Pictures:
    """Collects picture requests while the page is gathered, then reads each origin once
    (rows in order, each photo decoded once) and writes every picture."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def add(self, origin: Origin, key: str, kind: str = "tile", *, row: int | None = None,
            box: tuple[int, int, int, int] | None = None, **crop: Any) -> int:
        self.requests.append(Request(origin, key, kind, row, box, crop))
        return len(self.requests) - 1

    def name(self, n: int) -> str:
        """The file name of request ``n``'s picture."""
        return f"p{n}.{'jpg' if self.requests[n].kind == 'photo' else 'png'}"

    def resolve(self, write: Any, prefix: str) -> list[Picture]:
        """Read every request's pixels, origin by origin (each photo decoded once), pass
        each picture to ``write(name, bytes)`` and return the pictures in request order
        (``src``: ``prefix`` + name)."""
        out: list[Picture | None] = [None] * len(self.requests)
        by_origin: dict[int, list[int]] = defaultdict(list)
        for n, r in enumerate(self.requests):
            by_origin[id(r.origin)].append(n)
        for ns in by_origin.values():
            origin = self.requests[ns[0]].origin
            by_row, by_key = defaultdict(list), defaultdict(list)
            for n in ns:
                r = self.requests[n]
                (by_row[r.row] if r.row is not None else by_key[r.key]).append(n)
            reads = [origin.rows(list(by_row)) if by_row else iter(()),
                     origin.read(sorted(by_key)) if by_key else iter(())]
            for wanted, got in zip((by_row, by_key), reads):
                for ref, img in got:
                    for n in wanted[ref]:
                        out[n] = self._render(n, img, write, prefix)
        return [p or Picture(None, note="not read") for p in out]

    def _render(self, n: int, img: np.ndarray | str, write: Any, prefix: str) -> Picture:
        import cv2

        from pipeline.faces import crop_face

        if isinstance(img, str):
            return Picture(None, note=img)
        r = self.requests[n]
        size = (img.shape[1], img.shape[0])
        if r.kind == "face" and r.box is not None:
            img = crop_face(img, r.box, r.crop.get("size", 64), r.crop.get("margin", 0.25),
                            r.crop.get("border", "pad"))
        elif r.kind == "photo":
            img = fit(img, PHOTO)
        elif not isinstance(r.origin, DatasetOrigin):
            img = fit(img, TILE)
        jpeg = r.kind == "photo"
        ok, buf = cv2.imencode(".jpg" if jpeg else ".png", np.ascontiguousarray(img[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, 85] if jpeg else [])
        if not ok:
            return Picture(None, note="could not encode")
        write(self.name(n), buf.tobytes())
        return Picture(prefix + self.name(n), img.shape[1], img.shape[0], source_size=size)
