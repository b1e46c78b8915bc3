"""memorization's nearest-code query: faiss ``IndexBinaryFlat`` against a NumPy brute force.

Each generated sample's 128-bit code is compared with every training image's code (exact
Hamming k-NN). The baseline, run in the same process on the same codes, is the best NumPy
brute force we could write: codes viewed as two uint64 words, XOR, ``np.bitwise_count``,
``argpartition``, in chunks of queries. Both must return the same distances (checked here
on every size). Codes are random, plus a degenerate half where many codes are equal (ties).
Run:
    python benchmarks/memorization_knn.py [--sizes 1000x100000,1000x1000000] [--k 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcgan.memorization import nearest_codes  # noqa: E402


def numpy_knn(query: np.ndarray, base: np.ndarray, k: int, chunk_bytes: int = 1 << 28
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming k-NN of packed (N, 16) uint8 codes in NumPy: (distances, ids)."""
    q64 = np.ascontiguousarray(query).view(np.uint64)
    b64 = np.ascontiguousarray(base).view(np.uint64)
    step = max(1, chunk_bytes // (len(base) * 8))
    dist = np.empty((len(query), k), np.int32)
    ids = np.empty((len(query), k), np.int64)
    for s in range(0, len(query), step):
        d = np.zeros((min(step, len(query) - s), len(base)), np.uint8)
        for w in range(q64.shape[1]):
            d += np.bitwise_count(q64[s:s + step, w, None] ^ b64[None, :, w]).astype(np.uint8)
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < len(base) else \
            np.broadcast_to(np.arange(len(base)), d.shape)
        pd = np.take_along_axis(d, part, 1)
        order = np.argsort(pd, axis=1, kind="stable")
        dist[s:s + step] = np.take_along_axis(pd, order, 1)
        ids[s:s + step] = np.take_along_axis(part, order, 1)
    return dist, ids


def codes(n: int, rng: np.random.Generator, degenerate: bool) -> np.ndarray:
    """(n, 16) uint8 codes: random, or drawn from only ~n/100 distinct codes (many ties)."""
    if not degenerate:
        return rng.integers(0, 256, (n, 16), dtype=np.uint8)
    pool = rng.integers(0, 256, (max(1, n // 100), 16), dtype=np.uint8)
    return pool[rng.integers(0, len(pool), n)]


def timed(fn, *args, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000x100000,10000x100000,1000x1000000",
                    help="QUERIESxBASE pairs, comma-separated")
    ap.add_argument("--faiss-only", default="10000x1000000",
                    help="sizes timed with faiss alone (the NumPy baseline takes minutes)")
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads; 0: default")
    args = ap.parse_args()
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads; NumPy "
          f"{np.__version__} (one thread); {os.cpu_count()} CPUs; k={args.k}")
    rng = np.random.default_rng(0)
    nearest_codes(codes(10, rng, False), codes(100, rng, False), 1)  # import and warm up
    rows = [(s, True) for s in args.sizes.split(",") if s] + \
        [(s, False) for s in args.faiss_only.split(",") if s]
    for size, with_numpy in rows:
        nq, nb = (int(x) for x in size.split("x"))
        for degenerate in (False, True):
            q, b = codes(nq, rng, degenerate), codes(nb, rng, degenerate)
            t_faiss, (fd, _) = timed(nearest_codes, q, b, args.k, repeat=2)
            line = (f"{nq:>6} queries x {nb:>8} codes{' (ties)' if degenerate else '       '}: "
                    f"faiss {t_faiss:7.3f} s")
            if with_numpy:
                t_np, (nd, _) = timed(numpy_knn, q, b, args.k)
                same = np.array_equal(fd, nd)
                line += f", NumPy {t_np:7.3f} s, faiss {t_np / t_faiss:5.1f}x, same: {same}"
                if not same:
                    raise SystemExit(f"{line}\ndistances differ")
            print(line, flush=True)


if __name__ == "__main__":
    main()
