"""LSUN extraction on real LMDBs: WebP and JPEG values, corrupt records, an odd key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo.samples import encode, write_lmdb
from pipeline.dataset import Dataset
from pipeline.decode import DecodeError, center_crop, decode, prepare, resize, sniff
from pipeline.errors import UserError
from pipeline.extract import ExtractConfig, extract
from pipeline.lsun import LsunSource, cache_dir, key_text, resolve_databases

ROOT = Path(__file__).resolve().parents[1]


def test_sniff_and_decode_formats(photos):
    img = photos[0][:300, :200]
    for fmt in ("webp", "jpeg", "png"):
        data = encode(img, fmt, 95)
        assert sniff(data) == fmt
        out = decode(data)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - img).mean() < 6  # RGB order kept, not BGR


def test_reduced_jpeg_decoding_keeps_min_side(photos):
    big = photos[6]  # retina, 1411 px
    data = encode(big, "jpeg", 90)
    small = decode(data, min_side=300)
    assert min(small.shape[:2]) >= 300 and small.shape[0] < big.shape[0]


def test_prepare_centre_crop_and_thumbnail(photos):
    img = photos[2]  # chelsea 300x451
    image, thumb = prepare(encode(img, "png"), 64)
    assert image.shape == (64, 64, 3) and thumb.shape == (32, 32, 3)
    ref = resize(center_crop(img), 64)
    assert np.abs(image.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("data,reason", [
    (b"", "corrupt"), (b"hello", "corrupt"), (b"\xff\xd8\xff\xe0" + b"\0" * 100, "corrupt"),
])
def test_decode_rejects_non_images(data, reason):
    with pytest.raises(DecodeError) as e:
        decode(data)
    assert e.value.reason == reason


def test_decompression_bomb_refused_before_decoding():
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((6000, 6000), np.uint8))
    with pytest.raises(DecodeError) as e:
        decode(buf.tobytes(), max_pixels=10_000_000)
    assert e.value.reason == "too_large"


def test_extract_lsun_keeps_valid_drops_corrupt(lsun_db, lsun_records, tmp_path):
    src = LsunSource(resolve_databases([lsun_db]))
    assert len(src) == 30
    out = tmp_path / "out"
    r = extract(src, out, ExtractConfig(workers=2, chunk=7), progress=False)
    assert r.read == 30 and r.kept == 25
    assert r.dropped == {"corrupt": 5}
    d = Dataset(out)
    assert d.images.shape == (25, 64, 64, 3) and d.array("thumbs").shape == (25, 32, 32, 3)
    keys = [r["key"] for r in d.manifest]
    assert len(set(keys)) == 25
    assert sorted(keys) == sorted(key_text(k) for k, _ in lsun_records)
    assert "../../etc/passwd\\xff\\xfe/odd key" in keys
    assert not (tmp_path / "etc").exists()  # keys are never used as paths
    dropped = {r["key"] for r in d.drops()}
    assert dropped == {"bad-truncated-jpeg", "bad-truncated-webp", "bad-empty", "bad-text",
                       "bad-garbled-jpeg"}
    # pixels match a direct decode of the same record
    by_key = {key_text(k): v for k, v in lsun_records}
    for i in (0, 5, 24):
        ref, thumb = prepare(by_key[keys[i]], 64)
        assert np.array_equal(d.images[i], ref)
        assert np.array_equal(d.array("thumbs")[i], thumb)


def test_workers_do_not_change_the_output(lsun_db, tmp_path):
    src = LsunSource([lsun_db])
    extract(src, tmp_path / "a", ExtractConfig(workers=1), progress=False)
    extract(src, tmp_path / "b", ExtractConfig(workers=2, chunk=3), progress=False)
    a, b = Dataset(tmp_path / "a"), Dataset(tmp_path / "b")
    assert np.array_equal(a.images, b.images) and a.manifest == b.manifest


def test_limit_and_sharding(lsun_db, tmp_path):
    src = LsunSource([lsun_db], limit=10)
    assert len(src) == 10
    # Shards are contiguous blocks: run with different chunk sizes they still tile the source.
    s0 = extract(src, tmp_path / "s0", ExtractConfig(chunk=3, world_size=2), progress=False)
    s1 = extract(src, tmp_path / "s1", ExtractConfig(chunk=4, rank=1, world_size=2),
                 progress=False)
    assert s0.read == s1.read == 5
    seen = []
    for shard in ("s0", "s1"):
        d = Dataset(tmp_path / shard)
        seen += [r["key"] for r in d.manifest] + [r["key"] for r in d.drops()]
    assert sorted(seen) == sorted(k for k, _ in src.read_range(0, 10))


def test_key_cache_is_invalidated_when_database_changes(tmp_path, photos):
    db = write_lmdb(tmp_path / "x_lmdb", [(b"a" * 40, encode(photos[0]))])
    assert len(LsunSource([db])) == 1
    assert list(cache_dir().glob("*.keys.npy"))
    write_lmdb(db, [(b"b" * 40, encode(photos[1]))])
    assert len(LsunSource([db])) == 2


def test_multiple_databases_and_category_root(lsun_db, tmp_path):
    src = LsunSource(resolve_databases([lsun_db.parent], category="bedroom"))
    assert len(src) == 30
    two = LsunSource([lsun_db, lsun_db])
    assert len(two) == 60 and list(two.read_range(29, 31))[1][0] == list(
        src.read_range(0, 1))[0][0]


def test_bad_database_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_databases([tmp_path / "nope_lmdb"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not an LMDB"):
        resolve_databases([tmp_path / "plain"])
    empty = write_lmdb(tmp_path / "empty_lmdb", [])
    with pytest.raises(UserError, match="empty"):
        LsunSource([empty])


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_extract_lsun_then_rerun_is_noop(lsun_db, tmp_path):
    out = tmp_path / "ds"
    r = run_cli("extract", "lsun", str(lsun_db), "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "kept 25" in r.stdout and "5 corrupt" in r.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 25
    mtime = (out / "images.npy").stat().st_mtime_ns
    r = run_cli("extract", "lsun", str(lsun_db), "--out", str(out))
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert (out / "images.npy").stat().st_mtime_ns == mtime
    r = run_cli("extract", "lsun", str(lsun_db), "--out", str(out), "--resolution", "32")
    # Only what differs is named, with the flag that replaces it (issue 17).
    assert r.returncode == 2 and "other settings (resolution 64 -> 32)" in r.stderr
    assert "pass --overwrite" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("make,msg", [
    (lambda p: p / "missing_lmdb", "does not exist"),
    (lambda p: (p / "dir").mkdir() or p / "dir", "not an LMDB"),
])
def test_cli_bad_paths_are_one_line_errors(tmp_path, make, msg):
    r = run_cli("extract", "lsun", str(make(tmp_path)), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_header_sizes_match_pillow(photos):
    """The header parsers (no decoding) agree with Pillow on every layout we meet."""
    import io

    import cv2
    from PIL import Image

    from pipeline.decode import image_size

    img = photos[2][:257, :333]
    pil = Image.fromarray(img)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the VP8X (extended) WebP layout
    samples = {"webp-lossy": encode(img, "webp", 75), "webp-lossless": encode(img, "webp", 101),
               "jpeg": encode(img, "jpeg", 90), "png": encode(img, "png"),
               "jpeg-progressive": cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[
                   1].tobytes()}
    for fmt, kw in (("WEBP", {"exif": exif.tobytes()}), ("JPEG", {"exif": exif.tobytes()}),
                    ("BMP", {})):
        buf = io.BytesIO()
        pil.save(buf, fmt, **kw)
        samples[f"pil-{fmt}"] = buf.getvalue()
    assert samples["pil-WEBP"][12:16] == b"VP8X"
    for name, data in samples.items():
        assert image_size(data) == (333, 257), name
    assert image_size(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None  # no frame header
    assert image_size(b"RIFF\x00\x00\x00\x00WEBPVP8 ") is None


def _dataset_contents(path: Path) -> tuple:
    d = Dataset(path)
    stats = {k: d.stats[k] for k in ("read", "kept", "dropped")}
    return d.manifest, d.drops(), stats, d.images.copy(), d.array("thumbs").copy()


def _same_dataset(a: Path, b: Path) -> None:
    ca, cb = _dataset_contents(a), _dataset_contents(b)
    assert ca[:3] == cb[:3]
    assert np.array_equal(ca[3], cb[3]) and np.array_equal(ca[4], cb[4])


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_extract_resumes_to_identical_result(lsun_db, tmp_path, monkeypatch,
                                                         workers):
    """Ctrl-C mid-run, in the middle of writing a chunk (the third chunk's first two items and
    the images row of its third written, then KeyboardInterrupt), then a rerun with another
    chunk size: every record exactly once, the same bytes as an uninterrupted run."""
    from pipeline.dataset import DatasetWriter

    src = LsunSource([lsun_db])
    extract(src, tmp_path / "clean", ExtractConfig(workers=1), progress=False)
    calls = []
    real = DatasetWriter.add_many

    def interrupt_on_third(self, keys, arrays, meta=None):
        calls.append(1)
        if len(calls) == 3:
            real(self, keys[:2], {k: a[:2] for k, a in arrays.items()})
            self._parts["images.npy"].extend(arrays["images"][2:3])  # half an item
            raise KeyboardInterrupt
        return real(self, keys, arrays, meta)

    monkeypatch.setattr(DatasetWriter, "add_many", interrupt_on_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        extract(src, out, ExtractConfig(workers=workers, chunk=4), progress=False)
    assert not (out / "COMPLETE").exists()
    progress = json.loads((out / "progress.json").read_text())
    assert progress["position"] % 4 == 0 and 0 < progress["kept"] < 10
    monkeypatch.setattr(DatasetWriter, "add_many", real)
    r = extract(src, out, ExtractConfig(workers=workers, chunk=5), progress=False)
    assert r.read == 30 and r.kept == 25
    _same_dataset(out, tmp_path / "clean")


def test_cli_disk_full_is_one_line_and_resumes(lsun_db, tmp_path):
    """A write that fails (file size limit: EFBIG, as a full disk gives ENOSPC) mid-run is a
    one-line error; the rerun resumes and equals a clean run."""
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "ds"
    args = [sys.executable, str(ROOT / "cli.py"), "extract", "lsun", str(lsun_db), "--out",
            str(out), "--workers", "2", "--quiet"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=limit_file_size)
    assert r.returncode == 1, r.stderr
    assert "File too large" in r.stderr and "Traceback" not in r.stderr
    assert len(_own_lines(r.stderr)) == 1
    assert not (out / "COMPLETE").exists() and (out / "progress.json").exists()
    r = run_cli("extract", "lsun", str(lsun_db), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("extract", "lsun", str(lsun_db), "--out", str(tmp_path / "clean"), "--quiet")
    _same_dataset(out, tmp_path / "clean")


def _own_lines(stderr: str) -> list[str]:
    """stderr without libjpeg's warnings about the corrupt records (printed by the C library)."""
    return [ln for ln in stderr.strip().splitlines()
            if not ln.startswith(("Corrupt JPEG data", "Premature end of JPEG"))]


