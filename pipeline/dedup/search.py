"""Linear-time duplicate search over binary codes: buckets, confirmation, grouping.

1. Candidates. Items are bucketed by equal 32-bit key, and (multi-index hashing) by each of
   the four 32-bit quarters of the 128-bit code: by the pigeonhole principle two codes within
   Hamming distance 3 agree exactly on at least one quarter, so every pair within
   ``radius <= 3`` is found without comparing all pairs. Each table is a sort (linear in
   practice) followed by comparisons of neighbours in sort order within a ``window``: inside
   a bucket larger than the window (e.g. many blank frames) only nearby entries are paired,
   items being sorted by their full code within a bucket, so a degenerate bucket costs
   ``window x size`` instead of ``size^2``.
   faiss's ``IndexBinaryMultiHash`` does the same probing but scans whole buckets per query
   (quadratic on skewed codes) and took 10 s just to index 1M codes here; see
   ``benchmarks/dedup_scale.py`` for the measured comparison.
2. Confirmation, before anything is removed: the full-code distance must be at most
   ``max_distance`` and the thumbnails must agree (``pixel_similarity``: correlation of
   standardized 16 x 16 thumbnails, best over shifts of one 16-px pixel, i.e. ~6% of the
   image), so a hash collision alone never removes an image.
3. Grouping around representatives: in id order, an item not yet removed is kept and removes
   its confirmed neighbours that are not yet removed. A removed item never removes others, so
   dissimilar images cannot be chained together through transitive matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.dedup.hashing import hamming


@dataclass(frozen=True)
class SearchConfig:
    radius: int = 3  # full-code neighbours found by multi-index hashing (4 quarters: <= 3)
    max_distance: int = 40  # confirmed pairs differ in at most this many of the 128 code bits
    min_similarity: float = 0.90  # thumbnail correlation (best small shift) to confirm
    max_shift: int = 1  # shifts tried by the pixel check, in 16 x 16 pixels (1 = ~6%)
    window: int = 32  # pairs formed within this distance in a bucket's sort order
    chunk: int = 100_000  # candidate pairs confirmed per batch (bounds memory)


@dataclass
class DuplicateResult:
    """``duplicate_of[i]`` is the kept id that item ``i`` duplicates, or -1 if it is kept."""

    duplicate_of: np.ndarray  # (N,) int64
    distance: np.ndarray  # (N,) int32 full-code distance to the representative (-1: kept)
    similarity: np.ndarray  # (N,) float32 pixel similarity to the representative (nan: kept)
    candidates: int = 0  # candidate pairs examined
    confirmed: int = 0  # candidate pairs that passed confirmation
    seconds: dict = field(default_factory=dict)  # time per step

    @property
    def removed(self) -> np.ndarray:
        return np.flatnonzero(self.duplicate_of >= 0)

    def groups(self) -> dict[int, list[int]]:
        """Representative id -> ids of the items removed as its duplicates."""
        out: dict[int, list[int]] = {}
        for i in self.removed:
            out.setdefault(int(self.duplicate_of[i]), []).append(int(i))
        return out


def _window_pairs(keys: np.ndarray, tiebreak: np.ndarray, window: int) -> np.ndarray:
    """(M, 2) pairs i < j of items with equal ``keys`` within ``window`` in sort order."""
    order = np.lexsort((*tiebreak.T[::-1], keys))
    k = keys[order]
    pairs = []
    for d in range(1, window):
        same = k[d:] == k[:-d]
        if not same.any():
            break
        idx = np.flatnonzero(same)
        pairs.append(np.stack([order[idx], order[idx + d]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    p = np.concatenate(pairs)
    return np.sort(p, axis=1)


def candidate_pairs(codes: np.ndarray, keys: np.ndarray, radius: int = 3,
                    window: int = 32) -> np.ndarray:
    """Unique (M, 2) int64 pairs i < j: equal 32-bit key, or full codes within ``radius``."""
    if radius > 3:
        raise ValueError("radius above 3 is not guaranteed by four 32-bit tables")
    n, nbytes = codes.shape
    tiebreak = np.ascontiguousarray(codes).view(np.uint64) if nbytes % 8 == 0 \
        else codes.astype(np.uint64)
    tables = [np.asarray(keys, np.uint32)]
    if radius >= 0:
        quarters = np.ascontiguousarray(codes).view(np.uint32)  # (N, 4) for 128-bit codes
        tables += [quarters[:, q] for q in range(quarters.shape[1])]
    found = [_window_pairs(t, tiebreak, window) for t in tables]
    p = np.concatenate(found).astype(np.int64)
    if len(p) == 0:
        return p.reshape(0, 2)
    p = np.unique(p[:, 0] * n + p[:, 1])
    p = np.stack([p // n, p % n], axis=1)
    d = hamming(codes[p[:, 0]], codes[p[:, 1]])
    # Pairs found only through a quarter are neighbours only if within the radius; pairs
    # with equal keys are kept whatever their distance (confirmation decides).
    same_key = keys[p[:, 0]] == keys[p[:, 1]]
    return p[same_key | (d <= radius)]


def _small(thumbs: np.ndarray) -> np.ndarray:
    """(M, 32, 32, 3) uint8 -> (M, 16, 16, 3) float32, standardized per image."""
    x = np.asarray(thumbs, np.float32)
    x = x.reshape(len(x), 16, 2, 16, 2, 3).mean(axis=(2, 4))
    x -= x.mean(axis=(1, 2, 3), keepdims=True)
    x /= np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 2.0)  # flat images stay flat
    return x


def pixel_similarity(a: np.ndarray, b: np.ndarray, max_shift: int = 1) -> np.ndarray:
    """Correlation of standardized 16 x 16 thumbnails, best over small shifts: (M,) float32.

    Invariant to brightness and contrast (standardization), tolerant to re-encoding noise,
    rescaling and crops of a few percent (shift search), and to a small watermark (it moves
    the correlation of a 256-pixel image only a little).
    """
    x, y = _small(a), _small(b)
    s = max_shift
    yc = y[:, s:16 - s, s:16 - s]
    best = np.full(len(x), -1.0, np.float32)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            xc = x[:, s + dy:16 - s + dy, s + dx:16 - s + dx]
            num = (xc * yc).sum(axis=(1, 2, 3))
            den = np.sqrt((xc * xc).sum(axis=(1, 2, 3)) * (yc * yc).sum(axis=(1, 2, 3)))
            best = np.maximum(best, num / np.maximum(den, 1e-6))
    return best


def confirm(pairs: np.ndarray, codes: np.ndarray, thumbs, config: SearchConfig
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The confirmed subset of ``pairs`` with their code distances and pixel similarities."""
    keep, dists, sims = [], [], []
    for s in range(0, len(pairs), config.chunk):
        p = pairs[s:s + config.chunk]
        d = hamming(codes[p[:, 0]], codes[p[:, 1]])
        p, d = p[d <= config.max_distance], d[d <= config.max_distance]
        if len(p) == 0:
            continue
        order = np.argsort(p[:, 0], kind="stable")  # sorted reads from a memory map
        p, d = p[order], d[order]
        sim = pixel_similarity(thumbs[p[:, 0]], thumbs[p[:, 1]], config.max_shift)
        ok = sim >= config.min_similarity
        keep.append(p[ok])
        dists.append(d[ok])
        sims.append(sim[ok])
    if not keep:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(keep), np.concatenate(dists), np.concatenate(sims)


