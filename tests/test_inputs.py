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

from demo.samples import encode, random_view, write_lmdb
from pipeline.dataset import Dataset

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


# -- 2. strict decoding ----------------------------------------------------------------------
def _jpeg(img: np.ndarray, **params: int) -> bytes:
    """RGB to JPEG with OpenCV's writer options (``IMWRITE_JPEG_*`` names, lower case)."""
    import cv2

    flags = []
    for name, value in params.items():
        flags += [getattr(cv2, f"IMWRITE_JPEG_{name.upper()}"), value]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), flags)
    assert ok
    return buf.tobytes()


JPEG_VARIANTS = {
    "q30": {"quality": 30}, "q75": {"quality": 75}, "q95": {"quality": 95},
    "progressive": {"progressive": 1}, "optimized": {"optimize": 1},
    "restarts": {"rst_interval": 3}, "444": {"sampling_factor": 0x111111},
}


def _pil_jpeg(img: np.ndarray, mode: str = "RGB", orientation: int = 1) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).convert(mode).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _opencv(data: bytes, factor: int = 1) -> np.ndarray:
    """What OpenCV's decoder makes of ``data`` (RGB), at 1/``factor`` scale."""
    import cv2

    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
             4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)[..., ::-1]


def test_good_jpegs_decode_to_opencvs_pixels(photos):
    """No false ``corrupt``, and the same pixels as OpenCV's decoder, on every package
    photo in every JPEG flavour (grey, CMYK, EXIF-turned too), at full and reduced scale."""
    from pipeline.decode import decode

    cases = []
    for i, p in enumerate(photos):
        cases += [(f"{i}-{name}", _jpeg(p, **params)) for name, params in JPEG_VARIANTS.items()]
        cases += [(f"{i}-grey", _pil_jpeg(p, "L")), (f"{i}-cmyk", _pil_jpeg(p, "CMYK"))]
    cases += [(f"turned-{o}", _pil_jpeg(photos[0][:301, :203], orientation=o))
              for o in range(1, 9)]
    for name, data in cases:
        full = decode(data)
        assert np.array_equal(full, _opencv(data)), name
        short = min(full.shape[:2])
        for factor in (2, 4, 8):
            assert np.array_equal(decode(data, min_side=short // factor),
                                  _opencv(data, factor)), (name, factor)


def test_good_webps_are_not_corrupt(photos):
    """Lossy and lossless photos, large flat colours (the longest legitimate zero runs)
    and noise all decode, to OpenCV's pixels."""
    import cv2

    from pipeline.decode import decode

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (600, 500, 3), dtype=np.uint8)
    flat = [np.full((2000, 2000, 3), c, np.uint8) for c in ((128, 128, 128), (255, 0, 0))]
    cases = [(img, q) for img in [*photos, noise, *flat] for q in (1, 75, 95)]
    # lossless (q 101) photos at LSUN's size: full-size ones take seconds to encode
    cases += [(img, 101) for img in [*(random_view(p, rng) for p in photos), noise, *flat]]
    for i, (img, q) in enumerate(cases):
        data = encode(img, "webp", q)
        ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        assert np.array_equal(decode(data), ref), (i, q)


def _zeroed(data: bytes, at: float, n: int) -> bytes:
    out = bytearray(data)
    start = int(len(data) * at)
    out[start:start + n] = bytes(n)
    return bytes(out)


