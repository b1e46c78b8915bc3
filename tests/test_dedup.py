"""Near-duplicate removal on real photos: training, hashing, search, grouping, bad inputs."""

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
    hamming,
    hash_thumbs,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from pipeline.dedup.hashing import (
    choose_key_groups,
    choose_key_units,
    key_tables,
    keys_from_bits,
    pack_codes,
    unpack_codes,
)
from pipeline.dedup.search import candidate_pairs, dct_signatures, group, pixel_similarity
from pipeline.errors import UserError

FAST = AutoencoderConfig(epochs=6)


@pytest.fixture(scope="module")
def neardups(photos):
    """Tiles of the package photos, half with one near-duplicate each, as 32x32 thumbnails."""
    ds = make_neardup_set(photos, seed=3)
    thumbs = np.stack([prepare(b, 32)[1] for b in ds.data])
    return ds, thumbs


@pytest.fixture(scope="module")
def model(neardups):
    torch.set_num_threads(2)
    return train_autoencoder(neardups[1], FAST, device="cpu", progress=False)


def _originals(ds):
    kinds = np.array(ds.kind)
    first = {int(ds.group[i]): i for i in np.flatnonzero(kinds == "original")}
    dups = np.flatnonzero(kinds != "original")
    return kinds, dups, np.array([first[int(ds.group[i])] for i in dups])


def test_keys_from_bits_puts_unit_j_at_bit_j():
    rng = np.random.default_rng(3)
    bits = rng.random((50, 128)) < 0.5
    units = rng.permutation(128)[:64].reshape(2, 32)
    keys = keys_from_bits(bits, units)
    expect = [[sum(int(bits[i, u]) << j for j, u in enumerate(g)) for g in units]
              for i in range(len(bits))]
    assert keys.dtype == np.uint32 and keys.shape == (50, 2) and keys.tolist() == expect
    assert keys_from_bits(bits, units[1]).tolist() == [e[1] for e in expect]
    assert max(expect)[0] > 2**31  # the top bit is used (uint32, not int32)


