"""Damaged and odd inputs (issue 15): each is a one-line error or a counted drop, never a
crash, a hang or a silently kept bad image. Real files, real LMDBs, real processes."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import Dataset
from pipeline.samples import encode, random_view, write_lmdb

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


# -- 1. truncated and damaged LMDBs ----------------------------------------------------------
@pytest.fixture(scope="module")
def small_values_db(tmp_path_factory, photos) -> Path:
    """300 records of 48 px WebP (~1 KB, stored inside the leaf pages): a tree of many
    leaves under a branch page, as in a real LSUN database."""
    rng = np.random.default_rng(1)
    records = [(f"{i:05d}".encode(), encode(random_view(photos[i % len(photos)], rng, 48),
                                            "webp", 60)) for i in range(300)]
    return write_lmdb(tmp_path_factory.mktemp("small") / "small_lmdb", records)


def _copy_db(db: Path, dest: Path) -> Path:
    dest.mkdir()
    shutil.copy(db / "data.mdb", dest / "data.mdb")
    return dest


def _pages(mdb: Path, flag: int) -> list[int]:
    """Page numbers whose LMDB page header carries ``flag`` (1 branch, 2 leaf, 4 overflow
    head; the flags word sits after the 8-byte page number and 2 bytes of padding)."""
    data = mdb.read_bytes()
    return [i for i in range(2, len(data) // 4096)
            if struct.unpack_from("<H", data, i * 4096 + 10)[0] == flag
            and struct.unpack_from("<Q", data, i * 4096)[0] == i]


def _zero_page(mdb: Path, page: int) -> None:
    with open(mdb, "r+b") as f:
        f.seek(page * 4096)
        f.write(bytes(4096))


@pytest.mark.parametrize("keep", ["half", "meta_only", "one_byte_short"])
def test_truncated_lmdb_is_a_one_line_error(lsun_db, tmp_path, keep):
    """A half-finished download: LMDB would read past the end of its memory map (SIGBUS,
    exit 135 without a word) before the check; now one line with the sizes, exit 2."""
    db = _copy_db(lsun_db, tmp_path / "cut_lmdb")
    full = (db / "data.mdb").stat().st_size
    size = {"half": full // 2, "meta_only": 2 * 4096, "one_byte_short": full - 1}[keep]
    os.truncate(db / "data.mdb", size)
    r = run_cli("extract", "lsun", str(db), "--out", str(tmp_path / "out"), "-q")
    assert_one_line_error(r, "truncated", f"{size:,} of its {full:,} bytes")
    assert not (tmp_path / "out").exists()


def test_zeroed_tree_pages_are_one_line_errors(small_values_db, tmp_path):
    """A zeroed leaf page (its keys are lost) made LMDB abort the process (SIGABRT, an
    assertion) while listing keys; a zeroed branch page is reported by LMDB itself."""
    leaves = _pages(small_values_db / "data.mdb", 2)
    branches = _pages(small_values_db / "data.mdb", 1)
    assert len(leaves) > 10 and branches  # the fixture is a real multi-level tree
    for name, page in (("leaf", leaves[len(leaves) // 2]), ("last_leaf", leaves[-1]),
                       ("branch", branches[0])):
        db = _copy_db(small_values_db, tmp_path / f"{name}_lmdb")
        _zero_page(db / "data.mdb", page)
        r = run_cli("extract", "lsun", str(db), "--out", str(tmp_path / f"{name}_out"), "-q")
        assert_one_line_error(r, str(db))
        assert "damaged" in r.stderr or "not a readable LMDB" in r.stderr, r.stderr


def test_zeroed_value_head_page_is_a_corrupt_record(lsun_db, lsun_records, tmp_path):
    """A zeroed first page of a large value: that record alone is dropped as corrupt."""
    db = _copy_db(lsun_db, tmp_path / "value_lmdb")
    data = (db / "data.mdb").read_bytes()
    starts = {v[:64]: k for k, v in lsun_records}  # good records only
    heads = [p for p in _pages(db / "data.mdb", 4) if data[p * 4096 + 16:][:64] in starts]
    assert len(heads) == 25  # every good record of the fixture spans several pages
    _zero_page(db / "data.mdb", heads[10])
    out = tmp_path / "out"
    r = run_cli("extract", "lsun", str(db), "--out", str(out), "-q", "-j", "2")
    assert r.returncode == 0, r.stderr
    stats = Dataset(out).stats
    assert stats["read"] == 30 and stats["kept"] == 24 and stats["dropped"] == {"corrupt": 6}
    from pipeline.lsun import key_text

    lost = key_text(starts[data[heads[10] * 4096 + 16:][:64]])
    assert lost in {r["key"] for r in Dataset(out).drops()}


# -- 5. LMDB keys as text --------------------------------------------------------------------
def test_key_text_is_one_to_one():
    """Every key over bytes that meet escapes (backslash, 'x', hex digits, bytes that are
    not UTF-8, a 2-byte UTF-8 letter), up to 4 bytes long, gets its own text."""
    import itertools

    from pipeline.lsun import key_text

    alphabet = [b"\\", b"x", b"f", b"a", b"\xff", b"\xc3", b"\xa9"]
    keys = {b"".join(p) for n in range(5) for p in itertools.product(alphabet, repeat=n)}
    texts = {key_text(k) for k in keys}
    assert len(texts) == len(keys)
    assert key_text(b"0f3a9c") == "0f3a9c" and key_text("café/1".encode()) == "café/1"
    assert key_text(b"a\xff") == "a\\xff" and key_text(b"a\\xff") == "a\\\\xff"


def test_escaped_and_literal_keys_stay_apart_in_the_manifest(photos, tmp_path):
    keys = [b"a\xff", b"a\\xff", b"a\\\\xff", b"plain"]
    db = write_lmdb(tmp_path / "keys_lmdb",
                    [(k, encode(photos[i], "webp")) for i, k in enumerate(keys)])
    out = tmp_path / "out"
    r = run_cli("extract", "lsun", str(db), "--out", str(out), "-q", "--resolution", "16")
    assert r.returncode == 0, r.stderr
    manifest = [m["key"] for m in Dataset(out).manifest]
    assert sorted(manifest) == sorted(["a\\xff", "a\\\\xff", "a\\\\\\\\xff", "plain"])
