"""Labelled image sets, offline: Fashion-MNIST from the Debian package, or class folders.

Fashion-MNIST (``dataset-fashion-mnist``: 60k train + 10k test, 28 x 28 grey, 10 classes)
stands in for CIFAR-10, which is not reachable offline. It is upscaled to the training
resolution and repeated to RGB, so the same network reads it
(``demo.samples.write_fashion_mnist`` makes a dataset directory of it for the trainer).
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot")


@dataclass
class Labelled:
    """A labelled image set: uint8 (N, H, W, 3) images, int labels, class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def subset(self, idx: np.ndarray) -> Labelled:
        return Labelled(self.images[idx], self.labels[idx], self.classes)


def read_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's idx files: uint8 (N, 28, 28) images and uint8 (N,) labels."""
    kind = {"train": "train", "test": "t10k"}.get(split)
    if kind is None:
        raise UserError(f"Fashion-MNIST split must be train or test, not {split!r}")
    root = Path(root)
    img_path = root / f"{kind}-images-idx3-ubyte.gz"
    lab_path = root / f"{kind}-labels-idx1-ubyte.gz"
    if not img_path.is_file() or not lab_path.is_file():
        raise UserError(f"Fashion-MNIST not found in {root}: install the Debian package "
                        "dataset-fashion-mnist")
    with gzip.open(lab_path, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(img_path, "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(len(labels), 28, 28)
    return images, labels


def upscale(grey: np.ndarray, resolution: int) -> np.ndarray:
    """(N, h, w) grey uint8 to (N, res, res, 3) uint8 (cubic, the decoder's upscaling)."""
    from pipeline.decode import resize

    out = np.empty((len(grey), resolution, resolution, 3), np.uint8)
    for i, g in enumerate(grey):
        out[i] = resize(g, resolution)[..., None]
    return out


def fashion_mnist(split: str = "train", resolution: int = 64, limit: int | None = None,
                  seed: int = 0) -> Labelled:
    """Fashion-MNIST as RGB at ``resolution``; ``limit`` draws a class-stratified subset."""
    grey, labels = read_fashion_mnist(split)
    idx = np.arange(len(labels))
    if limit and limit < len(labels):
        idx = stratified(labels, limit, seed)
    return Labelled(upscale(grey[idx], resolution), labels[idx].astype(np.int64),
                    list(FASHION_CLASSES))


def stratified(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` items with the classes as balanced as the counts allow."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked: list[int] = []
    k = 0
    while len(picked) < n:
        for p in per:
            if k < len(p) and len(picked) < n:
                picked.append(int(p[k]))
        k += 1
    return np.sort(np.array(picked))


def load_folder(root: str | Path, resolution: int = 64) -> Labelled:
    """A folder with one subfolder of images per class (centre-cropped, resized)."""
    from pipeline.decode import DecodeError, center_crop, decode, resize
    from pipeline.sources import FolderSource

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"labelled folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and len(FolderSource(p)) > 0)
    if len(classes) < 2:
        raise UserError(f"{root} must hold at least two class subfolders of images "
                        f"(found {len(classes)}: {classes})")
    images, labels, bad = [], [], 0
    for c, name in enumerate(classes):
        source = FolderSource(root / name)
        for _, data in source.read_range(0, len(source)):
            try:
                img = decode(data or b"", min_side=resolution)
            except DecodeError:
                bad += 1
                continue
            images.append(resize(center_crop(img), resolution))
            labels.append(c)
    if bad:
        log.warning("skipped %d unreadable images in %s", bad, root)
    return Labelled(np.stack(images), np.array(labels, np.int64), classes)


def is_fashion_mnist(spec: str | Path) -> bool:
    """True for the names that mean the Debian package's Fashion-MNIST."""
    return str(spec).lower().replace("_", "-") in ("fashion-mnist", "fmnist")


def load_labelled(spec: str | Path, resolution: int = 64, limit: int | None = None,
                  split: str = "train", seed: int = 0) -> Labelled:
    """'fashion-mnist' (the Debian package) or a folder of class subfolders."""
    if is_fashion_mnist(spec):
        return fashion_mnist(split, resolution, limit, seed)
    data = load_folder(spec, resolution)
    if limit and limit < len(data.labels):
        data = data.subset(stratified(data.labels, limit, seed))
    return data
