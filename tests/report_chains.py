"""Real dataset chains for the report's tests and benchmark: planted-issue photos in an LSUN
database with near-duplicates and corrupt records, through the real extraction and dedup, then
a filter output written to the filter stage's contract with the real quality measures; and
headless Chromium to open the page in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from demo.planted import make_set
from demo.samples import encode, lsun_key, write_lmdb
from pipeline.dataset import Dataset, DatasetWriter
from pipeline.decode import DecodeError, decode
from pipeline.quality import ISSUES, MEASURES, QualityConfig, drop_reason, flag_issues, thresholds


def planted_lsun(path: Path, seed: int = 3) -> tuple[Path, dict[str, bytes]]:
    """~76 records: clean and planted-issue photos, 8 re-encoded near-duplicates of clean
    ones, 2 corrupt; returns the database and its records by key."""
    rng = np.random.default_rng(seed)
    items = make_set(0, seed=seed, n_clean=40, n_issue=4, n_corrupt=2)
    records = [(lsun_key(rng), it.data) for it in items]
    clean = [d for it, (_, d) in zip(items, records) if it.truth == "clean"]
    for data in clean[:8]:
        img = decode(data)
        records.append((lsun_key(rng), encode(img, "jpeg", 60)))
    write_lmdb(path, records)
    return path, {k.decode(): v for k, v in records}


def write_filter(src: Path, out: Path, records: dict[str, bytes], flag_only: bool = False,
                 config: QualityConfig = QualityConfig()) -> Dataset:
    """What the filter stage writes (its contract): kept rows with the measures table,
    ``rejected`` rows with measure, value and threshold, carried drops, thresholds, flags."""
    ds = Dataset(src)
    keys = ds.keys
    rows = [_measure(records[k]) for k in keys]
    names = list(MEASURES)
    cols = {n: np.array([r[n] for r in rows]) for n in names}
    flags = flag_issues(cols, config)
    limits = thresholds(cols, config)
    limits.update({"small": float(config.resolution), "odd_aspect": config.max_aspect,
                   "grayscale": config.gray_chroma})
    measure_of = {"small": "short_side", "odd_aspect": "aspect", "grayscale": "chroma_p99",
                  "dark": "lum_p99", "bright": "clip_share", "low_information": "detail",
                  "blurry": "blur"}
    below = {"small", "grayscale", "dark", "low_information"}
    arrays = {n: (ds.array(n).shape[1:], ds.array(n).dtype.name) for n in ds.array_names}
    arrays["measures"] = ((len(names),), "float32")
    flagged: dict[str, int] = {}
    with DatasetWriter(out, "filter", {"flag_only": flag_only}, arrays,
                       lineage=[ds.identity()], inputs=[src],
                       columns={"measures": names}) as w:
        for file in ds.drop_files:
            for r in ds.drops(file):
                rest = {k: v for k, v in r.items() if k not in ("key", "reason")}
                w.drop(r["key"], r["reason"], file=file, carried=True, **rest)
        for i, k in enumerate(keys):
            reason = None if flag_only else drop_reason(flags[i], config)
            table = np.array([[rows[i][n] for n in names]], np.float32)
            if reason is None:
                meta = {kk: v for kk, v in ds.manifest[i].items() if kk not in ("id", "key")}
                if flag_only and flags[i]:
                    meta["flags"] = [f._asdict() for f in flags[i]]
                    for f in flags[i]:
                        flagged[f.issue] = flagged.get(f.issue, 0) + 1
                pixels = {n: np.array(ds.array(n)[i:i + 1]) for n in ds.array_names}
                w.add_many([k], {**pixels, "measures": table}, [{**meta, "source_id": i}])
            else:
                w.drop(k, reason.issue, measure=reason.measure, value=reason.value,
                       threshold=reason.threshold)
            w.advance()
        w.finish(thresholds={i: {"measure": measure_of[i], "limit": limits[i],
                                 "direction": "below" if i in below else "above"}
                             for i in ISSUES},
                 flag_only=flag_only, flagged=flagged)
    return Dataset(out)


def _measure(data: bytes) -> dict[str, float]:
    from pipeline.quality import measure

    try:
        return measure(decode(data))
    except DecodeError:
        raise AssertionError("a kept record must decode") from None


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def start_chromium() -> Any:
    """Headless Debian Chromium under Selenium, keeping the browser's console log; raises
    ``RuntimeError`` saying what is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(f"no browser: {', '.join(missing)} missing (apt-get install "
                           "chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise RuntimeError("selenium is not installed (pip install -e '.[report-tests]')") \
            from None
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def open_page(driver: Any, page: Path) -> float:
    """Load ``page`` from disk; the milliseconds from navigation to its load event (every
    image loaded)."""
    driver.get(page.resolve().as_uri())
    return float(driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].loadEventEnd"))


def load_all_images(driver: Any) -> list[str]:
    """Scroll through the page so every lazily loaded picture loads; the sources of those
    that did not (not complete, or no width)."""
    driver.set_script_timeout(60)
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (async () => {
          for (let y = 0; y < document.body.scrollHeight; y += 600) {
            window.scrollTo(0, y);
            await new Promise(r => setTimeout(r, 20));
          }
          await Promise.all(Array.from(document.images).map(i => i.complete ? 0 :
            new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); })));
          window.scrollTo(0, 0);
          done(Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))
            .map(i => i.src));
        })();""")
