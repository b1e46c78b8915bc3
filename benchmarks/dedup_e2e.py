"""End to end: `dedup lsun` (extract + train + hash + search + write) vs plain extraction.

Both run on the same LSUN-format database of package-photo views (WebP, 256 px), in this
process, each into a fresh directory. Prints both speeds, their ratio, the dedup overhead by
step, and the ratio projected to LSUN bedroom's 3,033,042 images (training is a fixed cost:
at most ``train_limit`` thumbnails; the other steps scale linearly). Run:
    python benchmarks/dedup_e2e.py [--n 10000] [--workers 2] [--db DB] [--dup-rate 0.09]
The two commands are also timed whole (``python cli.py extract|dedup lsun``: interpreter
start and imports included), as a user runs them.

The default database (random views of ~10 photos) is far denser in near-duplicates than LSUN
(half of it or more is removed). ``--dup-rate R`` builds one closer to LSUN's ~9% instead:
distinct scenes are 2 x 2 mosaics of random tiles of the ~40 package and OpenCV photos, and a
fraction R of them get one planted near-duplicate each (the quality benchmark's edits).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LSUN_BEDROOM = 3_033_042


def make_sparse_lsun(path: Path, n: int, dup_rate: float, seed: int = 0) -> Path:
    """``n`` records: distinct mosaic scenes plus ``dup_rate`` of them near-duplicated."""
    import cv2
    import numpy as np

    from demo.neardup import KINDS, all_photos, near_duplicate
    from demo.samples import encode, lsun_key, write_lmdb

    rng = np.random.default_rng(seed)
    photos = [p for _, p in all_photos() if min(p.shape[:2]) >= 128]

    def tile() -> np.ndarray:  # a random square region, 64 px to the photo's short side
        p = photos[int(rng.integers(len(photos)))]
        h, w = p.shape[:2]
        side = int(rng.integers(64, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        t = cv2.resize(p[y:y + side, x:x + side], (128, 128), interpolation=cv2.INTER_AREA)
        return t[:, ::-1] if rng.random() < 0.5 else t

    def records():
        n_dup = int(round(n * dup_rate / (1 + dup_rate)))
        for i in range(n - n_dup):
            img = np.concatenate([np.concatenate([tile(), tile()], 1),
                                  np.concatenate([tile(), tile()], 1)], 0)
            data = encode(img, "webp", 75)
            yield lsun_key(rng), data
            if i < n_dup:
                kind = KINDS[i % len(KINDS)]
                yield lsun_key(rng), near_duplicate(img, data, kind, rng)

    return write_lmdb(path, records())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--db", type=Path, help="an existing LSUN-format database to use "
                    "instead of building one (--n is then its size)")
    ap.add_argument("--dup-rate", type=float, help="build distinct mosaic scenes with this "
                    "fraction near-duplicated (LSUN: ~0.09) instead of random photo views")
    args = ap.parse_args()

    import torch

    from demo.samples import make_lsun
    from pipeline.dedup.stage import DedupConfig, dedup_lsun
    from pipeline.extract import ExtractConfig, extract
    from pipeline.lsun import LsunSource

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="dedup-e2e-"))
    try:
        t0 = time.perf_counter()
        db = args.db or (make_sparse_lsun(tmp / "bench_lmdb", args.n, args.dup_rate)
                         if args.dup_rate is not None
                         else make_lsun(tmp / "bench_lmdb", args.n, seed=0))
        if not args.db:
            print(f"{args.n} records written in {time.perf_counter() - t0:.0f} s")
        source = LsunSource([db])
        args.n = len(source)
        extract(source, tmp / "warm", ExtractConfig(workers=args.workers, chunk=64),
                progress=False)  # warm the key cache and the page cache
        t0 = time.perf_counter()
        extract(source, tmp / "plain", ExtractConfig(workers=args.workers), progress=False)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = dedup_lsun(source, tmp / "dedup", DedupConfig(device="cpu"),
                           ExtractConfig(workers=args.workers), progress=False)
        t_dedup = time.perf_counter() - t0
        # What a user waits for: the whole commands, interpreter start and imports included.
        cli = []
        for cmd in ("extract", "dedup"):
            argv = [sys.executable, str(ROOT / "cli.py"), cmd, "lsun", str(db), "--out",
                    str(tmp / f"cli-{cmd}"), "--quiet", "-j", str(args.workers)]
            t0 = time.perf_counter()
            subprocess.run(argv + (["--device", "cpu"] if cmd == "dedup" else []), check=True)
            cli.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.n
    print(f"\n{'run':<34}{'seconds':>9}{'img/s':>9}{'speed vs extract':>18}")
    print(f"{'extract lsun':<34}{t_plain:>9.1f}{n / t_plain:>9.0f}{1.0:>18.2f}")
    print(f"{'dedup lsun (all steps)':<34}{t_dedup:>9.1f}{n / t_dedup:>9.0f}"
          f"{t_plain / t_dedup:>18.2f}")
    print(f"{'python cli.py extract lsun':<34}{cli[0]:>9.1f}{n / cli[0]:>9.0f}{1.0:>18.2f}")
    print(f"{'python cli.py dedup lsun':<34}{cli[1]:>9.1f}{n / cli[1]:>9.0f}"
          f"{cli[0] / cli[1]:>18.2f}")
    x = stats.extra
    train = x["train_seconds"]
    rest = t_dedup - x["extract_seconds"] - train
    print(f"\ndedup steps: extract {x['extract_seconds']:.1f} s, train {train:.1f} s "
          f"(fixed), hash {x['hash_seconds']:.1f} s, search {x['search_seconds']:.1f} "
          f"s, write+other {rest - x['hash_seconds'] - x['search_seconds']:.1f} s; "
          f"removed {x['removed']}")
    per_img_extract = t_plain / n
    per_img_rest = rest / n
    big = LSUN_BEDROOM
    proj = per_img_extract * big / (per_img_extract * big + train * 20000 / min(n, 20000)
                                    + per_img_rest * big)
    print(f"projected to {big} images (training on its 20000-image subset): dedup lsun at "
          f"{proj:.2f} x the speed of plain extraction")


if __name__ == "__main__":
    main()
