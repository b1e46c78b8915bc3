"""LSUN extraction throughput: ours vs the raw decode floor vs torchvision's LSUN loader.

Builds (once, cached under ``--work``) an LSUN-format LMDB of real photos (random views of
the photos that ship with scikit-image/-learn, short side 256, WebP q75, as LSUN's), then, for
each worker count, times on the same database:

- ours: ``pipeline.extract.extract`` end to end (decode, centre crop, 64 px + 32 px thumbnail,
  written to a dataset directory), with ``--workers`` decoding threads;
- floor: bytes to pixels only (``cv2.imdecode``) in the same number of threads, reading the
  same LMDB, nothing returned, nothing written;
- baseline: ``torchvision.datasets.LSUN`` with the pytorch/examples DCGAN transforms
  (``Resize(64)``, ``CenterCrop(64)``, ``ToTensor()``) through a ``DataLoader`` (batch 128,
  ``num_workers`` = the worker count).

Each measurement runs in a fresh process, ``--repeats`` times, interleaved, and the best time
is kept (the machine may be shared). ``floor/baseline`` is the most any extractor decoding with
the same library can gain over the baseline. ``--code DIR`` measures another checkout as
"ours" (before/after comparisons).

Usage: ``python benchmarks/extract_lsun.py [--n 5000] [--workers 1 2] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --code DIR measures another checkout's pipeline as "ours" (before/after comparisons).
_CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else None
sys.path.insert(0, _CODE or str(Path(__file__).resolve().parents[1]))

RESOLUTION = 64


def build_db(work: Path, n: int) -> Path:
    """The benchmark database, built once per (n, seed) and reused."""
    from demo.samples import make_lsun

    root = work / f"lsun-{n}"
    db = root / "bedroom_train_lmdb"
    done = root / "BUILT"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        print(f"building {n} WebP records in {db} ...", flush=True)
        make_lsun(db, n, seed=0, short_side=256, quality=75)
        done.write_text("ok\n")
        print(f"  built in {time.perf_counter() - t:.0f} s", flush=True)
    return db


# -- the decode floor --------------------------------------------------------------------------
_ENV = {}


def _floor_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _floor_task(task: tuple[str, bytes, int]) -> int:
    """Decode ``count`` records from ``first_key`` on, with a cursor; returns pixels seen."""
    import cv2
    import lmdb
    import numpy as np

    db, first_key, count = task
    if db not in _ENV:  # the same read-only settings as ours, opened once per process
        _ENV[db] = lmdb.open(db, readonly=True, lock=False, readahead=False, meminit=False)
    env = _ENV[db]
    pixels = 0
    with env.begin(buffers=True) as txn:
        cur = txn.cursor()
        cur.set_key(first_key)
        for _ in range(count):
            img = cv2.imdecode(np.frombuffer(cur.value(), np.uint8), cv2.IMREAD_COLOR)
            pixels += img.shape[0]
            cur.next()
    return pixels


def time_floor(db: Path, keys: list[bytes], workers: int, chunk: int = 64) -> float:
    """Decode-only time with ``workers`` threads, as ours decodes (OpenCV releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    tasks = [(str(db), keys[i], min(chunk, len(keys) - i)) for i in range(0, len(keys), chunk)]
    t = time.perf_counter()
    _floor_init()
    _floor_task(tasks[0][:2] + (0,))  # opens the environment (once, not per thread)
    if workers <= 1:
        for task in tasks:
            _floor_task(task)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(_floor_task, tasks):
                pass
    return time.perf_counter() - t


# -- ours --------------------------------------------------------------------------------------
def time_ours(db: Path, out: Path, workers: int) -> float:
    from pipeline.extract import ExtractConfig, extract
    from pipeline.lsun import LsunSource

    source = LsunSource([db])  # key list from the cache (built before timing)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    stats = extract(source, out, ExtractConfig(resolution=RESOLUTION, workers=workers),
                    progress=False)
    elapsed = time.perf_counter() - t
    assert stats.kept == len(source), stats
    return elapsed


