"""Bytes to pixels: format sniffing, integrity checks, fast decoding, crops and resizing.

Measured on this 2-core machine (256 px short side, one core): OpenCV's ``imdecode`` decodes
WebP q75 in 1.4 ms, about 1.5x faster than Pillow; the 64 px anti-aliased crop and 32 px
thumbnail add about 13% to that (``benchmarks/extract_lsun.py``). Image sizes come from the
headers (4 us, where Pillow took 320 us for a WebP). JPEGs much larger than the target are
decoded at 1/2, 1/4 or 1/8 scale by libjpeg (``IMREAD_REDUCED_*``), which is both faster and
still anti-aliased (DCT-domain downscaling).

Decoding is strict: data that is damaged or missing makes the record ``corrupt`` instead of
grey or garbled pixels (JPEGs through simplejpeg's strict mode, WebP through a zero-run
check; PNG has chunk checksums). Its cost and catch rates: ``benchmarks/decode_strict.py``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

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
    """(width, height) from the header alone, or None when the header cannot be read.

    JPEG, PNG and WebP headers are parsed directly: 50x cheaper than ``PIL.Image.open``,
    which cost 7% of the per-record time when this ran for every LSUN record.
    """
    fmt = sniff(data)
    parse = _HEADER_PARSERS.get(fmt)
    try:
        size = parse(data) if parse else _pil_size(data)
    except (IndexError, ValueError):
        size = None
    return size if size and size[0] > 0 and size[1] > 0 else None


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(marker, offset) of each marker segment before the first scan."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker == 0xDA:  # start of scan: the headers are over
            return
        else:
            yield marker, i
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """From the first start-of-frame (SOFn) segment."""
    for marker, i in _jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
    return None


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8; 1 when absent or unreadable) of a JPEG.

    Read here (an IFD0 entry, ~3 us) because Pillow's EXIF parser costs ~300 us, a third of
    decoding a 256 px JPEG; OpenCV applies orientation only inside its own decoder.
    """
    for marker, i in _jpeg_segments(data):
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\0\0":
            tiff = data[i + 10:i + 2 + int.from_bytes(data[i + 2:i + 4], "big")]
            order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
            if order is None:
                return 1
            ifd = int.from_bytes(tiff[4:8], order)
            count = int.from_bytes(tiff[ifd:ifd + 2], order)
            for e in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
                if int.from_bytes(tiff[e:e + 2], order) == 0x0112:  # Orientation, a SHORT
                    value = int.from_bytes(tiff[e + 8:e + 10], order)
                    return value if 1 <= value <= 8 else 1
            return 1
    return 1


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """From the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF)
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _pil_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, without decoding
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception:
        return None


_HEADER_PARSERS = {"jpeg": _jpeg_size, "png": _png_size, "webp": _webp_size}


def decode(data: bytes, min_side: int = 0, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (H x W x 3), EXIF orientation applied.

    ``min_side``: the smallest short side the caller needs; JPEGs are decoded at a reduced
    scale that still keeps it. Raises ``DecodeError`` with reason ``corrupt`` (empty,
    truncated, not an image, undecodable) or ``too_large`` (over ``max_pixels``).
    """
    import cv2

    return cv2.cvtColor(_decode_bgr(data, min_side, max_pixels), cv2.COLOR_BGR2RGB)


def _decode_bgr(data: bytes, min_side: int, max_pixels: int) -> np.ndarray:
    """``decode`` in OpenCV's BGR order (callers convert after shrinking: less to swap)."""
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
    factor = 1
    if fmt == "jpeg":
        while min_side and factor < 8 and min(w, h) // (factor * 2) >= min_side:
            factor *= 2
        img = _decode_jpeg(data, w, h, factor)
        if img is not None:
            return img
    if fmt == "webp":
        check_webp_data(data, w, h)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
             4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:  # e.g. a header whose size OpenCV refuses
        raise DecodeError("corrupt", f"{fmt} decoder failed ({str(e).strip()[-80:]})") from e
    if img is None or img.size == 0:
        raise DecodeError("corrupt", f"{fmt} decoder failed")
    return img


# simplejpeg's strict errors that leave the pixels whole (libjpeg warnings about metadata):
# decoded again without the strict check. Every other error means damaged or missing data.
_HARMLESS = ("Unknown Adobe color transform", "Warning: unknown JFIF revision",
             "Corrupt JPEG data: bad ICC marker", "Invalid SOS parameters for sequential",
             "Inconsistent progression sequence")
# What TurboJPEG's API cannot decode but OpenCV's libjpeg can (unusual chroma sampling).
_UNSUPPORTED = ("tjDecompressHeader3(): Could not determine subsampling", "Unsupported",
                "Sorry")