def test_damaged_jpegs_are_corrupt(photos):
    """A cut JPEG with an end marker appended (libjpeg fills the rest with grey and only
    warns): always a ``corrupt`` record, whatever the JPEG flavour. A zeroed 4 KB page:
    nearly always (libjpeg's decoder can fall back in step and never see it: measured 3 in
    621 with ``benchmarks/decode_strict.py --damage``); before, never."""
    from pipeline.decode import DecodeError, decode

    caught, spans = 0, 0
    for i, p in enumerate(photos):
        for name, params in JPEG_VARIANTS.items():
            data = _jpeg(p, **params)
            for min_side in (0, 64):
                with pytest.raises(DecodeError) as e:
                    decode(data[:len(data) // 2] + b"\xff\xd9", min_side=min_side)
                assert e.value.reason == "corrupt", (i, name)
                assert "premature end of data segment" in e.value.detail, (i, name, e.value)
            for at in (0.25, 0.5, 0.75):
                spans += 1
                try:
                    decode(_zeroed(data, at, min(4096, len(data) // 5)))
                except DecodeError as err:
                    assert err.reason == "corrupt" and "JPEG data" in err.detail, err
                    caught += 1
    assert caught >= 0.95 * spans, (caught, spans)


def test_zeroed_webp_spans_are_corrupt(photos):
    from pipeline.decode import DecodeError, decode

    rng = np.random.default_rng(0)
    for i, p in enumerate(photos):
        for q in (75, 101):
            data = encode(random_view(p, rng), "webp", q)
            with pytest.raises(DecodeError, match="damaged WebP data") as e:
                decode(_zeroed(data, 0.5, 4096 if len(data) > 8192 else len(data) // 3))
            assert e.value.reason == "corrupt", (i, q)


def test_cli_drops_damaged_images_as_corrupt(lsun_db, lsun_records, photos, tmp_path):
    """The issue's cases end to end: a WebP record whose second database page was zeroed,
    and a cut JPEG with an end marker in a photo folder."""
    db = _copy_db(lsun_db, tmp_path / "page_lmdb")
    data = (db / "data.mdb").read_bytes()
    webps = {v[:64]: k for k, v in lsun_records if v[:4] == b"RIFF" and len(v) > 3 * 4096}
    head = next(p for p in _pages(db / "data.mdb", 4) if data[p * 4096 + 16:][:64] in webps)
    _zero_page(db / "data.mdb", head + 1)  # the value's second page: its RIFF header is whole
    out = tmp_path / "lsun"
    r = run_cli("extract", "lsun", str(db), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    from pipeline.lsun import key_text

    drops = {d["key"]: d for d in Dataset(out).drops()}
    lost = key_text(webps[data[head * 4096 + 16:][:64]])
    assert drops[lost]["reason"] == "corrupt" and Dataset(out).stats["kept"] == 24
    assert "damaged WebP" in drops[lost].get("detail", ""), drops[lost]

    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg = encode(photos[0], "jpeg", 90)
    (folder / "whole.jpg").write_bytes(jpeg)
    (folder / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2] + b"\xff\xd9")
    r = run_cli("extract", "images", str(folder), "--out", str(tmp_path / "imgs"), "-q")
    assert r.returncode == 0, r.stderr
    (drop,) = Dataset(tmp_path / "imgs").drops()
    assert drop["key"] == "cut.jpg" and drop["reason"] == "corrupt"
    assert "premature end of data segment" in drop.get("detail", ""), drop


# -- 3. photos too wide or tall to warp ------------------------------------------------------
def test_cli_detect_faces_on_extreme_aspect_photos(photos, tmp_path):
    """A 44000 x 64 JPEG (its detection copy at the default 3/4 scale is 33,000 px wide)
    and a 1 x 60000 PNG: OpenCV's warpAffine refuses sides of 32,767 px, and the turned
    passes crashed the run with a traceback, on every rerun. Now they are searched."""
    import cv2

    folder = tmp_path / "photos"
    folder.mkdir()
    strip = cv2.resize(photos[1], (44000, 64), interpolation=cv2.INTER_AREA)
    (folder / "wide.jpg").write_bytes(encode(strip, "jpeg", 90))
    cv2.imwrite(str(folder / "tall.png"), np.full((60000, 1, 3), 128, np.uint8))
    (folder / "astronaut.jpg").write_bytes(encode(photos[0], "jpeg", 90))
    out = tmp_path / "faces"
    for _ in range(2):  # the rerun is a no-op, not a crash
        r = run_cli("detect-faces", str(folder), "--out", str(out), "-q", "-j", "2")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    stats = Dataset(out).stats
    assert stats["read"] == 3 and stats["dropped"].get("corrupt", 0) == 0, stats
    assert {m["source"] for m in Dataset(out).manifest} == {"astronaut.jpg"}


def test_turned_passes_in_windows_find_tilted_faces(photos, monkeypatch):
    """The windowed turned passes (forced here on a small photo by lowering the warp
    limit) find the tilted heads the whole-image passes find."""
    import cv2

    from pipeline import face_detectors as fd

    m = cv2.getRotationMatrix2D((256, 256), 20, 1.0)
    tilted = cv2.warpAffine(photos[0], m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    wide = np.concatenate([tilted[:, ::-1], tilted, tilted[:, ::-1]], axis=1)  # 1536 px
    det = fd.build_detector(fd.DetectorSpec(min_face=40))
    whole = [d.box for d in det.detect(wide)]
    monkeypatch.setattr(fd, "WARP_LIMIT", 800)
    monkeypatch.setattr(fd, "WARP_WINDOW", 500)
    assert len(list(fd.warpable_windows(np.zeros((461, 1382), np.uint8)))) == 5
    windowed = [d.box for d in det.detect(wide)]
    # Every head the whole-image passes find, and the third, at the far end, that a turn
    # of the whole wide image moves out of its frame.
    assert len(whole) == 2 and len(windowed) == 3, (whole, windowed)
    assert all(max(fd.iou(a, b) for b in windowed) >= 0.8 for a in whole), (whole, windowed)


def test_upright_view_from_a_neighbourhood_matches_the_whole_image(monkeypatch):
    """The eye check's view warped from a neighbourhood (images too large to warp) is the
    whole-image view within interpolation rounding, borders mirrored alike."""
    from pipeline import face_detectors as fd

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (300, 400), dtype=np.uint8)
    views = [(float(rng.uniform(10, 150)), float(rng.uniform(-100, 500)),
              float(rng.uniform(-100, 400)), float(rng.choice([15.0, -15.0])))
             for _ in range(300)]
    whole = [fd.upright_view(grey, cx, cy, side, a) for side, cx, cy, a in views]
    monkeypatch.setattr(fd, "WARP_LIMIT", 100)  # every view now from a neighbourhood
    for (side, cx, cy, a), ref in zip(views, whole):
        diff = np.abs(fd.upright_view(grey, cx, cy, side, a).astype(int) - ref)
        assert (diff > 0).mean() < 0.01 and diff.max() <= 16, (side, cx, cy, diff.max())


# -- 4. workers die with their parent --------------------------------------------------------
def _session(sid: int) -> list[int]:
    """Live processes (not zombies) of the session ``sid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory, photos) -> Path:
    """3,000 JPEG files (40 photos, 512 px, each 75 times): seconds of work for a pool."""
    root = tmp_path_factory.mktemp("many") / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    views = [encode(random_view(photos[i % len(photos)], rng, 512), "jpeg", 85)
             for i in range(40)]
    for i in range(3000):
        (root / f"{i:04d}.jpg").write_bytes(views[i % 40])
    return root


@pytest.mark.parametrize("command,options", [
    (["detect-faces"], ["-j", "2"]),
    (["extract", "images"], ["--resolution", "256", "-j", "9"]),  # > 8: processes
])
def test_killed_parent_leaves_no_workers(many_photos, tmp_path, command, options):
    """kill -9 of the parent (the OOM killer's way) while its process pool works: within
    seconds no process of the run is left (before: the fork server and every worker waited
    forever, holding memory and the pipe of ``cmd | grep``), and stdout's reader gets EOF."""
    import select
    import signal
    import time

    args = [*command, str(many_photos), "--out", str(tmp_path / "out"), *options]
    p = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         start_new_session=True)  # its session id is its pid

    def pool() -> list[int]:  # the fork server and the workers it forked
        return [pid for pid in _session(p.pid) if "forkserver" in _cmdline(pid)]

    try:
        deadline = time.time() + 120
        while len(pool()) < 3 and time.time() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert len(pool()) >= 3 and p.poll() is None, _session(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.time() + 5
        while _session(p.pid) and time.time() < deadline:
            time.sleep(0.05)
        assert _session(p.pid) == [], "processes of the killed run are still alive"
        readable, _, _ = select.select([p.stdout], [], [], 1)
        assert readable and os.read(p.stdout.fileno(), 1 << 16) == b""  # EOF, no hang
    finally:
        for pid in _session(p.pid):  # what this test started, if the check failed
            os.kill(pid, signal.SIGKILL)
        p.stdout.close()


# -- 6. odd entries in photo folders ---------------------------------------------------------
@pytest.fixture
def odd_folder(tmp_path, photos) -> Path:
    """Real filesystem objects: photos, linked photos and folders, and every entry that
    cannot be read."""
    root = tmp_path / "photos"
    (root / "real" / "sub").mkdir(parents=True)
    (root / "real" / "a.jpg").write_bytes(encode(photos[0], "jpeg", 90))
    (root / "real" / "sub" / "b.png").write_bytes(encode(photos[1][:200, :200], "png"))
    os.mkfifo(root / "pipe.jpg")  # would block a reader forever
    os.mkfifo(root / "fifo")  # not named like an image: not an item
    (root / "linked.jpg").symlink_to("real/a.jpg")
    (root / "linkdir").symlink_to("real")
    (root / "real" / "sub" / "up").symlink_to("..")  # a loop through a folder link
    (root / "self.jpg").symlink_to("self.jpg")  # a loop of one link
    (root / "gone.jpg").symlink_to("nowhere.jpg")  # dangling
    (root / "drive").symlink_to(tmp_path / "unmounted")  # dangling, maybe a folder
    (root / "notes.txt").symlink_to("nowhere.txt")  # dangling, not an image: not an item
    return root


ODD_ITEMS = {
    "pipe.jpg": "not a regular file (FIFO)", "self.jpg": "symlink loop",
    "gone.jpg": "dangling symlink", "drive": "dangling symlink",
    "real/sub/up/": "symlink loop (a link to a folder holding it)",
    "linkdir/sub/up/": "symlink loop (a link to a folder holding it)",
}


def test_folder_source_lists_unreadable_entries(odd_folder):
    from pipeline.sources import FolderSource

    src = FolderSource(odd_folder)
    read = dict(src.read_range(0, len(src)))
    assert sorted(read) == sorted([*ODD_ITEMS, "real/a.jpg", "real/sub/b.png",
                                   "linked.jpg", "linkdir/a.jpg", "linkdir/sub/b.png"])
    assert {k for k, v in read.items() if v is None} == set(ODD_ITEMS)
    assert {k: src.why_unreadable(k) for k in ODD_ITEMS} == ODD_ITEMS
    assert read["linked.jpg"] == read["real/a.jpg"] == (odd_folder / "real/a.jpg").read_bytes()


def test_file_replaced_by_a_fifo_is_not_opened_for_reading(odd_folder):
    """Between listing and reading a photo becomes a FIFO: unreadable, and no hang."""
    import threading

    from pipeline.sources import FolderSource

    src = FolderSource(odd_folder)
    (odd_folder / "real" / "a.jpg").unlink()
    os.mkfifo(odd_folder / "real" / "a.jpg")
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(src.read_range(0, len(src))), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading blocked on a FIFO"
    assert out["real/a.jpg"] is None and src.why_unreadable("real/a.jpg") == \
        "not a regular file"


def test_cli_counts_unreadable_entries_as_corrupt(odd_folder, tmp_path):
    out = tmp_path / "out"
    r = run_cli("extract", "images", str(odd_folder), "--out", str(out), "-q", timeout=120)
    assert r.returncode == 0, r.stderr
    d = Dataset(out)
    assert sorted(m["key"] for m in d.manifest) == sorted(
        ["real/a.jpg", "real/sub/b.png", "linked.jpg", "linkdir/a.jpg", "linkdir/sub/b.png"])
    assert {x["key"]: x["reason"] for x in d.drops()} == dict.fromkeys(ODD_ITEMS, "corrupt")


def _without_root_read_override() -> None:
    """In the child before exec: drop the capabilities that let root read any folder
    (CAP_DAC_OVERRIDE 1, CAP_DAC_READ_SEARCH 2) from the bounding set."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


def test_cli_counts_an_unreadable_folder_as_corrupt(photos, tmp_path):
    """chmod 000 does not stop root, so as root the run drops root's read-anything
    capabilities (skipped where that is not allowed)."""
    root = tmp_path / "photos"
    (root / "private").mkdir(parents=True)
    (root / "a.jpg").write_bytes(encode(photos[0], "jpeg", 90))
    (root / "private" / "b.jpg").write_bytes(encode(photos[1], "jpeg", 90))
    (root / "private").chmod(0)
    preexec = None
    if os.geteuid() == 0:
        probe = subprocess.run(["true"], preexec_fn=_without_root_read_override,
                               capture_output=True)
        if probe.returncode != 0:
            pytest.skip("root here cannot drop CAP_DAC_OVERRIDE (chmod 000 cannot stop it)")
        preexec = _without_root_read_override
    try:
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "extract", "images",
                            str(root), "--out", str(tmp_path / "out"), "-q"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, preexec_fn=preexec)
    finally:
        (root / "private").chmod(0o755)
    assert r.returncode == 0, r.stderr
    d = Dataset(tmp_path / "out")
    assert [m["key"] for m in d.manifest] == ["a.jpg"]
    assert [(x["key"], x["reason"]) for x in d.drops()] == [("private/", "corrupt")]


# -- 7. a dedup model with NaN or infinite weights -------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_autoencoder_with_non_finite_weights_is_refused(data32, tmp_path, value):
    import torch

    from pipeline.dedup.autoencoder import Autoencoder, load_autoencoder, save_autoencoder
    from pipeline.errors import UserError

    good = save_autoencoder(Autoencoder(128), tmp_path / "good.pt")
    assert load_autoencoder(good).code_bits == 128
    state = torch.load(good, weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][name].view(-1)[7] = value
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(UserError, match="NaN or infinite"):
        load_autoencoder(bad)
    r = run_cli("dedup", str(data32), "--out", str(tmp_path / "out"), "--model", str(bad),
                "-q")
    assert_one_line_error(r, "NaN or infinite", name)