# -- the baseline ------------------------------------------------------------------------------
def time_torchvision(db: Path, workers: int) -> float:
    import torch
    from torchvision import datasets, transforms

    # LSUN pickles its key list to _cache_<root letters> in the working directory.
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            ds = datasets.LSUN(str(db.parent), classes=[db.name[: -len("_lmdb")]],
                               transform=transforms.Compose([
                                   transforms.Resize(RESOLUTION),
                                   transforms.CenterCrop(RESOLUTION),
                                   transforms.ToTensor()]))
            loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=False,
                                                 num_workers=workers)
            t = time.perf_counter()
            seen = 0
            for x, _ in loader:
                seen += len(x)
            elapsed = time.perf_counter() - t
        finally:
            os.chdir(cwd)
    assert seen == len(ds)
    return elapsed


def measure(name: str, db: Path, work: Path, workers: int) -> float:
    """Seconds for one measurement (run in a fresh process: LMDB allows one environment per
    path and process, and no run inherits another's warm state)."""
    import torch

    torch.set_num_threads(1)
    if name == "ours":
        return time_ours(db, work / "out", workers)
    if name == "floor":
        from pipeline.lsun import LsunSource

        source = LsunSource([db])
        return time_floor(db, [source.key_bytes(i) for i in range(len(source))], workers)
    return time_torchvision(db, workers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="records in the database")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    ap.add_argument("--work", type=Path,
                    default=Path(tempfile.gettempdir()) / "dcgan-curate-bench",
                    help="where the database (cached) and outputs go")
    ap.add_argument("--only", choices=["ours", "floor", "torchvision"], nargs="+",
                    default=["ours", "floor", "torchvision"])
    ap.add_argument("--code", type=Path, help="measure this checkout's pipeline as 'ours' "
                    "(default: the one holding this script)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    ap.add_argument("--measure", nargs=2, metavar=("NAME", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DCGAN_CURATE_CACHE", str(args.work / "cache"))
    db = build_db(args.work, args.n)
    if args.measure:
        print(measure(args.measure[0], db, args.work, int(args.measure[1])))
        return

    from pipeline.lsun import LsunSource

    n = len(LsunSource([db]))  # builds the key cache before any timing

    def run(name: str, workers: int) -> float | None:
        code = ["--code", str(args.code.resolve())] if args.code else []
        cmd = [sys.executable, __file__, "--n", str(args.n), "--work", str(args.work), *code,
               "--measure", name, str(workers)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"  {name} with {workers} workers: no result in {args.timeout} s", flush=True)
            return None
        if out.returncode:
            print(f"  {name} with {workers} workers failed:\n{out.stderr[-1500:]}", flush=True)
            return None
        return float(out.stdout.strip().splitlines()[-1])

    print(f"{n} records (WebP q75, short side 256) -> {RESOLUTION} px; "
          f"{os.cpu_count()} CPUs; best of {args.repeats}", flush=True)
    results: dict[tuple[str, int], float] = {}  # best seconds
    for w in args.workers:
        for r in range(args.repeats):
            for name in args.only:
                s = run(name, w)
                if s is None:
                    continue
                print(f"  workers={w} run {r + 1} {name:12s} {n / s:8.0f} img/s", flush=True)
                key = (name, w)
                results[key] = min(results.get(key, float("inf")), s)

    print()
    print("| workers | ours img/s | decode floor img/s | torchvision img/s | ours/baseline "
          "| ours/floor | floor/baseline |")
    print("|---|---|---|---|---|---|---|")
    for w in args.workers:
        rate = {name: n / results[(name, w)] for name in args.only if (name, w) in results}
        ours, floor, tv = (rate.get(k) for k in ("ours", "floor", "torchvision"))

        def fmt(x):
            return f"{x:.0f}" if x else "-"

        def ratio(a, b):
            return f"{a / b:.2f}x" if a and b else "-"

        # floor/baseline bounds ours/baseline for any extractor built on the same decoder.
        print(f"| {w} | {fmt(ours)} | {fmt(floor)} | {fmt(tv)} | {ratio(ours, tv)} "
              f"| {ratio(ours, floor)} | {ratio(floor, tv)} |")
    if len(args.workers) > 1 and ("ours", min(args.workers)) in results:
        lo = min(args.workers)
        for hi in sorted(args.workers)[1:]:
            if ("ours", hi) in results:
                print(f"scaling, ours: {results[('ours', lo)] / results[('ours', hi)]:.2f}x "
                      f"from {lo} to {hi} workers")


if __name__ == "__main__":
    main()