def _garbage_mdb(p: Path) -> Path:
    (p / "fake_lmdb").mkdir()
    (p / "fake_lmdb" / "data.mdb").write_bytes(b"not an lmdb file" * 500)
    return p / "fake_lmdb"


def _file(p: Path) -> Path:
    (p / "plain.mdb").write_bytes(b"x")
    return p / "plain.mdb"


@pytest.mark.parametrize("make,msg", [
    (_garbage_mdb, "not a readable LMDB"),
    (_file, "not an LMDB"),
    (lambda p: write_lmdb(p / "empty_lmdb", []), "is empty"),
])
def test_cli_bad_databases_are_one_line_errors(tmp_path, make, msg):
    r = run_cli("extract", "lsun", str(make(tmp_path)), "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_unusable_outputs_are_one_line_errors(lsun_db, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for out, msg in ((tmp_path / "file", "is not a folder"),
                     (tmp_path / "file" / "sub", "cannot write"),
                     (tmp_path / "mine", "did not write (notes.txt)")):
        r = run_cli("extract", "lsun", str(lsun_db), "--out", str(out), "--limit", "3")
        assert r.returncode == 2 and msg in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_extract_images_folder(photos, tmp_path):
    """A photo folder: nested files in every format, a corrupt file, a name that is not
    UTF-8 (kept, never mangled into another path), and an empty folder refused."""
    import os

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, fmt in enumerate(("jpeg", "png", "webp")):
        (folder / f"p{i}.{'jpg' if fmt == 'jpeg' else fmt}").write_bytes(
            encode(photos[i], fmt, 90))
    (folder / "sub" / "deep.jpg").write_bytes(encode(photos[3], "jpeg", 90))
    (folder / "broken.jpg").write_bytes(encode(photos[4], "jpeg", 90)[:500])
    (folder / "notes.txt").write_text("not a photo, not an image suffix")
    with open(os.fsencode(folder) + b"/odd\xff.png", "wb") as f:
        f.write(encode(photos[5], "png"))
    out = tmp_path / "ds"
    r = run_cli("extract", "images", str(folder), "--out", str(out), "--resolution", "32")
    assert r.returncode == 0, r.stderr
    assert "kept 5" in r.stdout and "1 corrupt" in r.stdout
    d = Dataset(out)
    assert d.images.shape == (5, 32, 32, 3)
    keys = [m["key"] for m in d.manifest]
    assert "sub/deep.jpg" in keys and len([k for k in keys if k.startswith("odd")]) == 1
    assert [x["key"] for x in d.drops()] == ["broken.jpg"]
    (tmp_path / "none").mkdir()
    r = run_cli("extract", "images", str(tmp_path / "none"), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "no images" in r.stderr and "Traceback" not in r.stderr


def _die_on_second(task: int) -> int:
    """A task function whose worker dies (as if killed for memory) on task 1."""
    import os
    import signal

    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def test_a_dead_worker_is_an_error_not_a_hang():
    from pipeline.runner import run_ordered

    with pytest.raises(UserError, match="worker process died"):
        list(run_ordered(_die_on_second, range(6), {}, 2))


def _where(task: int) -> tuple[int, int, str]:
    import os
    import threading

    return task, os.getpid(), threading.current_thread().name


def test_thread_pools_keep_order_and_large_pools_are_processes():
    import os

    from pipeline.runner import MAX_THREADS, run_ordered

    out = list(run_ordered(_where, range(40), {}, 2, threads=True))
    assert [t for t, _, _ in out] == list(range(40))
    assert {pid for _, pid, _ in out} == {os.getpid()}  # threads of this process
    assert all(name.startswith("decode") for _, _, name in out)
    out = list(run_ordered(_where, range(12), {}, MAX_THREADS + 1, threads=True))
    assert [t for t, _, _ in out] == list(range(12))
    assert os.getpid() not in {pid for _, pid, _ in out}  # worker processes