def _decode_jpeg(data: bytes, w: int, h: int, factor: int) -> np.ndarray | None:
    """BGR pixels of a JPEG at 1/``factor`` scale, EXIF orientation applied, or None for
    the rare JPEG that only OpenCV can decode (it then decodes it, without the check).

    Strict: libjpeg warns, then fills in grey, where data is missing or damaged (a cut
    file with an end marker appended, a zeroed span); OpenCV's decoder only prints those
    warnings, simplejpeg's strict mode raises them, and they make the record ``corrupt``.
    Both wrap libjpeg-turbo with the same settings, so the pixels are OpenCV's.
    """
    import simplejpeg

    scale = {"min_height": -(-h // factor), "min_width": -(-w // factor),
             "min_factor": factor} if factor > 1 else {}
    try:
        img = simplejpeg.decode_jpeg(data, "BGR", strict=True, **scale)
    except ValueError as e:
        message = str(e).strip()
        if message.startswith(_UNSUPPORTED):
            return None
        if not message.startswith(_HARMLESS):
            raise DecodeError("corrupt", f"damaged JPEG data ({message[:80]})") from e
        try:
            img = simplejpeg.decode_jpeg(data, "BGR", strict=False, **scale)
        except ValueError as e2:
            raise DecodeError("corrupt", f"damaged JPEG data ({str(e2)[:80]})") from e2
    return _orient(img, jpeg_orientation(data))


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation as OpenCV's decoder does (its ``ExifTransform``)."""
    import cv2

    if orientation >= 5:  # the four that swap width and height
        img = cv2.transpose(img)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return img if flip is None else cv2.flip(img, flip)


def check_webp_data(data: bytes, w: int, h: int) -> None:
    """Raise ``DecodeError('corrupt')`` for a run of zero bytes too long for the image.

    WebP has no checksum and libwebp decodes a zeroed span (a zeroed database page, an
    unwritten part of a download) without a word. Compressed data has short zero runs:
    the longest measured was 0.025 bytes per 16 x 16 macroblock (flat colours, lossy, any
    size; photos and lossless far less), so a run 10x that plus 64 bytes means damage.
    A 4 KB zeroed page is caught in images up to ~2000 x 2000 px.
    """
    macroblocks = -(-w // 16) * -(-h // 16)
    limit = 64 + macroblocks // 4
    i, n = 12, len(data)
    while i + 8 <= n:
        size = int.from_bytes(data[i + 4:i + 8], "little")
        if data[i:i + 4] in (b"VP8 ", b"VP8L") and \
                data.find(bytes(limit), i + 8, i + 8 + size) >= 0:
            raise DecodeError("corrupt", f"damaged WebP data (a run of {limit:,} or more "
                              "zero bytes: a zeroed or unwritten part)")
        i += 8 + size + (size & 1)


def center_crop(img: np.ndarray) -> np.ndarray:
    """The largest centred square."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y:y + s, x:x + s]


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to ``size`` px: area averaging down (anti-aliased), cubic up.

    Large reductions go by halves first: OpenCV's 2x area reduction is vectorised, its
    general one is not, so 256 -> 128 -> 64 takes 0.15 ms against 0.33 ms in one step, for
    the same 4x4 box average within one level of rounding.
    """
    import cv2

    img = _halvings(img, size)
    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def _halvings(img: np.ndarray, size: int) -> np.ndarray:
    """Exact 2x area reductions while the image stays at least twice ``size`` (even sides)."""
    import cv2

    while img.shape[0] >= 2 * size and img.shape[0] % 2 == 0 and img.shape[1] % 2 == 0:
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2),
                         interpolation=cv2.INTER_AREA)
    return img


THUMB = 32  # the dedup autoencoder's input: 32 x 32 centre crops (paper, section 4.1.1)


def prepare(data: bytes, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoded bytes to (centre crop at ``resolution``, 32 x 32 centre-crop thumbnail)."""
    return _finish(center_crop(_decode_bgr(data, max(resolution, THUMB), MAX_PIXELS)),
                   resolution)


def prepare_measured(data: bytes, resolution: int, work_side: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """``prepare``, plus what the quality measures need from the same decode: the centre
    crop halved towards ``work_side`` (BGR; short side below 2 x ``work_side``, or the crop
    itself when smaller) and the source's (width, height) from its header.

    The training image continues from those halvings (the same pixels as ``prepare``'s:
    ``resize`` takes the same first steps), so the measures' copy costs nothing extra.
    """
    crop = center_crop(_decode_bgr(data, max(resolution, THUMB, work_side), MAX_PIXELS))
    level = _halvings(crop, work_side)
    image, thumb = _finish(level if work_side >= resolution else crop, resolution)
    return image, thumb, level, image_size(data)


def _finish(crop: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """A BGR centre crop to the RGB training image and thumbnail."""
    import cv2

    image = resize(crop, resolution)
    # From the image when it is at least as large (cheaper, and the same box filter).
    thumb = resize(image if resolution >= THUMB else crop, THUMB)
    # BGR to RGB after shrinking (a channel swap commutes with per-channel resizing).
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), cv2.cvtColor(thumb, cv2.COLOR_BGR2RGB)
