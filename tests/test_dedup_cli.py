"""`cli.py dedup` end to end on a real LMDB of near-duplicates (WebP/JPEG, corrupt records)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo.neardup import make_neardup_set
from demo.samples import lsun_key, write_lmdb
from pipeline.dataset import Dataset, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def neardup_db(tmp_path_factory, photos):
    """~400 photo tiles, half with a near-duplicate, plus two corrupt records."""
    ds = make_neardup_set(photos, seed=7)
    rng = np.random.default_rng(7)
    keys = [lsun_key(rng) for _ in ds.data]
    records = list(zip(keys, ds.data)) + [(b"bad-text", b"not an image"),
                                          (b"bad-cut", ds.data[0][:200])]
    path = write_lmdb(tmp_path_factory.mktemp("dedup") / "bedroom_train_lmdb", records)
    truth = {k.decode(): int(g) for k, g in zip(keys, ds.group)}
    return path, truth, len(records)


@pytest.fixture(scope="module")
def deduped(neardup_db, tmp_path_factory):
    db, _, _ = neardup_db
    out = tmp_path_factory.mktemp("out") / "bedroom-dedup"
    r = run_cli("dedup", "lsun", str(db), "--out", str(out), "--epochs", "6", "-j", "1")
    assert r.returncode == 0, r.stderr
    return out, r


def test_dedup_lsun_outputs(neardup_db, deduped):
    _, truth, total = neardup_db
    out, r = deduped
    assert "near-duplicates" in r.stdout and "removed" in r.stdout
    ds = Dataset(out)
    kept = [m["key"] for m in ds.manifest]
    dups = read_jsonl(out / "duplicates.jsonl")
    corrupt = read_jsonl(out / "rejected.jsonl")
    assert len(kept) + len(dups) + len(corrupt) == total
    assert {c["key"] for c in corrupt} == {"bad-text", "bad-cut"}
    assert all(c["reason"] == "corrupt" for c in corrupt)
    # This stage's drops, and the input's own (corrupt records) listed again, counted apart.
    assert ds.stats["dropped"] == {"duplicate": len(dups)}
    assert ds.stats["carried"] == {"corrupt": 2}
    assert ds.images.shape == (len(kept), 64, 64, 3) and ds.array("thumbs").shape[0] == len(kept)
    kept_set = set(kept)
    assert all(d["duplicate_of"] in kept_set and d["reason"] == "duplicate" for d in dups)
    correct = sum(truth[d["key"]] == truth[d["duplicate_of"]] for d in dups)
    removable = len(truth) - len(set(truth.values()))
    assert correct / len(dups) >= 0.95 and correct / removable >= 0.85
    assert ds.stats["removed"] == len(dups) and ds.stats["trained"] is True
    assert sum(int(k) * v for k, v in ds.stats["group_sizes"].items()) == \
        len(dups) + ds.stats["groups"]
    # Codes and keys of every extracted item, and the model, are kept for reuse.
    n_extracted = len(Dataset(out / "extracted"))
    assert np.load(out / "hash" / "codes.npy").shape == (n_extracted, 16)
    assert np.load(out / "hash" / "keys.npy").dtype == np.uint32
    assert (out / "review.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_threshold_change_and_model_reuse(neardup_db, deduped, tmp_path):
    db, _, _ = neardup_db
    out, _ = deduped
    r = run_cli("dedup", "lsun", str(db), "--out", str(out), "--epochs", "6", "-j", "1")
    assert r.returncode == 0 and "nothing to do" in r.stdout
    r = run_cli("dedup", "lsun", str(db), "--out", str(out), "--epochs", "6",
                "--min-similarity", "0.97", "-q")
    assert r.returncode == 2 and "search.min_similarity 0.9 -> 0.97" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    codes_mtime = (out / "hash" / "codes.npy").stat().st_mtime_ns
    removed_before = Dataset(out).stats["removed"]
    r = run_cli("dedup", "lsun", str(db), "--out", str(out), "--epochs", "6",
                "--min-similarity", "0.97", "--overwrite", "-q")
    assert r.returncode == 0, r.stderr
    assert (out / "hash" / "codes.npy").stat().st_mtime_ns == codes_mtime  # not re-encoded
    assert Dataset(out).stats["removed"] <= removed_before
    # The trained model deduplicates another dataset directory without training.
    out2 = tmp_path / "again"
    r = run_cli("dedup", str(out / "extracted"), "--out", str(out2),
                "--model", str(out / "hash" / "autoencoder.pt"), "-q")
    assert r.returncode == 0, r.stderr
    stats = json.loads((out2 / "stats.json").read_text())
    assert stats["trained"] is False and stats["removed"] > 0


def test_bad_inputs_are_one_line_errors(neardup_db, tmp_path):
    db, _, _ = neardup_db
    few = tmp_path / "few"
    r = run_cli("dedup", "lsun", str(db), "--out", str(few), "--limit", "20", "-q")
    assert r.returncode == 2 and "at least 32" in r.stderr and "--model" in r.stderr
    assert not few.exists()  # refused before anything is written (issue 17)
    run_cli("extract", "lsun", str(db), "--out", str(few / "extracted"), "--limit", "20",
            "-q")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    r = run_cli("dedup", str(few / "extracted"), "--out", str(tmp_path / "o"),
                "--model", str(junk), "-q")
    assert r.returncode == 2 and "not a dedup autoencoder" in r.stderr
    r = run_cli("dedup", str(tmp_path / "missing"), "--out", str(tmp_path / "o2"), "-q")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("dedup", "lsun", "--out", str(tmp_path / "o3"), "-q")
    assert r.returncode == 2 and "at least one LSUN database" in r.stderr
    import torch

    if not torch.cuda.is_available():  # refused before anything is decoded
        r = run_cli("dedup", "lsun", str(db), "--out", str(tmp_path / "o4"), "--device",
                    "cuda", "-q")
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr
        assert not (tmp_path / "o4" / "extracted").exists()
