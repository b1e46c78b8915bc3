"""What the quality measures add to extraction, measured beside plain extraction in one run.

Plain extraction's per-record work is ``decode.prepare`` (decode, centre crop, the training
image and the thumbnail); with measures it is ``decode.prepare_measured`` (the same, the
centre crop kept at the working scale, the header's size) plus ``quality.measure_batch``
over each chunk of records (extraction's own chunks: 64). Two sources: LSUN-style WebP
records (256 px short side, q75: the issue's target) and JPEG photos of 400-1200 px (a photo
folder; those are decoded at 1/2-1/8 scale, and the measures need a larger copy than the
64 px training image alone). Then the whole stage, as users run it: ``extract`` of a real
LSUN-style LMDB into a dataset directory, in this process (one worker), against the same
stage with the measures taken out (its per-record function given ``prepare``, and no table).

On a shared machine one timing swings by tens of percent with the neighbours' load, so the two
are run in alternation, chunk by chunk (stage by stage), each pair in the same moment, and the
ratio is the median of the paired differences over the median plain time (thread CPU time;
process CPU time for the stage); the quartiles of the paired ratios show the spread. Run:
    python benchmarks/quality_cost.py [--records 256] [--rounds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.samples import encode, make_lsun, package_photos, random_view  # noqa: E402
from pipeline.decode import prepare, prepare_measured  # noqa: E402
from pipeline.quality import WORK_SIDE, measure_batch  # noqa: E402

CHUNK = 64  # ExtractConfig.chunk


def paired(first: Callable[[], object], second: Callable[[], object], clock: Callable[[], float],
           rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """``rounds`` timings of each, alternating which goes first (each pair measured in the
    same moment of the machine's load)."""
    a, b = [], []
    for r in range(rounds):
        for fn, out in ((first, a), (second, b))[:: 1 if r % 2 == 0 else -1]:
            t = clock()
            fn()
            out.append(clock() - t)
    return np.array(a), np.array(b)


def report(label: str, base: np.ndarray, total: np.ndarray, unit: float, what: str) -> None:
    ratios = (total - base) / base
    q1, med, q3 = np.quantile(ratios, [0.25, 0.5, 0.75])
    print(f"{label}: extract {np.median(base) * unit:.0f} us, with measures "
          f"{np.median(total) * unit:.0f} us per record (medians): the measures cost "
          f"{np.median(total - base) / np.median(base):.1%} of {what} (paired ratios: "
          f"quartiles {q1:.1%} / {med:.1%} / {q3:.1%})")


def plain(records: list[bytes], res: int) -> None:
    for r in records:
        prepare(r, res)


def with_measures(records: list[bytes], res: int) -> None:
    for s in range(0, len(records), CHUNK):
        out = [prepare_measured(r, res, WORK_SIDE) for r in records[s:s + CHUNK]]
        measure_batch([o[2] for o in out], [o[3] for o in out], bgr=True)


def stage_run(db: Path, out: Path, measures: bool) -> Callable[[], object]:
    """``extract`` of ``db`` into ``out`` (made afresh), with or without the measures."""
    import shutil
    from unittest import mock

    import pipeline.extract as ex
    from pipeline.lsun import LsunSource

    def plain_prepare(data: bytes, res: int, work_side: int) -> tuple:
        return (*prepare(data, res), None, None)

    def no_measures(works: list, sizes: list, bgr: bool) -> np.ndarray:
        return np.zeros((len(works), len(ex.MEASURES)), np.float32)

    def run() -> None:
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.ExitStack() as stack:
            if not measures:
                stack.enter_context(mock.patch.object(ex, "prepare_measured", plain_prepare))
                stack.enter_context(mock.patch.object(ex, "measure_batch", no_measures))
            ex.extract(LsunSource([db]), out, ex.ExtractConfig(workers=1), progress=False)

    return run


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
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as extraction's workers
    rng = np.random.default_rng(0)
    res, n = args.resolution, args.records
    clock = time.thread_time
    print(f"{n} records per source, {args.rounds} rounds of chunks of {CHUNK} (working scale "
          f"{WORK_SIDE} px); CPU time per record")
    for kind, label in (("webp", "LSUN-style WebP, 256 px"), ("jpeg", "JPEG photos, 400-1200 px")):
        records = records_of(kind, n, rng)
        chunks = [records[s:s + CHUNK] for s in range(0, n, CHUNK)]
        base, total = [], []
        for chunk in chunks:
            a, b = paired(lambda c=chunk: plain(c, res), lambda c=chunk: with_measures(c, res),
                          clock, args.rounds)
            base.append(a / len(chunk))
            total.append(b / len(chunk))
        report(label, np.concatenate(base), np.concatenate(total), 1e6, "extraction")
    with tempfile.TemporaryDirectory() as tmp:
        db = make_lsun(Path(tmp) / "bench_lmdb", n, seed=1)
        a, b = paired(stage_run(db, Path(tmp) / "out", False),
                      stage_run(db, Path(tmp) / "out", True), time.process_time, args.rounds)
        report(f"extract stage, LMDB of {n} WebP records, 1 worker", a / n, b / n, 1e6,
               "the stage")


if __name__ == "__main__":
    main()
