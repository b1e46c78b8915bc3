"""The search step alone on 1M synthetic 128-bit codes: bucketing, confirmation, grouping.

Codes have unequal, correlated bit rates like a trained code layer; 5% of the items are
planted near-duplicates of others (0 to 7 bits flipped, the same thumbnail). Thumbnails come
from a pool of real 32x32 crops of the package photos, so the pixel check runs on real
pixels. The baseline, measured in the same run, is faiss's ``IndexBinaryMultiHash`` over the
same four 32-bit quarters. Run:
    python benchmarks/dedup_scale.py [--n 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.dedup.hashing import (  # noqa: E402
    choose_key_groups,
    key_tables,
    keys_from_bits,
    pack_codes,
)
from pipeline.dedup.search import SearchConfig, find_duplicates  # noqa: E402


class PooledThumbs:
    """Item i's thumbnail is ``pool[source[i] % len(pool)]`` (near-duplicates share one)."""

    def __init__(self, pool: np.ndarray, source: np.ndarray):
        self.pool, self.source = pool, source

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.pool[self.source[idx] % len(self.pool)]


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bits, source, planted) for ``n`` items; ``planted`` are the near-duplicate ids."""
    rng = np.random.default_rng(seed)
    # Correlated bits with rates between 0.1 and 0.9: thresholded mixtures of 16 factors.
    mix = rng.normal(size=(16, 128)).astype(np.float32)
    bias = rng.normal(0, 1.0, 128).astype(np.float32)
    bits = np.empty((n, 128), bool)
    for s in range(0, n, 100_000):
        z = rng.normal(size=(min(100_000, n - s), 16)).astype(np.float32)
        bits[s:s + len(z)] = (z @ mix / 4 + bias + rng.normal(size=(len(z), 128))) > 0
    source = np.arange(n)
    planted = rng.choice(n, n // 20, replace=False)
    originals = rng.integers(0, n, len(planted))
    keep = ~np.isin(originals, planted)
    planted, originals = planted[keep], originals[keep]
    bits[planted] = bits[originals]
    for k, i in enumerate(planted):
        flips = rng.choice(128, k % 8, replace=False)
        bits[i, flips] ^= True
    source[planted] = originals
    return bits, source, planted, originals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-faiss", action="store_true")
    args = ap.parse_args()

    from demo.samples import package_photos, random_view
    from pipeline.decode import resize

    rng = np.random.default_rng(1)
    photos = [p for _, p in package_photos()]
    pool = np.stack([resize(random_view(photos[i % len(photos)], rng, 64), 32)[:32, :32]
                     for i in range(4096)])
    t0 = time.perf_counter()
    bits, source, planted, originals = synthetic(args.n)
    codes = pack_codes(bits)
    keys = keys_from_bits(bits, key_tables(choose_key_groups(bits[:20000])))  # as training does
    print(f"{args.n} codes ({len(planted)} planted near-duplicates), made in "
          f"{time.perf_counter() - t0:.1f} s; bit rates "
          f"{bits.mean(0).min():.2f}..{bits.mean(0).max():.2f}")
    del bits

    t0, c0 = time.perf_counter(), time.process_time()
    res = find_duplicates(codes, keys, PooledThumbs(pool, source), SearchConfig())
    ours, cpu = time.perf_counter() - t0, time.process_time() - c0
    rep = np.where(res.duplicate_of >= 0, res.duplicate_of, np.arange(args.n))
    found = np.mean(rep[planted] == rep[originals])
    print(f"ours: {ours:.1f} s total, {cpu:.1f} s CPU ({res.seconds}); "
          f"{res.candidates} candidate pairs, "
          f"{res.confirmed} confirmed, {len(res.removed)} removed; planted pairs grouped: "
          f"{found:.3f}")

    if not args.skip_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        rows = []
        for nflip, radius in ((0, 3), (1, 7)):
            index = faiss.IndexBinaryMultiHash(128, 4, 32)
            index.nflip = nflip
            t0, c0 = time.perf_counter(), time.process_time()
            index.add(codes)
            t_add, c_add = time.perf_counter() - t0, time.process_time() - c0
            q = min(args.n, 100_000)
            t0, c0 = time.perf_counter(), time.process_time()
            index.range_search(codes[:q], radius + 1)  # faiss: distance < radius
            t_q = (time.perf_counter() - t0) * args.n / q
            c_q = (time.process_time() - c0) * args.n / q
            rows.append((nflip, radius, t_add + t_q, c_add + c_q))
        print(f"\n{'1M codes, 2 threads':<48}{'wall s':>8}{'CPU s':>8}{'CPU vs ours':>13}")
        print(f"{'ours: 8 keys +-1 bit, <= 12 bits, confirm, group':<48}{ours:>8.1f}{cpu:>8.1f}"
              f"{1.0:>13.2f}")
        for nflip, radius, wall, c in rows:
            name = f"faiss MultiHash nflip={nflip} (radius {radius}), search only"
            print(f"{name:<48}{wall:>8.1f}{c:>8.1f}{c / cpu:>13.2f}")
        print("faiss query time extrapolated from 100k queries; it does not confirm or group."
              "\nCPU s: process time over all threads (the shared machine's wall time "
              "varies with its load).")


if __name__ == "__main__":
    main()