def group(n: int, pairs: np.ndarray, dists: np.ndarray, sims: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group confirmed pairs around representatives (lowest id kept, no chaining)."""
    dup_of = np.full(n, -1, np.int64)
    dist = np.full(n, -1, np.int32)
    sim = np.full(n, np.nan, np.float32)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    for (i, j), d, s in zip(pairs[order].tolist(), dists[order].tolist(),
                            sims[order].tolist()):
        if dup_of[i] < 0 and dup_of[j] < 0:  # i is a representative, j still unclaimed
            dup_of[j], dist[j], sim[j] = i, d, s
    return dup_of, dist, sim


def find_duplicates(codes: np.ndarray, keys: np.ndarray, thumbs,
                    config: SearchConfig | None = None) -> DuplicateResult:
    """Near-duplicate groups from packed codes, 32-bit keys and 32 x 32 thumbnails.

    ``thumbs`` is anything indexable by an int array giving (M, 32, 32, 3) uint8 (an array or
    a memory map); it is read only for candidate pairs.
    """
    import time

    config = config or SearchConfig()
    codes = np.ascontiguousarray(codes, np.uint8)
    keys = np.asarray(keys, np.uint32)
    if codes.ndim != 2 or len(codes) != len(keys):
        raise ValueError(f"codes {codes.shape} and keys {keys.shape} do not match")
    t0 = time.perf_counter()
    pairs = candidate_pairs(codes, keys, config.radius, config.window)
    t1 = time.perf_counter()
    ok, d, s = confirm(pairs, codes, thumbs, config)
    t2 = time.perf_counter()
    dup_of, dist, sim = group(len(codes), ok, d, s)
    t3 = time.perf_counter()
    return DuplicateResult(dup_of, dist, sim, candidates=len(pairs), confirmed=len(ok),
                           seconds={"candidates": round(t1 - t0, 3),
                                    "confirm": round(t2 - t1, 3),
                                    "group": round(t3 - t2, 3)})
