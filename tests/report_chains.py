"""Real dataset chains for the report's tests: planted-issue photos in an LSUN database with
near-duplicates and corrupt records, through the real extraction and dedup, then a filter
output written to the filter stage's contract with the real quality measures; and a face
dataset from the real face stage."""

from __future__ import annotations

from pathlib import Path

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
