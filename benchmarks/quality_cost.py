"""What the quality measures add to extraction, measured beside plain extraction in one run.

Plain extraction's per-record work is ``decode.prepare`` (decode, centre crop, the training
image and the thumbnail); with measures it is ``decode.prepare_measured`` (the same, the
centre crop kept at the working scale, the header's size) plus ``quality.measure_batch``
over each chunk of records (extraction's own chunks: 64). Both run on the same records,
interleaved, in one process and one thread; CPU time per record (the thread's own clock: on a
shared machine wall time mostly measures the neighbours), best of a few rounds. Two sources:
LSUN-style WebP records (256 px short side, q75: the issue's target) and JPEG photos of
400-1200 px (a photo folder; those are decoded at 1/2-1/8 scale, and the measures need a
larger copy than the 64 px training image alone). Prints each ratio. Run:
    python benchmarks/quality_cost.py [--records 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.samples import encode, package_photos, random_view  # noqa: E402
from pipeline.decode import prepare, prepare_measured  # noqa: E402
from pipeline.quality import WORK_SIDE, measure_batch  # noqa: E402

CHUNK = 64  # ExtractConfig.chunk


def cpu_us(fn: Callable[[], object], n: int, rounds: int) -> float:
    """Best CPU microseconds per record over ``rounds`` calls of ``fn`` (``n`` records)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.thread_time_ns()
        fn()
        best = min(best, (time.thread_time_ns() - t) / n / 1e3)
    return best


def plain(records: list[bytes], res: int) -> None:
    for r in records:
        prepare(r, res)


def with_measures(records: list[bytes], res: int) -> None:
    for s in range(0, len(records), CHUNK):
        out = [prepare_measured(r, res, WORK_SIDE) for r in records[s:s + CHUNK]]
        measure_batch([o[2] for o in out], [o[3] for o in out], bgr=True)


def records_of(kind: str, n: int, rng: np.random.Generator) -> list[bytes]:
    import cv2

    photos = [p for _, p in package_photos()]
    out = []
    for i in range(n):
        view = random_view(photos[i % len(photos)], rng)  # 256 px short side
        if kind == "jpeg":
            side = int(rng.integers(400, 1201))
            s = side / min(view.shape[:2])
            view = cv2.resize(view, (round(view.shape[1] * s), round(view.shape[0] * s)),
                              interpolation=cv2.INTER_CUBIC)
            out.append(encode(view, "jpeg", 90))
        else:
            out.append(encode(view, "webp", 75))
    return out


def main() -> None:
    import cv2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as extraction's workers
    rng = np.random.default_rng(0)
    res, n = args.resolution, args.records
    print(f"{n} records per source; CPU us per record, best of {args.rounds} rounds, "
          f"interleaved (working scale {WORK_SIDE} px, chunks of {CHUNK})")
    for kind, label in (("webp", "LSUN-style WebP, 256 px"), ("jpeg", "JPEG photos, 400-1200 px")):
        records = records_of(kind, n, rng)
        runs = {plain: float("inf"), with_measures: float("inf")}
        for _ in range(2):  # interleaved: both see the same machine state
            for fn in runs:
                runs[fn] = min(runs[fn], cpu_us(lambda f=fn, r=records: f(r, res), n,
                                                args.rounds))
        base, total = runs[plain], runs[with_measures]
        print(f"{label}: extract {base:.0f} us, with measures {total:.0f} us: the measures "
              f"cost {total - base:.0f} us = {(total - base) / base:.1%} of extraction")


if __name__ == "__main__":
    main()
