"""Strict decoding's cost: ``pipeline.decode`` against the OpenCV-only decode it replaced.

The same ~300 real photos (random views of the package photos, short side 256, as LSUN's,
plus the full-size photos) encoded as JPEG and WebP, decoded for the extraction stage's
needs (``min_side`` 64: JPEGs at a reduced scale). The baseline is the previous decode:
the same header checks, then ``cv2.imdecode`` with libjpeg's reduced-scale flags. Ours
decodes JPEGs with simplejpeg in strict mode (libjpeg warnings of damaged data raise) and
scans WebP data for zeroed spans. CPU time of this process, one thread, best of
``--repeats`` interleaved rounds (the machine may be shared).

``--damage`` instead counts how often a zeroed span (64 B, 512 B, a 4 KB page) at nine
places in each package photo's JPEG (seven flavours) and WebP (lossy, lossless) is caught.

Usage: ``python benchmarks/decode_strict.py [--n 300] [--repeats 5] [--damage]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIN_SIDE = 64


def baseline(data: bytes, min_side: int) -> np.ndarray:
    """The decode before strict mode: header checks, then OpenCV at a reduced scale."""
    import cv2

    from pipeline.decode import check_complete, image_size, sniff

    fmt = sniff(data)
    check_complete(data, fmt)
    w, h = image_size(data)
    flags = cv2.IMREAD_COLOR
    if fmt == "jpeg" and min_side:
        factor = 1
        while factor < 8 and min(w, h) // (factor * 2) >= min_side:
            factor *= 2
        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def sets(n: int) -> dict[str, list[bytes]]:
    from demo.samples import encode, package_photos, random_view

    photos = [p for _, p in package_photos()]
    rng = np.random.default_rng(0)
    views = [random_view(photos[i % len(photos)], rng, 256) for i in range(n)]
    return {
        "256px JPEG q75": [encode(v, "jpeg", 75) for v in views],
        "256px WebP q75": [encode(v, "webp", 75) for v in views],
        "photos JPEG q90": [encode(p, "jpeg", 90) for p in photos] * max(1, n // 40),
    }


def per_image(fn, datas: list[bytes]) -> float:
    t = time.process_time()
    for d in datas:
        fn(d, MIN_SIDE)
    return (time.process_time() - t) / len(datas) * 1e6


def damage_rates() -> None:
    """How often a zeroed span makes the record ``corrupt``, ours and the baseline (the
    rest decode to damaged pixels: libjpeg can fall back in step, and WebP spans under
    the zero-run limit pass)."""
    from collections import Counter

    import cv2

    from demo.samples import encode, package_photos, random_view
    from pipeline.decode import DecodeError, decode

    q, p = cv2.IMWRITE_JPEG_QUALITY, cv2.IMWRITE_JPEG_PROGRESSIVE
    variants = [[q, 30], [q, 75], [q, 95], [p, 1], [cv2.IMWRITE_JPEG_OPTIMIZE, 1],
                [cv2.IMWRITE_JPEG_RST_INTERVAL, 3],
                [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]]
    rng = np.random.default_rng(0)

    def caught(fn, data: bytes) -> bool:
        try:
            return fn(data) is None
        except DecodeError:
            return True

    counts: Counter = Counter()
    for _, photo in package_photos():
        files = [("jpeg", cv2.imencode(".jpg", photo[..., ::-1], v)[1].tobytes())
                 for v in variants]
        files += [("webp", encode(random_view(photo, rng), "webp", q)) for q in (75, 101)]
        for fmt, data in files:
            for span in (64, 512, 4096):
                if 2 * span > len(data):
                    continue
                for at in np.linspace(0.1, 0.9, 9):
                    bad = bytearray(data)
                    bad[int(len(data) * at):int(len(data) * at) + span] = bytes(span)
                    counts[fmt, span, "n"] += 1
                    counts[fmt, span, "ours"] += caught(decode, bytes(bad))
                    counts[fmt, span, "baseline"] += caught(lambda d: baseline(d, 0),
                                                            bytes(bad))
    for fmt in ("jpeg", "webp"):
        for span in (64, 512, 4096):
            n = counts[fmt, span, "n"]
            print(f"{fmt} zeroed {span:4d} B, {n} files: corrupt: ours "
                  f"{counts[fmt, span, 'ours'] / n:6.1%}, baseline "
                  f"{counts[fmt, span, 'baseline'] / n:6.1%}")


def main() -> None:
    import cv2

    from pipeline.decode import MAX_PIXELS, _decode_bgr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--damage", action="store_true", help="detection rates, not speed")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if args.damage:
        damage_rates()
        return

    def ours(d: bytes, min_side: int) -> np.ndarray:
        return _decode_bgr(d, min_side, MAX_PIXELS)

    for name, datas in sets(args.n).items():
        for d in datas[:20]:  # same pixels before timing anything
            assert np.array_equal(ours(d, MIN_SIDE), baseline(d, MIN_SIDE)), name
        best = {"baseline": 1e9, "ours": 1e9}
        for _ in range(args.repeats):
            for label, fn in (("baseline", baseline), ("ours", ours)):
                best[label] = min(best[label], per_image(fn, datas))
        print(f"{name:16s} {len(datas):4d} images: baseline {best['baseline']:7.0f} us, "
              f"ours {best['ours']:7.0f} us per image, ours/baseline "
              f"{best['ours'] / best['baseline']:.3f}", flush=True)


if __name__ == "__main__":
    main()
