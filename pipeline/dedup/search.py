"""Linear-time duplicate search over binary codes: buckets, confirmation, grouping.

1. Candidates (multi-index hashing, Norouzi et al. 2012). The 128-bit code is split into
   four 32-bit keys (``hashing.choose_key_groups``: balanced, crop-stable, decorrelated
   units; the first is the design's 32-bit hash key), and regrouped into four more
   (``hashing.key_tables``). A pair is a candidate when one of its keys is equal or differs
   in one bit and the full codes differ in at most ``max_distance`` bits. As each set of
   four keys partitions the code, every pair within Hamming distance 7 is a candidate
   (pigeonhole: otherwise each key differs in 2 bits or more) without comparing all pairs;
   pairs at 8-12 bits are found when a key is within one bit. "Differs in at most bit b" is
   found by sorting the values with bit b cleared, so each key costs 33 sorts; pairs are
   formed between neighbours in sort order within a ``window``, items being ordered by
   their full code inside a bucket, so a degenerate bucket (many blank frames) costs
   ``window x size``, not ``size^2``, where faiss's ``IndexBinaryMultiHash`` scans whole
   buckets per query. Why these keys, radius and tables: see docs/dedup.md.
2. Confirmation, before anything is removed, on the thumbnails: (a) their low-frequency
   DCT signatures (``dct_signatures``, pHash's construction) differ in at most
   ``max_dct_distance`` of 64 bits, and (b) they correlate (``pixel_similarity``: band-passed,
   standardized 32 x 32 thumbnails, best over shifts of up to 2 px, ~6%) at least
   ``min_similarity``; so a hash collision alone never removes an image. (a) is there
   because (b) alone lets look-alike distinct images through (neighbouring tiles of a blurry
   photo correlate highly, but their low frequencies disagree); see docs/dedup.md.
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
    max_distance: int = 12  # candidate pairs differ in at most this many of the 128 code bits
    min_similarity: float = 0.90  # thumbnail correlation (best small shift) to confirm
    max_dct_distance: int = 20  # confirmed pairs' low-frequency DCT signatures (64 bits) differ
    # in at most this many bits (between edited copies and look-alike tiles: docs/dedup.md)
    max_shift: int = 2  # shifts tried by the pixel check, in 32 x 32 pixels (2 = ~6%)
    window: int = 16  # pairs formed within this distance in a bucket's sort order
    flips: int = 1  # key bits that may differ in a candidate pair (2: 529 sorts per key)
    chunk: int = 20_000  # candidate pairs confirmed per batch (bounds memory)


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


def _window_pairs(ranked: np.ndarray, rank: np.ndarray, window: int, heads: int = 2,
                  differ: np.ndarray | None = None) -> np.ndarray:
    """(M, 2) pairs of items with equal values: neighbours within ``window`` in sort order,
    and every member with the first ``heads`` members of its bucket.

    ``ranked`` holds the values in ``rank`` order; ``rank`` orders the items (by full code)
    so that neighbours inside a bucket are similar; the heads let one representative absorb
    a bucket of any size (a set of identical frames becomes one group, not groups of
    ``window``). ``differ`` (in ``rank`` order too): keep only pairs whose ``differ`` values
    differ (a probe with a bit cleared then returns only the pairs that differ in that bit,
    not again every pair of equal keys, which the unmasked probe already found).
    """
    # One sort of (value, position in rank) packed in 64 bits, cheaper than an argsort.
    packed = (ranked.astype(np.uint64) << np.uint64(32)) | np.arange(
        len(rank), dtype=np.uint64)
    packed.sort()
    v = (packed >> np.uint64(32)).astype(np.uint32)
    where = packed & np.uint64(0xFFFFFFFF)

    def pairs_at(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # sorted positions -> ids
        pa, pb = where[a].astype(np.int64), where[b].astype(np.int64)
        if differ is not None:
            keep = differ[pa] != differ[pb]
            pa, pb = pa[keep], pb[keep]
        return np.stack([rank[pa], rank[pb]], axis=1)

    pairs = []
    full = True
    for d in range(1, window):
        idx = np.flatnonzero(v[d:] == v[:-d])
        if len(idx) == 0:
            full = False
            break
        pairs.append(pairs_at(idx, idx + d))
    if full and window > 1:  # some bucket is larger than the window
        pos = np.arange(len(v))
        start = np.maximum.accumulate(np.where(np.r_[True, v[1:] != v[:-1]], pos, 0))
        for h in range(heads):
            far = np.flatnonzero(start + h + window <= pos)  # not already a neighbour pair
            pairs.append(pairs_at(start[far] + h, far))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def _flip_masks(flips: int, bits: int = 32) -> list[int]:
    """Masks that clear 0..``flips`` of the ``bits`` bits: equal after masking = within."""
    from itertools import combinations

    full = (1 << bits) - 1
    return [full & ~sum(1 << b for b in c) for k in range(flips + 1)
            for c in combinations(range(bits), k)]


def _table_pairs(values: np.ndarray, rank: np.ndarray, window: int, flips: int = 1,
                 keep=None) -> np.ndarray:
    """Pairs whose 32-bit ``values`` differ in at most ``flips`` bits (1 + 32 sorts for one
    flip, 1 + 32 + 496 for two), filtered by ``keep`` (pairs -> pairs) one probe at a time,
    so that a weak key's many unfiltered pairs never pile up in memory (docs/dedup.md)."""
    ranked = np.asarray(values, np.uint32)[rank]
    keep = keep or (lambda p: p)
    return np.concatenate([keep(_window_pairs(ranked & np.uint32(m), rank, window,
                                              differ=None if i == 0 else ranked))
                           for i, m in enumerate(_flip_masks(flips))])