def test_training_hashing_and_keys(neardups, model):
    ds, thumbs = neardups
    assert len(thumbs) >= 256
    assert model.config["final_loss"] < 1.0  # standardized input: predicting 0 scores 1.0
    codes, keys = hash_thumbs(model, thumbs)
    assert codes.shape == (len(thumbs), 16) and codes.dtype == np.uint8
    assert keys.shape == (len(thumbs), 8) and keys.dtype == np.uint32
    # The keys are exactly the chosen groups of 32 units: two partitions of the full code.
    bits = unpack_codes(codes)
    units = model.key_units.numpy()
    assert units.shape == (8, 32)
    for half in (units[:4], units[4:]):
        assert sorted(half.ravel().tolist()) == list(range(128))
    assert all(len(set(units[4 + j]) & set(units[i])) == 8 for i in range(4) for j in range(4))
    assert np.array_equal(keys, keys_from_bits(bits, units))
    assert np.array_equal(keys[:, 0], keys_from_bits(bits, units[0]))
    # Semantic: near-duplicates hash close, distinct tiles far apart.
    kinds, dups, orig = _originals(ds)
    d_dup = hamming(codes[dups], codes[orig])
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(thumbs), (2, 2000))
    keep = ds.group[a] != ds.group[b]
    d_far = hamming(codes[a[keep]], codes[b[keep]])
    assert np.median(d_dup) <= 4 and np.median(d_far) >= 30
    assert np.all(d_dup[kinds[dups] == "exact"] == 0)
    # Keys spread the data: no bucket holds more than a few percent of it.
    assert np.unique(keys[:, 0], return_counts=True)[1].max() <= max(4, len(keys) // 25)


def test_key_units_are_balanced_and_decorrelated():
    rng = np.random.default_rng(0)
    rates = np.r_[np.full(40, 0.5), np.full(40, 0.02), np.full(48, 0.9)]
    bits = rng.random((4000, 128)) < rates
    bits[:, 1] = bits[:, 0]  # a perfect copy must not be chosen twice
    units = choose_key_units(bits, 32)
    assert not ({0, 1} <= set(units.tolist()))
    # Groups partition the code; the first is the best key (the balanced units).
    groups = choose_key_groups(bits, 32)
    assert groups.shape == (4, 32) and sorted(groups.ravel().tolist()) == list(range(128))
    assert bits[:, groups[0]].mean(axis=0).min() > 0.4
    assert np.all(np.abs(bits[:, units].mean(0) - 0.5) < 0.1)


def test_save_load_roundtrip_and_bad_files(neardups, model, tmp_path):
    thumbs = neardups[1][:64]
    path = save_autoencoder(model, tmp_path / "ae.pt")
    loaded = load_autoencoder(path)
    c1, k1 = hash_thumbs(model, thumbs)
    c2, k2 = hash_thumbs(loaded, thumbs)
    assert np.array_equal(c1, c2) and np.array_equal(k1, k2)

    state = torch.load(path, weights_only=True)
    state["version"] = 99
    torch.save(state, tmp_path / "v99.pt")
    with pytest.raises(UserError, match="version 99"):
        load_autoencoder(tmp_path / "v99.pt")
    state["version"] = 2
    state["code_bits"] = 64  # weights are 3072x128: another shape
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(UserError, match="do not fit"):
        load_autoencoder(tmp_path / "shape.pt")
    state["version"] = 1  # a file of the one-key layout: retrain
    torch.save(state, tmp_path / "v1.pt")
    with pytest.raises(UserError, match="version 1 autoencoder"):
        load_autoencoder(tmp_path / "v1.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a dedup autoencoder"):
        load_autoencoder(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_autoencoder(tmp_path / "missing.pt")


def test_too_few_images_is_a_clear_error(neardups):
    with pytest.raises(UserError, match="at least 32"):
        train_autoencoder(neardups[1][:20], FAST, progress=False)


def test_a_small_collection_trains_enough_to_find_its_duplicates(neardups):
    """60-odd images: one pass is a single step; training counts steps, not passes."""
    ds, thumbs = neardups
    group = np.asarray(ds.group)
    keep = np.flatnonzero(np.isin(group, np.unique(group)[:48]))  # whole groups
    model = train_autoencoder(thumbs[keep], AutoencoderConfig(steps=128), device="cpu",
                              progress=False)
    assert model.config["steps"] == 128
    codes, keys = hash_thumbs(model, thumbs[keep])
    result = find_duplicates(codes, keys, thumbs[keep], SearchConfig())
    g = group[keep]
    removed = result.removed
    assert len(removed) >= 0.9 * (len(keep) - len(np.unique(g)))
    assert (g[result.duplicate_of[removed]] == g[removed]).all()


def test_training_returns_the_codes_encoding_would_give(neardups):
    """Trained on all of its data, the model has encoded every thumbnail (to choose its key
    units); dedup reuses those activations instead of encoding again, so they must be
    exactly ``encode_thumbs``'s, also across its batch and chunk boundaries (> 8192 rows)."""
    from pipeline.dedup.autoencoder import encode_thumbs

    _, thumbs = neardups
    rng = np.random.default_rng(0)
    reps = -(-9001 // len(thumbs))
    x = np.concatenate([np.clip(thumbs.astype(np.int16) + rng.integers(-3, 4, thumbs.shape),
                                0, 255).astype(np.uint8) for _ in range(reps)])[:9001]
    model, acts = train_autoencoder(x, AutoencoderConfig(steps=3), "cpu", progress=False,
                                    return_activations=True)
    assert acts.shape == (9001, 128) and np.array_equal(acts, encode_thumbs(model, x))
    codes, keys = hash_thumbs(model, x, acts)
    assert np.array_equal(codes, hash_thumbs(model, x)[0])
    _, none = train_autoencoder(x, AutoencoderConfig(steps=3, train_limit=4000), "cpu",
                                progress=False, return_activations=True)
    assert none is None  # trained on a subset: the rest still needs encoding


def test_training_does_not_import_the_compiler_stack():
    """torch.optim's optimizer class imports torch._dynamo at its first step (1.3-1.9 s of
    fixed cost per dedup run on the VM); the autoencoder trains without it."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from pipeline.dedup.autoencoder import AutoencoderConfig, train_autoencoder\n"
            "x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)\n"
            "m = train_autoencoder(x, AutoencoderConfig(steps=3), 'cpu', progress=False)\n"
            "assert m.config['steps'] == 3 and np.isfinite(m.config['final_loss'])\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_find_duplicates_on_real_near_duplicates(neardups, model):
    ds, thumbs = neardups
    codes, keys = hash_thumbs(model, thumbs)
    res = find_duplicates(codes, keys, thumbs, SearchConfig())
    removed = res.removed
    rep = res.duplicate_of[removed]
    assert np.all(res.duplicate_of[rep] == -1)  # every representative is kept
    assert np.all(rep < removed)  # the lowest id of a group is kept
    precision = np.mean(ds.group[removed] == ds.group[rep])
    removable = len(ds.group) - len(np.unique(ds.group))
    recall = np.sum(ds.group[removed] == ds.group[rep]) / removable
    assert precision >= 0.95 and recall >= 0.85, (precision, recall)
    kinds, dups, orig = _originals(ds)
    exact = dups[kinds[dups] == "exact"]
    both = np.where(res.duplicate_of >= 0, res.duplicate_of, np.arange(len(thumbs)))
    assert np.all(both[exact] == both[orig[kinds[dups] == "exact"]])  # copies never missed
    assert np.all(res.distance[removed] <= SearchConfig().max_distance)
    assert np.all(res.similarity[removed] >= SearchConfig().min_similarity)
    sig = dct_signatures(thumbs)
    assert np.all(hamming(sig[removed], sig[rep]) <= SearchConfig().max_dct_distance)


def test_pixel_check_tolerates_edits_not_other_photos(photos):
    import cv2

    a = prepare(_enc(photos[0]), 32)[1]
    brighter = prepare(_enc(cv2.convertScaleAbs(photos[0], alpha=1.2, beta=20)), 32)[1]
    h, w = photos[0].shape[:2]
    crop = prepare(_enc(photos[0][h // 25:, w // 25:]), 32)[1]
    other = prepare(_enc(photos[2]), 32)[1]
    sims = pixel_similarity(np.stack([a, a, a]), np.stack([brighter, crop, other]))
    assert sims[0] > 0.97 and sims[1] > 0.9 and sims[2] < 0.5
    # The low-frequency DCT signatures: edits keep them, another photo's is unrelated.
    sig = dct_signatures(np.stack([a, brighter, crop, other]))
    dist = hamming(sig[:1], sig[1:])
    assert dist[0] <= 12 and dist[1] <= 20 and dist[2] >= 24, dist


def test_dct_signatures_match_opencv_dct(neardups):
    """The batched 8 x 8 low-frequency DCT is cv2.dct's, on real thumbnails."""
    import cv2

    thumbs = neardups[1][:200]
    grey = [cv2.cvtColor(t, cv2.COLOR_RGB2GRAY).astype(np.float32) for t in thumbs]
    low = np.stack([cv2.dct(g)[:8, :8].ravel() for g in grey])
    expected = np.packbits(low > np.median(low, axis=1, keepdims=True), axis=1)
    assert (dct_signatures(thumbs) == expected).all()
    assert dct_signatures(thumbs[:0]).shape == (0, 8)


def _enc(img):
    from demo.samples import encode

    return encode(img, "jpeg", 85)


def test_candidates_cover_radius_and_big_buckets_stay_linear():
    rng = np.random.default_rng(1)
    n = 20000
    bits = rng.random((n, 128)) < 0.5
    for i in range(0, 2000, 2):  # planted pairs at distance 1..7
        flip = rng.choice(128, 1 + (i // 2) % 7, replace=False)
        bits[i + 1] = bits[i]
        bits[i + 1, flip] ^= True
    codes = pack_codes(bits)
    keys = keys_from_bits(bits, key_tables(np.arange(128).reshape(4, 32)))
    pairs = {tuple(p) for p in candidate_pairs(codes, keys).tolist()}
    assert all((i, i + 1) in pairs for i in range(0, 2000, 2))
    assert len(pairs) < 1500  # distinct random codes almost never pair
    # 5000 identical codes (blank frames): pairs bounded by window x size, not size^2.
    same = np.zeros((5000, 16), np.uint8)
    p = candidate_pairs(same, np.zeros((5000, 8), np.uint32), window=16)
    assert 5000 <= len(p) <= (16 + 2) * 5000  # window + 2 bucket heads per item


def test_grouping_is_around_representatives_without_chaining():
    # 0~1 and 1~2 match, 0 and 2 do not: 2 must not be removed as a duplicate of 0 via 1.
    pairs = np.array([[0, 1], [1, 2], [3, 4], [3, 5]])
    dup_of, dist, _ = group(6, pairs, np.array([1, 2, 3, 4]), np.ones(4, np.float32))
    assert dup_of.tolist() == [-1, 0, -1, -1, 3, 3]
    assert dist.tolist() == [-1, 1, -1, -1, 3, 4]


def test_all_identical_and_no_duplicates(neardups, model):
    thumbs = neardups[1]
    same = np.repeat(thumbs[:1], 300, axis=0)
    codes, keys = hash_thumbs(model, same)
    res = find_duplicates(codes, keys, same)
    assert (res.duplicate_of == 0).sum() == 299 and res.duplicate_of[0] == -1
    ds = neardups[0]
    originals = np.flatnonzero(np.array(ds.kind) == "original")
    codes, keys = hash_thumbs(model, thumbs[originals])
    res = find_duplicates(codes, keys, thumbs[originals])
    assert len(res.removed) <= len(originals) // 50  # distinct tiles: (almost) none removed
