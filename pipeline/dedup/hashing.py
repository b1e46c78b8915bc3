"""Binary codes from the autoencoder's code layer, and the 32-bit bucket keys derived from them.

The full hash is the code layer thresholded at zero (an active ReLU unit is a 1 bit), packed
into 16 bytes per image (faiss's binary layout). A bucket key is 32 of those bits, packed
into a uint32. Which 32: units whose activation rate is near one half (each bit splits the
data evenly), that rarely flip when the image is cropped by a few percent, and that are
least correlated with the units already chosen (so the 32 bits are close to independent and
buckets stay small); chosen greedily on the training data. The 128 units are split into four
such keys, in order of quality: the first is the design's 32-bit hash key, and together they
cover the whole code (see ``search.candidate_pairs`` for why); four more keys regroup the
same units across those four (``key_tables``).
"""

from __future__ import annotations

import numpy as np

KEY_BITS = 32  # a bucket key: 32 of the code units (the design's 32-bit codes)


def binarize(acts: np.ndarray) -> np.ndarray:
    """(N, B) ReLU activations -> (N, B) bool bits (active -> 1)."""
    return np.asarray(acts) > 0


def pack_codes(bits: np.ndarray) -> np.ndarray:
    """(N, B) bool -> (N, B/8) uint8, the layout faiss binary indexes use."""
    return np.packbits(bits, axis=1)


def unpack_codes(codes: np.ndarray) -> np.ndarray:
    """(N, B/8) uint8 -> (N, B) bool."""
    return np.unpackbits(codes, axis=1).astype(bool)


def choose_key_units(bits: np.ndarray, n: int = 32, flip_rate: np.ndarray | None = None,
                     stability: float = 2.0) -> np.ndarray:
    """The ``n`` units that make the most even, least redundant and most stable bucket key."""
    return choose_key_groups(bits, n, flip_rate, stability, groups=1)[0]


def choose_key_groups(bits: np.ndarray, n: int = 32, flip_rate: np.ndarray | None = None,
                      stability: float = 2.0, groups: int | None = None) -> np.ndarray:
    """(groups, n) unit indices (default: all B units in B // n groups): the first group is
    the best key, the others share the remaining units evenly.

    Greedy: a group's next unit minimizes ``penalty + max |correlation with the group's
    units|``, where ``penalty = |rate - 0.5| + stability * flip_rate`` and ``flip_rate[j]``
    is how often unit j changes when an image is cropped by a few percent. Units that are
    (almost) never or always active carry no information and are taken only if needed. The
    first group picks its ``n`` units first; the others then pick in turns, so no group is
    left with only the weak units (whose huge buckets would flood the search: docs/dedup.md).
    """
    bits = np.asarray(bits, dtype=np.float32)
    count = bits.shape[1] // n if groups is None else groups
    if count < 1 or bits.shape[1] < n * count:
        raise ValueError(f"need at least {n * max(count, 1)} code units, got {bits.shape[1]}")
    rate = bits.mean(axis=0)
    std = bits.std(axis=0)
    centred = (bits - rate) / np.where(std > 0, std, 1.0)
    corr = np.abs(centred.T @ centred) / len(bits)  # (B, B) |Pearson correlation|
    dead = (rate < 0.01) | (rate > 0.99)
    penalty = np.abs(rate - 0.5) + np.where(dead, 10.0, 0.0)
    if flip_rate is not None:
        penalty = penalty + stability * np.asarray(flip_rate, np.float32)
    chosen: list[list[int]] = [[] for _ in range(count)]
    worst = np.zeros((count, bits.shape[1]), np.float32)
    free = np.ones(bits.shape[1], bool)
    turns = [0] * n + [1 + i % (count - 1) for i in range((count - 1) * n)] if count > 1 \
        else [0] * n
    for g in turns:
        score = np.where(free, penalty + worst[g], np.inf)
        j = int(np.argmin(score))
        chosen[g].append(j)
        free[j] = False
        worst[g] = np.maximum(worst[g], corr[j])
    return np.array(chosen, dtype=np.int64)


def key_tables(groups: np.ndarray) -> np.ndarray:
    """(2G, n) unit indices: the G ``groups`` (a partition of the code), then a second
    partition whose key j takes every G-th unit of each group (its units come from all G
    groups). Pairs whose codes differ by 8-20 bits often have each key of one partition off
    by two bits or more; the other partition gives them a second chance, for twice the sorts
    (its gain in recall: docs/dedup.md).
    """
    groups = np.asarray(groups)
    g, n = groups.shape
    second = [[groups[i, k] for i in range(g) for k in range(n) if (i + k) % g == j]
              for j in range(g)]
    return np.concatenate([groups, np.array(second, dtype=groups.dtype)])


def crop_views(thumbs: np.ndarray, rng: np.random.Generator, max_px: int = 2) -> np.ndarray:
    """Each thumbnail cropped by 0..``max_px`` pixels per side and resized back to 32 x 32."""
    import cv2

    out = np.empty_like(thumbs)
    for i, t in enumerate(thumbs):
        a, b, c, d = rng.integers(0, max_px + 1, 4)
        out[i] = cv2.resize(np.ascontiguousarray(t[a:32 - b, c:32 - d]), (32, 32),
                            interpolation=cv2.INTER_LINEAR)
    return out


def keys_from_bits(bits: np.ndarray, units: np.ndarray) -> np.ndarray:
    """(N, B) bool and (..., 32) unit indices -> (N, ...) uint32 bucket keys: one key for
    32 units, (N, K) for K groups of 32; bit j of a key is unit ``units[..., j]``.

    Packed with ``np.packbits`` (little bit order, read as little-endian uint32), which is
    cheaper than a weighted sum of the bits.
    """
    units = np.asarray(units)
    if units.shape[-1] != KEY_BITS:
        raise ValueError(f"a key is {KEY_BITS} units, got {units.shape[-1]}")
    sel = np.asarray(bits, dtype=bool)[:, units]  # (N, ..., 32)
    packed = np.ascontiguousarray(np.packbits(sel, axis=-1, bitorder="little"))
    return packed.view("<u4")[..., 0].astype(np.uint32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between rows of packed codes (broadcasting), as int32.

    NumPy's ``bitwise_count`` (a popcount instruction), faster than a 256-entry lookup
    table.
    """
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int32)
