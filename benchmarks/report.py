"""How long ``report`` takes to write, and its page to open in Chromium, as a chain grows.

Builds synthetic chains written with the dataset writer (extract -> dedup -> filter, the
filter with a measures table, thresholds and rejected rows; pixels are real photo crops,
repeated), at each ``--sizes`` item count, writes the report of each and times it against a
baseline in the same process: parsing every manifest and drop list of the chain
(``Dataset.manifest``, ``Dataset.drops``), the least a report that reads its data must do.
Each page is then opened in headless Chromium (when installed) beside a blank page. A
linear fit over the sizes projects the time to 3M items. ``--demo`` also builds the demo's
dataset chain (its LSUN database, ``dedup lsun``, ``detect-faces``; no training) and times
its report's page. Run:
    python benchmarks/report.py [--sizes 20000,100000] [--demo] [--out /tmp/report-bench]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pipeline.dataset import Dataset, DatasetWriter  # noqa: E402
from pipeline.quality import ISSUES, MEASURES  # noqa: E402
from pipeline.report import ReportConfig, write_report  # noqa: E402

RES = 32  # stored side of the synthetic datasets (the report reads only sampled rows)
BLOCK = 4096


def _pool(res: int, n: int = 512) -> np.ndarray:
    from demo.samples import package_photos, random_view
    from pipeline.decode import center_crop, resize

    rng = np.random.default_rng(0)
    photos = [p for _, p in package_photos()]
    return np.stack([resize(center_crop(random_view(photos[i % len(photos)], rng, 96)), res)
                     for i in range(n)])


def build_chain(root: Path, n: int, pool: np.ndarray) -> Path:
    """extract (n records, 0.1% corrupt) -> dedup (5% duplicates) -> filter (10% dropped,
    measures table); returns the filter's directory."""
    rng = np.random.default_rng(n)
    keys = [f"{i:08x}{rng.integers(1 << 62):016x}" for i in range(n)]
    corrupt = set(rng.choice(n, max(1, n // 1000), replace=False).tolist())
    res = pool.shape[1]
    arrays = {"images": (res, res, 3), "thumbs": (res, res, 3)}
    lineage = [{"kind": "lsun", "databases": [str(root / "gone_lmdb")], "count": n}]
    with DatasetWriter(root / "extract", "extract", {"n": n}, arrays, lineage=lineage) as w:
        for s in range(0, n, BLOCK):
            idx = [i for i in range(s, min(n, s + BLOCK)) if i not in corrupt]
            px = pool[np.array(idx) % len(pool)]
            w.add_many([keys[i] for i in idx], {"images": px, "thumbs": px})
            for i in range(s, min(n, s + BLOCK)):
                if i in corrupt:
                    w.drop(keys[i], "corrupt", detail="truncated WebP")
            w.advance(min(n, s + BLOCK) - s)
        w.finish()
    ext = Dataset(root / "extract")
    m = len(ext)
    ext_keys = ext.keys
    dup_of = np.full(m, -1)
    dups = rng.choice(np.arange(1, m), m // 20, replace=False)
    dup_of[dups] = rng.integers(0, dups)  # an earlier item, kept unless itself removed
    dup_of[dup_of >= 0] = np.where(dup_of[dup_of[dup_of >= 0]] >= 0, -1, dup_of[dup_of >= 0])
    src = {k: ext.array(k) for k in ext.array_names}
    with DatasetWriter(root / "dedup", "dedup", {"n": n}, arrays,
                       lineage=[ext.identity()]) as w:
        for r in ext.drops("rejected"):
            w.drop(r["key"], r["reason"], carried=True, detail=r.get("detail"))
        for s in range(0, m, BLOCK):
            block = np.arange(s, min(m, s + BLOCK))
            kept = block[dup_of[block] < 0]
            w.copy_many([ext_keys[i] for i in kept], src, kept,
                        [{"source_id": int(i)} for i in kept])
            for i in block[dup_of[block] >= 0]:
                w.drop(ext_keys[i], "duplicate", file="duplicates",
                       duplicate_of=ext_keys[dup_of[i]], distance=int(rng.integers(0, 12)),
                       similarity=round(float(rng.uniform(0.9, 1)), 4))
            w.advance(len(block))
        w.finish()
    dd = Dataset(root / "dedup")
    k = len(dd)
    names = list(MEASURES)
    table = rng.uniform(0.05, 0.9, (k, len(names))).astype(np.float32)
    table[:, :2] = rng.integers(64, 1024, (k, 2))
    table[:, 2] = table[:, :2].max(1) / table[:, :2].min(1)
    reasons = np.where(rng.random(k) < 0.1, rng.integers(0, len(ISSUES), k), -1)
    dd_keys = dd.keys
    src = {a: dd.array(a) for a in dd.array_names}
    arrays2 = {**arrays, "measures": ((len(names),), "float32")}
    limit = {i: (0.2, "above") for i in ISSUES}
    with DatasetWriter(root / "filter", "filter", {"n": n}, arrays2, lineage=[dd.identity()],
                       columns={"measures": names}) as w:
        for file in dd.drop_files:
            for r in dd.drops(file):
                w.drop(r["key"], r["reason"], file=file, carried=True,
                       **{a: b for a, b in r.items() if a not in ("key", "reason")})
        for s in range(0, k, BLOCK):
            block = np.arange(s, min(k, s + BLOCK))
            kept = block[reasons[block] < 0]
            w.add_many([dd_keys[i] for i in kept], {"images": src["images"][kept],
                                                     "thumbs": src["thumbs"][kept],
                                                     "measures": table[kept]},
                       [{"source_id": int(i)} for i in kept])
            for i in block[reasons[block] >= 0]:
                issue = ISSUES[reasons[i]]
                w.drop(dd_keys[i], issue, measure="blur", value=float(table[i, -1]),
                       threshold=0.2)
            w.advance(len(block))
        w.finish(thresholds={i: {"measure": "blur", "limit": v, "direction": d}
                             for i, (v, d) in limit.items()}, flag_only=False, flagged={})
    return root / "filter"


def baseline(paths: list[Path]) -> None:
    for p in paths:
        ds = Dataset(p)
        _ = ds.manifest
        for f in ds.drop_files:
            ds.drops(f)


def demo_chain(root: Path) -> list[Path]:
    """The demo's datasets (scenes: dedup lsun of its database; faces), without training."""
    from demo.run import DemoConfig, build_face_folder, build_scene_db
    from pipeline.dedup.stage import DedupConfig, dedup_lsun
    from pipeline.extract import ExtractConfig
    from pipeline.faces import FacesConfig, detect_faces
    from pipeline.lsun import LsunSource
    from pipeline.sources import FolderSource

    config = DemoConfig()
    db = root / "lsun" / "demo_train_lmdb"
    if not (db / "data.mdb").exists():
        build_scene_db(db, config)
    dedup_lsun(LsunSource([db]), root / "scenes", DedupConfig(seed=config.seed),
               ExtractConfig(resolution=config.resolution), progress=False)
    build_face_folder(root / "photos")
    detect_faces(FolderSource(root / "photos"), root / "faces", FacesConfig(min_size=40),
                 progress=False)
    return [root / "scenes", root / "faces"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--out", type=Path, default=Path("/tmp/report-bench"))
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--max-per-gallery", type=int, default=48)
    ap.add_argument("--resolution", type=int, default=RES, help="stored side of the synthetic "
                    "chains' pictures (8 keeps a million-item chain to ~1 GB)")
    args = ap.parse_args()
    from report_chains import open_page, start_chromium

    try:
        driver = start_chromium()
    except RuntimeError as e:
        print(f"page load not measured: {e}")
        driver = None
    blank = args.out / "blank.html"
    args.out.mkdir(parents=True, exist_ok=True)
    blank.write_text("<!doctype html><title>blank</title><link rel=icon href='data:,'>")
    if driver:
        open_page(driver, blank)
    pool = _pool(args.resolution)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        root = args.out / f"chain{n}-{args.resolution}"
        if not (root / "filter" / "COMPLETE").exists():
            shutil.rmtree(root, ignore_errors=True)
            t = time.perf_counter()
            build_chain(root, n, pool)
            print(f"built the {n:,}-item chain in {time.perf_counter() - t:.1f}s")
        chain = [root / "extract", root / "dedup", root / "filter"]
        t = time.perf_counter()
        baseline(chain)
        base = time.perf_counter() - t
        t = time.perf_counter()
        r = write_report([root / "filter"], args.out / f"report{n}.html",
                         ReportConfig(args.max_per_gallery))
        took = time.perf_counter() - t
        load = open_page(driver, r.path) if driver else float("nan")
        blank_ms = open_page(driver, blank) if driver else float("nan")
        size = r.path.stat().st_size + sum(p.stat().st_size for p in r.folder.rglob("*")
                                           if p.is_file())
        rows.append((n, took, base))
        print(f"{n:>9,} items: report {took:.2f}s ({r.seconds}), baseline parse {base:.2f}s, "
              f"ratio {took / base:.2f}; {r.pictures} pictures, {size / 1e6:.1f} MB; page "
              f"load {load:.0f} ms (blank page {blank_ms:.0f} ms)")
    if len(rows) >= 2:
        ns, ts, bs = (np.array(c, float) for c in zip(*rows))
        fit, bfit = np.polyfit(ns, ts, 1), np.polyfit(ns, bs, 1)
        print(f"projected to 3,000,000 items: report {np.polyval(fit, 3e6):.0f}s "
              f"({fit[0] * 1e6:.1f} s per million + {fit[1]:.1f}s), baseline parse "
              f"{np.polyval(bfit, 3e6):.0f}s")
    if args.demo:
        t = time.perf_counter()
        dirs = demo_chain(args.out / "demo")
        print(f"built the demo's chain in {time.perf_counter() - t:.1f}s")
        r = write_report(dirs, args.out / "demo-report.html", ReportConfig(args.max_per_gallery))
        if driver:
            loads = [open_page(driver, r.path) for _ in range(5)]
            print(f"demo chain: report {sum(r.seconds.values()):.2f}s, {r.pictures} pictures; "
                  f"page load {min(loads):.0f} ms best / {np.median(loads):.0f} ms median of 5 "
                  f"(target < 2000 ms; blank page {open_page(driver, blank):.0f} ms)")
    if driver:
        driver.quit()


if __name__ == "__main__":
    main()