def _unique_pairs(p: np.ndarray, n: int) -> np.ndarray:
    if len(p) == 0:
        return np.zeros((0, 2), np.int64)
    p = p.astype(np.int64)
    u = np.sort(np.minimum(p[:, 0], p[:, 1]) * n + np.maximum(p[:, 0], p[:, 1]))
    # A sort and a mask, not np.unique: its hash-based path is far slower on integer keys
    # (docs/dedup.md).
    u = u[np.r_[True, u[1:] != u[:-1]]]
    return np.stack([u // n, u % n], axis=1)


def candidate_pairs(codes: np.ndarray, keys: np.ndarray, max_distance: int = 12,
                    window: int = 16, flips: int = 1) -> np.ndarray:
    """Unique (M, 2) int64 pairs i < j with some key (a column of ``keys``, (N,) or (N, K)
    uint32) differing in at most ``flips`` bits and codes within ``max_distance`` bits."""
    codes = np.ascontiguousarray(codes)
    n = len(codes)
    if codes.shape[1] % 8:
        raise ValueError("codes must be a multiple of 64 bits")
    keys = np.asarray(keys, np.uint32).reshape(n, -1)
    rank = np.lexsort(codes.view(np.uint64).T[::-1]).astype(np.int64)  # full-code order

    def near_pairs(columns: np.ndarray) -> np.ndarray:
        found = [np.zeros((0, 2), np.int64)]
        for k in columns:
            found.append(_table_pairs(keys[:, k], rank, window, flips, keep=near))
        return np.concatenate(found)

    def near(p: np.ndarray) -> np.ndarray:
        return p[hamming(codes[p[:, 0]], codes[p[:, 1]]) <= max_distance]

    # The tables are independent: one thread each (NumPy's sorts release the GIL).
    found = _in_threads(near_pairs, np.arange(keys.shape[1]), min_part=1)
    return _unique_pairs(np.concatenate(found), n)  # one pass: most pairs are far apart


_TAPS = np.array([1, 4, 6, 4, 1], np.float32) / 16  # binomial, ~Gaussian sigma 1


def _prepare(thumbs: np.ndarray) -> np.ndarray:
    """(M, 32, 32, 3) uint8 -> float32 band-pass (fine blur minus coarse blur), standardized.

    Fine: a 5-tap binomial (~Gaussian sigma 1). Coarse: ~Gaussian sigma 6, computed at 8 x 8
    (area downsampling, sigma-1.5 blur, linear upsampling: cheap). The low cut removes the
    smooth lighting gradient that makes unrelated textures (two patches of the same wall)
    correlate. OpenCV filters 42 images at once as one 126-channel image, as many as fit in
    OpenCV 5's limit of 128 channels (docs/dedup.md).
    """
    import cv2

    x = np.asarray(thumbs)
    out = np.empty(x.shape, np.float32)
    for s in range(0, len(x), 42):
        k = len(x[s:s + 42])
        img = np.ascontiguousarray(x[s:s + k].transpose(1, 2, 0, 3)).reshape(32, 32, 3 * k)
        img = img.astype(np.float32)
        fine = cv2.sepFilter2D(img, cv2.CV_32F, _TAPS, _TAPS, borderType=cv2.BORDER_REFLECT)
        low = cv2.resize(img, (8, 8), interpolation=cv2.INTER_AREA)
        low = cv2.GaussianBlur(low, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)
        low = cv2.resize(low, (32, 32), interpolation=cv2.INTER_LINEAR)
        out[s:s + k] = (fine - low).reshape(32, 32, k, 3).transpose(2, 0, 1, 3)
    # Per-image mean and std over flat rows: NumPy's reductions over axes (1, 2, 3) are
    # much slower.
    flat = out.reshape(len(out), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    std = np.sqrt(np.einsum("ij,ij->i", flat, flat) / max(1, flat.shape[1]))
    flat /= np.maximum(std, 2.0)[:, None]  # flat stays flat
    return out


def _similarity(x: np.ndarray, y: np.ndarray, max_shift: int,
                decided: tuple[float, float] | None = None,
                pairs: np.ndarray | None = None, block: int = 1024) -> np.ndarray:
    """Best correlation of prepared images over relative shifts of up to ``max_shift`` px.

    The correlation is OpenCV's ``TM_CCORR_NORMED`` of the centre of ``y`` (the template,
    ``max_shift`` px in from each side) against ``x``, and of ``x``'s centre against ``y``
    when the first direction falls short: symmetric, so a pair scores the same whichever
    item has the lower id. A crop shifts and zooms, which one direction's window can miss.
    With ``pairs`` (M, 2), the pairs are ``x[pairs[:, 0]]`` and ``y[pairs[:, 1]]`` (no
    per-pair copies); else ``x[i]`` and ``y[i]``. ``decided = (low, high)``: pairs whose
    unshifted correlation is below ``low`` or at least ``high`` are not searched further
    (their value is the unshifted one): near-duplicates score well above 0.5 unshifted and
    most distinct pairs below it, so ``(0.5, threshold)`` spares most pairs the shift search
    and changes no decision (docs/dedup.md). The unshifted correlation is one vectorized dot
    product per pair (in blocks of ``block`` pairs: small temporaries); the shift search
    (5 x 5 shifts) is one or two ``cv2.matchTemplate`` calls per undecided pair.
    """
    import cv2

    s = max_shift
    if pairs is None:
        pairs = np.stack([np.arange(len(x)), np.arange(len(y))], axis=1)

    # Unit-norm centre windows: the unshifted correlation is a dot product of these.
    def unit_centres(a: np.ndarray) -> np.ndarray:
        c = a[:, s:32 - s, s:32 - s].reshape(len(a), -1)
        c /= np.maximum(np.sqrt(np.einsum("ij,ij->i", c, c))[:, None], 1e-6)
        return c

    centres = [unit_centres(x)] * 2 if y is x else [unit_centres(x), unit_centres(y)]
    best = np.empty(len(pairs), np.float32)
    for b in range(0, len(pairs), block):
        p = pairs[b:b + block]
        best[b:b + block] = np.einsum("ij,ij->i", centres[0][p[:, 0]], centres[1][p[:, 1]])
    todo = np.arange(len(pairs)) if decided is None else \
        np.flatnonzero((best >= decided[0]) & (best < decided[1]))

    enough = np.inf if decided is None else decided[1]

    def search(part: np.ndarray) -> None:
        for k in part.tolist():
            i, j = pairs[k]
            v = cv2.matchTemplate(x[i], y[j, s:32 - s, s:32 - s], cv2.TM_CCORR_NORMED).max()
            if v < enough:  # and the other way round: x's centre over shifts of y
                v = max(v, cv2.matchTemplate(y[j], x[i, s:32 - s, s:32 - s],
                                             cv2.TM_CCORR_NORMED).max())
            best[k] = v

    if s > 0:
        _in_threads(search, todo)
    return best


def _in_threads(fn, items: np.ndarray, min_part: int = 256) -> list:
    """``[fn(part) for part in parts]`` over one contiguous part of ``items`` (at least
    ``min_part`` long) per core, in threads (OpenCV and NumPy release the GIL): the search
    runs after extraction, when every core is free."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.runner import default_workers

    n = min(default_workers(), max(1, len(items) // min_part))
    parts = np.array_split(items, n)
    if n == 1:
        return [fn(parts[0])]
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, parts))


def pixel_similarity(a: np.ndarray, b: np.ndarray, max_shift: int = 2) -> np.ndarray:
    """Correlation of band-passed, standardized thumbnails, best over small shifts: (M,) float32.

    Invariant to brightness and contrast (standardization), tolerant to re-encoding noise,
    rescaling and crops of a few percent (blur and shift search), and to a small watermark
    (it moves the correlation of a 1024-pixel image only a little). Near-featureless distinct
    images (sky, blank walls) can still score high; scores on the benchmark: docs/dedup.md.
    """
    return _similarity(_prepare(a), _prepare(b), max_shift)


def _dct_rows(n: int = 32, k: int = 8) -> np.ndarray:
    """The first ``k`` rows of the orthonormal n-point DCT-II matrix (``cv2.dct``'s scaling)."""
    i = np.arange(n)
    m = np.cos(np.pi * (2 * i[None, :] + 1) * np.arange(k)[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m.astype(np.float32)


_DCT8 = _dct_rows()


def dct_signatures(thumbs: np.ndarray) -> np.ndarray:
    """(M, 32, 32, 3) uint8 -> (M, 8) uint8: packed 64-bit signatures, the 8 x 8 lowest DCT
    frequencies of the grey thumbnail against their median (pHash's construction, on the
    thumbnail). Edits of one image keep the small coefficients' signs; two different images
    that merely look alike (neighbouring tiles of a blurry photo) do not.

    Only the 8 x 8 block is needed: two matrix products with the DCT's first 8 rows, over
    the whole batch, give ``cv2.dct(g)[:8, :8]`` (to float rounding) without a ``cv2.dct``
    call per image.
    """
    import cv2

    n = len(thumbs)
    if n == 0:
        return np.zeros((0, 8), np.uint8)
    grey = cv2.cvtColor(np.ascontiguousarray(thumbs).reshape(n * 32, 32, 3),
                        cv2.COLOR_RGB2GRAY).reshape(n, 32, 32).astype(np.float32)
    low = (_DCT8 @ grey @ _DCT8.T).reshape(n, 64)
    return np.packbits(low > np.median(low, axis=1, keepdims=True), axis=1)


def confirm(pairs: np.ndarray, codes: np.ndarray, thumbs, config: SearchConfig,
            signatures: np.ndarray | None = None, known: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The confirmed subset of ``pairs`` with their code distances and pixel similarities.

    ``signatures`` (N, 8) and ``known`` (N,) bool: a cache of ``dct_signatures`` across
    calls, filled here (an item is in many pairs, and in many blocks of them).
    """
    keep, dists, sims = [], [], []
    for s in range(0, len(pairs), config.chunk):
        p = pairs[s:s + config.chunk]
        d = hamming(codes[p[:, 0]], codes[p[:, 1]])
        p, d = p[d <= config.max_distance], d[d <= config.max_distance]
        items, inv = np.unique(p, return_inverse=True)  # each thumbnail prepared once
        inv = inv.reshape(p.shape)
        small = np.asarray(thumbs[items])
        if signatures is None:
            sig = dct_signatures(small)
        else:
            new = ~known[items]
            signatures[items[new]] = dct_signatures(small[new])
            known[items[new]] = True
            sig = signatures[items]
        agree = hamming(sig[inv[:, 0]], sig[inv[:, 1]]) <= config.max_dct_distance
        p, d, inv = p[agree], d[agree], inv[agree]
        if len(p) == 0:
            continue
        used, inv = np.unique(inv, return_inverse=True)  # only thumbnails still in a pair
        inv = inv.reshape(p.shape)
        prepared = np.concatenate(_in_threads(_prepare, small[used]))
        sim = _similarity(prepared, prepared, config.max_shift,
                          decided=(0.5, config.min_similarity), pairs=inv)
        ok = sim >= config.min_similarity
        keep.append(p[ok])
        dists.append(d[ok])
        sims.append(sim[ok])
    if not keep:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(keep), np.concatenate(dists), np.concatenate(sims)


def _assign(dup_of: np.ndarray, dist: np.ndarray, sim: np.ndarray, pairs: np.ndarray,
            dists: np.ndarray, sims: np.ndarray) -> None:
    """Apply confirmed pairs in (i, j) order: a representative i claims an unclaimed j."""
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    for (i, j), d, s in zip(pairs[order].tolist(), dists[order].tolist(),
                            sims[order].tolist()):
        if dup_of[i] < 0 and dup_of[j] < 0:  # i is a representative, j still unclaimed
            dup_of[j], dist[j], sim[j] = i, d, s


def group(n: int, pairs: np.ndarray, dists: np.ndarray, sims: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group confirmed pairs around representatives (lowest id kept, no chaining)."""
    dup_of = np.full(n, -1, np.int64)
    dist = np.full(n, -1, np.int32)
    sim = np.full(n, np.nan, np.float32)
    _assign(dup_of, dist, sim, pairs, dists, sims)
    return dup_of, dist, sim


def confirm_and_group(n: int, pairs: np.ndarray, codes: np.ndarray, thumbs,
                      config: SearchConfig, block: int = 8192
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``group(confirm(pairs))`` without confirming pairs whose outcome is already decided.

    Pairs are taken in (i, j) order, ``block`` at a time; a pair whose first item was
    already removed (it is no representative) or whose second item was already claimed
    cannot change the grouping, so it is never pixel-checked. Same result as confirming
    everything first; much less work on collections with large duplicate groups. Blocks
    count pairs, not representatives, so a block stays small enough for earlier claims to
    skip later pairs (docs/dedup.md).
    """
    dup_of = np.full(n, -1, np.int64)
    dist = np.full(n, -1, np.int32)
    sim = np.full(n, np.nan, np.float32)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    signatures, known = np.zeros((n, 8), np.uint8), np.zeros(n, bool)
    confirmed = 0
    for a in range(0, len(pairs), block):
        p = pairs[a:a + block]
        p = p[(dup_of[p[:, 0]] < 0) & (dup_of[p[:, 1]] < 0)]
        if len(p) == 0:
            continue
        ok, d, s = confirm(p, codes, thumbs, config, signatures, known)
        confirmed += len(ok)
        _assign(dup_of, dist, sim, ok, d, s)
    return dup_of, dist, sim, confirmed


def find_duplicates(codes: np.ndarray, keys: np.ndarray, thumbs,
                    config: SearchConfig | None = None) -> DuplicateResult:
    """Near-duplicate groups from packed codes, 32-bit keys ((N,) or (N, K)) and 32 x 32
    thumbnails.

    ``thumbs`` is anything indexable by an int array giving (M, 32, 32, 3) uint8 (an array or
    a memory map); it is read only for candidate pairs.
    """
    import time

    config = config or SearchConfig()
    codes = np.ascontiguousarray(codes, np.uint8)
    keys = np.asarray(keys, np.uint32)
    if codes.ndim != 2 or keys.ndim not in (1, 2) or len(codes) != len(keys):
        raise ValueError(f"codes {codes.shape} and keys {keys.shape} do not match")
    t0 = time.perf_counter()
    pairs = candidate_pairs(codes, keys, config.max_distance, config.window, config.flips)
    t1 = time.perf_counter()
    dup_of, dist, sim, confirmed = confirm_and_group(len(codes), pairs, codes, thumbs, config)
    t2 = time.perf_counter()
    return DuplicateResult(dup_of, dist, sim, candidates=len(pairs), confirmed=confirmed,
                           seconds={"candidates": round(t1 - t0, 3),
                                    "confirm_and_group": round(t2 - t1, 3)})
