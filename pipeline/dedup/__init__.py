"""Near-duplicate removal with a denoising autoencoder's binarized code (paper, section 4.1.1).

Public API (also used to hash generated samples for the memorization check)::

    model = train_autoencoder(thumbs)            # (N, 32, 32, 3) uint8
    save_autoencoder(model, "ae.pt"); model = load_autoencoder("ae.pt")
    codes, keys = hash_thumbs(model, thumbs)     # (N, 16) uint8, (N, 8) uint32
    result = find_duplicates(codes, keys, thumbs, SearchConfig())
    result.duplicate_of                          # (N,) kept id or -1
"""

from pipeline.dedup.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    encode_thumbs,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from pipeline.dedup.hashing import hamming, hash_thumbs
from pipeline.dedup.search import DuplicateResult, SearchConfig, find_duplicates

__all__ = ["Autoencoder", "AutoencoderConfig", "DuplicateResult", "SearchConfig",
           "encode_thumbs", "find_duplicates", "hamming", "hash_thumbs", "load_autoencoder",
           "save_autoencoder", "train_autoencoder"]
