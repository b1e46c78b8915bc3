"""Real photos that ship with installed packages, and LSUN-format databases built from them.

Used by the demo, the benchmarks and the tests: nothing is downloaded. The photos are
scikit-image's ``skimage.data`` colour photos and scikit-learn's two sample images; random
crops, flips and scales of them stand in for a scene collection.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Debian opencv-doc's example photos (some with faces), used where installed.
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                   "immunohistochemistry", "retina", "colorwheel")


def package_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) for every colour photo shipped by scikit-image/-learn."""
    from skimage import data

    photos = []
    for name in _SKIMAGE_PHOTOS:
        photos.append((name, np.ascontiguousarray(getattr(data, name)()[..., :3])))
    try:
        from sklearn.datasets import load_sample_images

        s = load_sample_images()
        for fname, img in zip(s.filenames, s.images):
            photos.append((Path(fname).stem, np.ascontiguousarray(img)))
    except Exception:  # scikit-learn is optional here
        pass
    return photos


def encode(img: np.ndarray, fmt: str = "webp", quality: int = 75) -> bytes:
    """RGB uint8 to encoded bytes ('webp', 'jpeg' or 'png') with OpenCV."""
    import cv2

    ext, params = {"webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, quality]),
                   "jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]),
                   "png": (".png", [])}[fmt]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img[..., ::-1]), params)
    if not ok:
        raise ValueError(f"could not encode as {fmt}")
    return buf.tobytes()


def random_view(img: np.ndarray, rng: np.random.Generator, short_side: int = 256,
                min_frac: float = 0.35) -> np.ndarray:
    """A random crop (aspect 1:1 to 4:3, either way), maybe flipped, scaled to ``short_side``."""
    import cv2

    h, w = img.shape[:2]
    frac = rng.uniform(min_frac, 1.0)
    aspect = rng.uniform(1.0, 4 / 3)
    ch = int(min(h, w) * frac)
    cw = min(w, int(ch * aspect))
    if rng.random() < 0.5 and ch * aspect <= h:
        ch, cw = min(h, int(cw * aspect)), ch
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    crop = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = short_side / min(crop.shape[:2])
    size = (max(short_side, round(crop.shape[1] * scale)),
            max(short_side, round(crop.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), size, interpolation=interp)


def lsun_key(rng: np.random.Generator) -> bytes:
    """A key in LSUN's style: 40 lowercase hex digits."""
    return rng.bytes(20).hex().encode()


def write_lmdb(path: str | Path, items: Iterable[tuple[bytes, bytes]],
               map_size: int = 1 << 34) -> Path:
    """Write (key, value) records to a new LMDB directory, as LSUN's databases are laid out."""
    import lmdb

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=map_size, subdir=True)
    try:
        txn = env.begin(write=True)
        for n, (k, v) in enumerate(items, 1):
            txn.put(k, v)
            if n % 1000 == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
    finally:
        env.close()
    return path


def make_lsun(path: str | Path, n: int, seed: int = 0, short_side: int = 256,
              quality: int = 75, fmt: str = "webp") -> Path:
    """An LSUN-format database of ``n`` random views of the package photos."""
    rng = np.random.default_rng(seed)
    photos = [p for _, p in package_photos()]

    def records():
        for _ in range(n):
            img = random_view(photos[int(rng.integers(len(photos)))], rng, short_side)
            yield lsun_key(rng), encode(img, fmt, quality)

    return write_lmdb(path, records())



def write_fashion_mnist(out: str | Path, resolution: int = 64, split: str = "train",
                        limit: int | None = None, seed: int = 0) -> Path:
    """Fashion-MNIST (Debian's package) as a dataset directory the trainer reads (``images``
    at ``resolution``, 32 x 32 ``thumbs``; the class goes in each manifest line as
    ``label``)."""
    from dcgan.labelled import fashion_mnist
    from pipeline.dataset import DatasetWriter
    from pipeline.decode import THUMB, resize

    data = fashion_mnist(split, resolution, limit, seed)
    config = {"source": "fashion-mnist", "split": split, "limit": limit, "seed": seed,
              "resolution": resolution}
    with DatasetWriter(out, "fashion-mnist", config, {"images": (resolution, resolution, 3),
                                                      "thumbs": (THUMB, THUMB, 3)}) as w:
        if not w.done:
            for i, (img, label) in enumerate(zip(data.images, data.labels)):
                w.add(f"{split}/{i}", {"images": img, "thumbs": resize(img, THUMB)},
                      label=int(label))
                w.advance()
            w.finish()
    return Path(out)
