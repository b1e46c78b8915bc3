"""Near-duplicates made the way the web makes them, from real photos that ship with packages.

Used by the quality benchmark and the tests. Distinct images are non-overlapping grid tiles
(1x1 to 4x4) of real photos; each near-duplicate is one of ``KINDS`` applied to a tile and
encoded again, so it goes through the same decoding path as any record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo.samples import OPENCV_DATA, encode, package_photos

KINDS = ("exact", "reencode", "rescale", "crop", "brightness", "watermark")

# Colour photos among OpenCV's sample data (Debian opencv-doc); of each stereo pair or
# before/after pair only one is taken, so that no two photos are near-duplicates themselves.
OPENCV_PHOTOS = ("apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
                 "fruits.jpg", "home.jpg", "HappyFish.jpg", "left.jpg", "leuvenA.jpg",
                 "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "pca_test1.jpg",
                 "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "starry_night.jpg",
                 "stuff.jpg", "sudoku.png", "aero1.jpg", "graf1.png", "aloeL.jpg",
                 "Blender_Suzanne1.jpg", "ela_original.jpg", "text_defocus.jpg", "cards.png",
                 "chicky_512.png", "blox.jpg", "LinuxLogo.jpg", "ml.png", "detect_blob.png")


def all_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for the package photos plus OpenCV's sample photos when installed."""
    import cv2

    photos = list(package_photos())
    for name in OPENCV_PHOTOS:
        if not (OPENCV_DATA / name).is_file():  # opencv-doc not installed: no imread warning
            continue
        img = cv2.imread(str(OPENCV_DATA / name), cv2.IMREAD_COLOR)
        if img is not None:
            photos.append((name, np.ascontiguousarray(img[..., ::-1])))
    return photos


def tiles(img: np.ndarray, grids: tuple[int, ...] = (1, 2, 3, 4),
          min_side: int = 64, min_std: float = 12.0) -> list[np.ndarray]:
    """Non-overlapping tiles of ``img`` on k x k grids (tiles of different grids nest).

    Near-featureless tiles (grey-level std below ``min_std``: clear sky, a blank wall) are
    left out: two of them are indistinguishable, so calling them distinct would be wrong.
    """
    import cv2

    h, w = img.shape[:2]
    out = []
    for k in grids:
        th, tw = h // k, w // k
        if min(th, tw) < min_side:
            continue
        for r in range(k):
            for c in range(k):
                t = np.ascontiguousarray(img[r * th:(r + 1) * th, c * tw:(c + 1) * tw])
                if cv2.cvtColor(t, cv2.COLOR_RGB2GRAY).std() >= min_std:
                    out.append(t)
    return out


def _watermark(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Semi-opaque text in a corner covering a few percent of the image."""
    import cv2

    out = img.copy()
    h, w = out.shape[:2]
    scale = max(0.3, w / 600)
    text = str(rng.choice(["(c) photo", "stock", "SAMPLE", "@user"]))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(rng.choice([4, max(4, w - tw - 4)]))
    y = int(rng.choice([th + 4, h - 6]))
    layer = out.copy()
    cv2.putText(layer, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), max(1, int(scale * 2)), cv2.LINE_AA)
    return cv2.addWeighted(layer, 0.7, out, 0.3, 0)


def near_duplicate(img: np.ndarray, data: bytes, kind: str,
                   rng: np.random.Generator) -> bytes:
    """Encoded bytes of a ``kind`` near-duplicate of ``img`` (whose encoding is ``data``)."""
    import cv2

    h, w = img.shape[:2]
    if kind == "exact":
        return data
    if kind == "reencode":
        fmt = str(rng.choice(["jpeg", "webp"]))
        return encode(img, fmt, int(rng.integers(40, 80)))
    if kind == "rescale":
        s = rng.uniform(0.4, 0.85) if rng.random() < 0.7 else rng.uniform(1.2, 1.6)
        size = (max(16, round(w * s)), max(16, round(h * s)))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        return encode(cv2.resize(img, size, interpolation=interp), "jpeg", 85)
    if kind == "crop":  # up to 5% off each side: a shift and a slight zoom
        t, b, l_, r = (int(rng.uniform(0, 0.05) * d) for d in (h, h, w, w))
        return encode(np.ascontiguousarray(img[t:h - b, l_:w - r]), "jpeg", 85)
    if kind == "brightness":
        alpha = rng.uniform(0.7, 1.3)
        beta = rng.uniform(-30, 30)
        return encode(cv2.convertScaleAbs(img, alpha=alpha, beta=beta), "jpeg", 85)
    if kind == "watermark":
        return encode(_watermark(img, rng), "jpeg", 85)
    raise ValueError(f"unknown near-duplicate kind {kind!r}")


@dataclass
class NearDupSet:
    """Encoded records with ground truth: ``group[i]`` is the index of the original tile."""

    data: list[bytes]
    group: np.ndarray  # (N,) int: items with the same group are (near-)duplicates
    kind: list[str]  # 'original' or one of KINDS
    photo: np.ndarray  # (N,) int: the photo the item's tile was cut from


def make_neardup_set(photos: list[np.ndarray], seed: int = 0, dup_fraction: float = 0.5,
                     grids: tuple[int, ...] = (1, 2, 3, 4)) -> NearDupSet:
    """Every tile of ``photos`` once, plus near-duplicates of a ``dup_fraction`` of them.

    Near-duplicates cycle through ``KINDS``; items are shuffled so originals are not always
    first (the representative is then sometimes the edited copy).
    """
    rng = np.random.default_rng(seed)
    data, group, kind, source = [], [], [], []
    base = [(i, t) for i, p in enumerate(photos) for t in tiles(p, grids)]
    for g, (photo, tile) in enumerate(base):
        b = encode(tile, "jpeg", 90)
        data.append(b)
        group.append(g)
        kind.append("original")
        source.append(photo)
        if rng.random() < dup_fraction:
            k = KINDS[int(rng.integers(len(KINDS)))]
            data.append(near_duplicate(tile, b, k, rng))
            group.append(g)
            kind.append(k)
            source.append(photo)
    order = rng.permutation(len(data))
    return NearDupSet([data[i] for i in order], np.array(group)[order],
                      [kind[i] for i in order], np.array(source)[order])
