"""What the quality measures add to extraction: ``measure`` beside ``decode.prepare``.

Both run on the same LSUN-style WebP records (256 px short side, q75, random views of the
package photos), interleaved, in one process and one thread; CPU time per record (the thread's
own clock: on a shared machine wall time mostly measures the neighbours), best of a few rounds.
Prints the ratio. Run:
    python benchmarks/quality_cost.py [--records 200] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.samples import encode, package_photos, random_view  # noqa: E402
from pipeline.decode import MAX_PIXELS, THUMB, _decode_bgr, center_crop, prepare  # noqa: E402
from pipeline.quality import WORK_SIDE, measure  # noqa: E402


def per_record(fn, items, rounds: int) -> float:
    """Best CPU microseconds per item over ``rounds`` passes."""
    best = float("inf")
    for _ in range(rounds):
        t = time.thread_time_ns()
        for x in items:
            fn(x)
        best = min(best, (time.thread_time_ns() - t) / len(items) / 1e3)
    return best


def main() -> None:
    import cv2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    photos = [p for _, p in package_photos()]
    records = [encode(random_view(photos[i % len(photos)], rng), "webp", 75)
               for i in range(args.records)]
    decoded = [_decode_bgr(r, max(args.resolution, THUMB), MAX_PIXELS) for r in records]
    crops = [np.ascontiguousarray(center_crop(d)) for d in decoded]
    res = args.resolution
    rows = {}
    for _ in range(2):  # interleaved: both see the same machine state
        rows["extract"] = min(rows.get("extract", 1e9),
                              per_record(lambda r: prepare(r, res), records, args.rounds))
        rows["measure(source)"] = min(rows.get("measure(source)", 1e9), per_record(
            lambda d: measure(d, bgr=True), decoded, args.rounds))
        rows["measure(crop)"] = min(rows.get("measure(crop)", 1e9), per_record(
            lambda d: measure(d, bgr=True), crops, args.rounds))
    base = rows["extract"]
    print(f"{args.records} WebP records, 256 px short side; CPU us per record, best of "
          f"{args.rounds} (working scale {WORK_SIDE} px)")
    for k, v in rows.items():
        print(f"  {k:18s} {v:8.0f} us  {v / base:6.1%} of extract")


if __name__ == "__main__":
    main()
