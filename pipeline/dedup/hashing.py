"""Binary codes from the autoencoder's code layer, and the 32-bit bucket keys derived from them.

The full hash is the code layer thresholded at zero (an active ReLU unit is a 1 bit), packed
into 16 bytes per image (faiss's binary layout). The bucket key is 32 of those bits, packed
into a uint32. Which 32: units whose activation rate is near one half (each bit splits the
data evenly) and that are least correlated with the units already chosen (so the 32 bits are
close to independent and buckets stay small); chosen greedily on the training data.
"""

from __future__ import annotations

import numpy as np


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
    """The ``n`` units that make the most even, least redundant and most stable bucket key.

    Greedy: start from the unit with the lowest penalty ``|rate - 0.5| + stability *
    flip_rate``; then repeatedly add the unit minimizing ``penalty + max |correlation with a
    chosen unit|``. ``flip_rate[j]``: how often unit j changes when an image is cropped by a
    few percent (``unit_flip_rates``). Units that are (almost) never or always active carry
    no information and are taken only if needed.
    """
    bits = np.asarray(bits, dtype=np.float32)
    if bits.shape[1] < n:
        raise ValueError(f"need at least {n} code units, got {bits.shape[1]}")
    rate = bits.mean(axis=0)
    imbalance = np.abs(rate - 0.5)
    std = bits.std(axis=0)
    centred = (bits - rate) / np.where(std > 0, std, 1.0)
    corr = np.abs(centred.T @ centred) / len(bits)  # (B, B) |Pearson correlation|
    dead = (rate < 0.01) | (rate > 0.99)
    penalty = imbalance + np.where(dead, 10.0, 0.0)
    if flip_rate is not None:
        penalty = penalty + stability * np.asarray(flip_rate, np.float32)
    chosen = [int(np.argmin(penalty))]
    worst = corr[chosen[0]].copy()
    for _ in range(n - 1):
        score = penalty + worst
        score[chosen] = np.inf
        j = int(np.argmin(score))
        chosen.append(j)
        worst = np.maximum(worst, corr[j])
    return np.array(chosen, dtype=np.int64)


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
    """(N, B) bool and 32 unit indices -> (N,) uint32 bucket keys."""
    sel = np.asarray(bits)[:, np.asarray(units)].astype(np.uint32)
    weights = (np.uint32(1) << np.arange(len(units), dtype=np.uint32)).astype(np.uint32)
    return (sel * weights).sum(axis=1, dtype=np.uint64).astype(np.uint32)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between rows of packed codes (broadcasting), as int32."""
    return _POPCOUNT[np.bitwise_xor(a, b)].sum(axis=-1, dtype=np.int32)


def hash_thumbs(model, thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails -> (packed 128-bit codes (N, 16) uint8, 32-bit keys (N,) uint32)."""
    from pipeline.dedup.autoencoder import encode_thumbs

    bits = binarize(encode_thumbs(model, thumbs))
    return pack_codes(bits), keys_from_bits(bits, model.key_units.cpu().numpy())
