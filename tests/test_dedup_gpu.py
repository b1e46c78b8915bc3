"""The dedup autoencoder on the GPU (skipped without one): it trains there, hashes, and its
hash finds the same near-duplicates as on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demo.neardup import make_neardup_set
from pipeline.decode import prepare
from pipeline.dedup import (
    AutoencoderConfig,
    SearchConfig,
    find_duplicates,
    hash_thumbs,
    train_autoencoder,
)

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)


def test_autoencoder_trains_on_the_gpu_and_finds_the_duplicates(photos):
    ds = make_neardup_set(photos, seed=3)
    thumbs = np.stack([prepare(b, 32)[1] for b in ds.data])
    group = np.asarray(ds.group)
    removable = len(group) - len(np.unique(group))
    found = {}
    for device in ("cuda", "cpu"):
        model = train_autoencoder(thumbs, AutoencoderConfig(), device=device, progress=False)
        assert model.config["final_loss"] < 1.0
        codes, keys = hash_thumbs(model, thumbs)
        result = find_duplicates(codes, keys, thumbs, SearchConfig())
        removed = result.removed
        assert (group[result.duplicate_of[removed]] == group[removed]).mean() >= 0.99
        found[device] = len(removed) / removable
    assert found["cuda"] >= 0.9 and abs(found["cuda"] - found["cpu"]) <= 0.05
