"""Bytes to pixels: format sniffing, integrity checks, fast decoding, crops and resizing.

Measured on this 2-core machine (256 px short side, one core): OpenCV's ``imdecode`` decodes
WebP q75 in 1.4 ms, about 1.5x faster than Pillow; resizing a 256 px crop to 64 px with
``INTER_AREA`` (anti-aliased box filter) costs 0.14 ms. JPEGs much larger than the target are
decoded at 1/2, 1/4 or 1/8 scale by libjpeg (``IMREAD_REDUCED_*``), which is both faster and
still anti-aliased (DCT-domain downscaling).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

MAX_PIXELS = 100_000_000  # refuse larger images (decompression bombs) before decoding


class DecodeError(Exception):
    """An input that cannot become pixels; ``reason`` is the drop reason recorded for it."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def sniff(data: bytes) -> str | None:
    """The image format from its leading bytes: 'jpeg', 'png', 'webp', 'bmp', 'tiff' or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def check_complete(data: bytes, fmt: str) -> None:
    """Raise ``DecodeError('corrupt')`` for a truncated file (decoders silently pad those)."""
    if fmt == "jpeg":
        # 0xFFD9 (end of image) cannot occur inside entropy-coded data (0xFF is stuffed), so
        # its absence near the end means the file was cut.
        if data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
            raise DecodeError("corrupt", "truncated JPEG (no end-of-image marker)")
    elif fmt == "png":
        if b"IEND" not in data[-32:]:
            raise DecodeError("corrupt", "truncated PNG (no IEND chunk)")
    elif fmt == "webp":
        riff_size = int.from_bytes(data[4:8], "little")
        if len(data) < riff_size + 8:
            raise DecodeError("corrupt", "truncated WebP")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None when the header cannot be read."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, without decoding
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception:
        return None


def decode(data: bytes, min_side: int = 0, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (H x W x 3), EXIF orientation applied.

    ``min_side``: the smallest short side the caller needs; JPEGs are decoded at a reduced
    scale that still keeps it. Raises ``DecodeError`` with reason ``corrupt`` (empty,
    truncated, not an image, undecodable) or ``too_large`` (over ``max_pixels``).
    """
    import cv2

    if not data:
        raise DecodeError("corrupt", "empty")
    fmt = sniff(data)
    if fmt is None:
        raise DecodeError("corrupt", "not a JPEG, PNG, WebP, BMP or TIFF image")
    check_complete(data, fmt)
    size = image_size(data)
    if size is None:
        raise DecodeError("corrupt", f"unreadable {fmt} header")
    w, h = size
    if w * h > max_pixels:
        raise DecodeError("too_large", f"{w}x{h} exceeds {max_pixels} pixels")
    flags = cv2.IMREAD_COLOR
    if fmt == "jpeg" and min_side:
        factor = 1
        while factor < 8 and min(w, h) // (factor * 2) >= min_side:
            factor *= 2
        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise DecodeError("corrupt", f"{fmt} decoder failed")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def center_crop(img: np.ndarray) -> np.ndarray:
    """The largest centred square."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y:y + s, x:x + s]


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to ``size`` px: area averaging down (anti-aliased), cubic up."""
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


THUMB = 32  # the dedup autoencoder's input: 32 x 32 centre crops (paper, section 4.1.1)


def prepare(data: bytes, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoded bytes to (centre crop at ``resolution``, 32 x 32 centre-crop thumbnail)."""
    crop = center_crop(decode(data, min_side=max(resolution, THUMB)))
    image = resize(crop, resolution)
    # From the image when it is at least as large (cheaper, and the same box filter).
    thumb = resize(image if resolution >= THUMB else crop, THUMB)
    return image, thumb
