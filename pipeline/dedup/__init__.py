"""Near-duplicate removal with a denoising autoencoder's binarized code (paper, section 4.1.1).

Public API (also used to hash generated samples for the memorization check)::

    model = train_autoencoder(thumbs)            # (N, 32, 32, 3) uint8
    save_autoencoder(model, "ae.pt"); model = load_autoencoder("ae.pt")
    codes, keys = hash_thumbs(model, thumbs)     # (N, 16) uint8, (N, 8) uint32
    result = find_duplicates(codes, keys, thumbs, SearchConfig())
    result.duplicate_of                          # (N,) kept id or -1

The names are loaded on first use: importing a submodule (``pipeline.dedup.search``) does
not import torch (2 s here), which ``dedup lsun`` imports in the background while it decodes.
"""

from importlib import import_module

_EXPORTS = {
    "Autoencoder": "autoencoder", "AutoencoderConfig": "autoencoder",
    "encode_thumbs": "autoencoder", "load_autoencoder": "autoencoder",
    "save_autoencoder": "autoencoder", "train_autoencoder": "autoencoder",
    "hamming": "hashing", "hash_thumbs": "autoencoder",
    "DuplicateResult": "search", "SearchConfig": "search", "find_duplicates": "search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
