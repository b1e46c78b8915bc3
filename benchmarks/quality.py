"""Planted-issue benchmark for the quality rules: ours vs naive fixed thresholds vs cleanvision.

Clean images are random views of real photos that ship with packages (scikit-image,
scikit-learn, Debian's opencv-doc where installed), including naturally dark, bright, soft and
low-saturation ones; each planted image is another view made dark, bright, blurry, flat
(low-information), grey, small or strip-shaped; plus a few corrupt files
(``pipeline/planted.py``). The photos are split in two halves: the rules were chosen on
``--half 0``; the default report is ``--half 1``, photos never looked at while tuning.

Scores the drop reason each method gives (its first issue, in ``quality.ISSUES`` order):
per-issue precision and recall, and the share of clean images dropped. Run:
    python benchmarks/quality.py [--half 1] [--seed 1] [--no-cleanvision]
cleanvision is a benchmark-only dependency (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.planted import ISSUE_KINDS, Item, make_set, make_tiles  # noqa: E402
from pipeline.decode import DecodeError, prepare_measured  # noqa: E402
from pipeline.quality import (  # noqa: E402
    ISSUES,
    MEASURES,
    WORK_SIDE,
    QualityConfig,
    drop_reason,
    flag_issues,
    laplacian_variance,
    measure_batch,
    to_columns,
    working_copy,
)

# Textbook fixed limits: mean luma for exposure, variance of the Laplacian < 100 for blur
# (the usual OpenCV recipe), histogram entropy for information, Hasler-Suesstrunk
# colourfulness for grey.
NAIVE = {"dark": ("lum_mean", "<", 0.2), "bright": ("lum_mean", ">", 0.8),
         "blurry": ("lap_var", "<", 100.0), "low_information": ("entropy", "<", 4.0),
         "grayscale": ("hasler", "<", 0.02)}
CLEANVISION = {"dark": "dark", "light": "bright", "blurry": "blurry",
               "low_information": "low_information", "grayscale": "grayscale",
               "odd_aspect_ratio": "odd_aspect", "odd_size": "small"}


def measure_items(items: list[Item]) -> tuple[list[dict | None], float]:
    """Decode and measure each item as extraction does (the centre crop at the working scale,
    the source's size from its header; None for corrupt ones); seconds spent measuring."""
    decoded = []
    for it in items:
        try:
            decoded.append(prepare_measured(it.data, 64, WORK_SIDE))
        except DecodeError:
            decoded.append(None)
    ok = [d for d in decoded if d is not None]
    t = time.perf_counter()
    table = iter(measure_batch([d[2] for d in ok], [d[3] for d in ok], bgr=True))
    spent = time.perf_counter() - t
    rows = []
    for d in decoded:
        if d is None:
            rows.append(None)
            continue
        row = dict(zip(MEASURES, map(float, next(table))))
        row["lap_var"] = laplacian_variance(d[2], bgr=True)  # for the naive baseline
        row["hasler"] = hasler_colourfulness(d[2])
        rows.append(row)
    return rows, spent


def hasler_colourfulness(img: np.ndarray) -> float:
    """Hasler & Suesstrunk 2003 colourfulness / 255 of a BGR image at the working scale."""
    b, g, r = (c.astype(np.float64) for c in np.moveaxis(working_copy(img), -1, 0))
    rg, yb = r - g, (r + g) / 2 - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())) / 255


def ours(rows: list[dict | None], config: QualityConfig) -> list[str | None]:
    good = [r for r in rows if r is not None]
    flags = iter(flag_issues(to_columns(good), config))
    out = []
    for r in rows:
        if r is None:
            out.append("corrupt")
            continue
        f = drop_reason(next(flags), config)
        out.append(f.issue if f else None)
    return out


def naive(rows: list[dict | None], config: QualityConfig) -> list[str | None]:
    out = []
    for r in rows:
        if r is None:
            out.append("corrupt")
            continue
        hit = {"small": min(r["width"], r["height"]) < config.resolution,
               "odd_aspect": r["aspect"] > config.max_aspect}
        for issue, (name, op, t) in NAIVE.items():
            hit[issue] = r[name] < t if op == "<" else r[name] > t
        out.append(next((i for i in ISSUES if hit[i]), None))
    return out


def cleanvision(items: list[Item], rows: list[dict | None]) -> list[str | None] | None:
    """cleanvision's default checks on the readable files (it crashes on corrupt ones)."""
    try:
        from cleanvision import Imagelab
    except ImportError:
        return None
    import contextlib
    import io

    from pipeline.decode import sniff

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (it, r) in enumerate(zip(items, rows)):
            if r is not None:
                p = Path(tmp) / f"{i:05d}.{ {'jpeg': 'jpg'}.get(sniff(it.data), sniff(it.data))}"
                p.write_bytes(it.data)
                paths[str(p)] = i
        lab = Imagelab(data_path=tmp)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            lab.find_issues({k: {} for k in CLEANVISION})
        table = lab.issues
    out: list[str | None] = ["corrupt" if r is None else None for r in rows]
    for path, row in table.iterrows():
        found = {CLEANVISION[k] for k in CLEANVISION if row.get(f"is_{k}_issue", False)}
        out[paths[str(path)]] = next((i for i in ISSUES if i in found), None)
    return out


def score(truth: list[str], pred: list[str | None]) -> dict:
    """Per issue (precision, recall) of the drop reasons; the share of clean images dropped."""
    res = {}
    for issue in ISSUE_KINDS:
        tp = sum(t == issue and p == issue for t, p in zip(truth, pred))
        flagged = sum(p == issue for p in pred)
        actual = sum(t == issue for t in truth)
        res[issue] = (tp / flagged if flagged else float("nan"), tp / actual if actual else 0.0)
    clean = [p for t, p in zip(truth, pred) if t == "clean"]
    res["clean_dropped"] = sum(p is not None for p in clean) / max(1, len(clean))
    res["corrupt"] = sum(t == "corrupt" and p == "corrupt" for t, p in zip(truth, pred))
    return res


def misses(items: list[Item], pred: list[str | None]) -> dict[str, Counter]:
    """What each planted kind (by how it was made) got, for the report's breakdown."""
    out: dict[str, Counter] = defaultdict(Counter)
    for it, p in zip(items, pred):
        if it.truth not in ("clean", "corrupt"):
            kind = "".join(c for c in it.detail.split()[0] if c.isalpha() or c in "+-")
            out[f"{it.truth}/{kind}"][p or "kept"] += 1
        elif it.truth == "clean" and p is not None:
            out[f"clean/{it.photo}"][p] += 1
    return out


def tiles_report(half: int, config: QualityConfig) -> None:
    """The demo's kind of scene, judged as its own collection: every tile is clean, so all
    that drops is a false positive (per photo and reason)."""
    items = make_tiles(half)
    rows, _ = measure_items(items)
    pred = ours(rows, config)
    by = Counter((it.photo, p) for it, p in zip(items, pred) if p is not None)
    dropped = sum(by.values())
    print(f"\ntiles of half {half} (the demo's scenes, all clean): {dropped} of {len(items)} "
          f"dropped ({dropped / len(items):.1%})" + (": " if by else "") +
          ", ".join(f"{photo} {reason} {n}" for (photo, reason), n in sorted(by.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", type=int, default=1, help="0: tuning photos, 1: held-out photos")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clean", type=int, default=400)
    ap.add_argument("--per-issue", type=int, default=60)
    ap.add_argument("--no-cleanvision", action="store_true")
    ap.add_argument("--details", action="store_true", help="break results down by kind")
    ap.add_argument("--no-tiles", action="store_true",
                    help="leave out the demo-style tiles (a second clean collection)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    items = make_set(args.half, args.seed, args.clean, args.per_issue)
    truth = [it.truth for it in items]
    rows, spent = measure_items(items)
    n_ok = sum(r is not None for r in rows)
    photos = sorted({it.photo for it in items})
    print(f"half {args.half} (seed {args.seed}): {len(items)} images from {len(photos)} photos "
          f"({Counter(truth)['clean']} clean, {args.per_issue} per issue, "
          f"{Counter(truth)['corrupt']} corrupt); measuring took {spent / n_ok * 1e3:.2f} ms "
          f"per image; built in {time.perf_counter() - t0:.0f} s")
    config = QualityConfig()
    methods = {"ours": ours(rows, config), "naive": naive(rows, config)}
    if not args.no_cleanvision:
        t = time.perf_counter()
        cv = cleanvision(items, rows)
        if cv is None:
            print("cleanvision not installed (pip install cleanvision): left out")
        else:
            methods["cleanvision"] = cv
            print(f"cleanvision: {time.perf_counter() - t:.0f} s")
    scores = {k: score(truth, v) for k, v in methods.items()}
    print(f"\n{'issue':16s}" + "".join(f"{k:>20s}" for k in methods))
    print(f"{'':16s}" + "".join(f"{'precision  recall':>20s}" for _ in methods))
    for issue in ISSUE_KINDS:
        cells = []
        for k in methods:
            p, r = scores[k][issue]
            cells.append(f"{'-' if np.isnan(p) else f'{p:.2f}':>11s} {r:8.2f}")
        print(f"{issue:16s}" + "".join(f"{c:>20s}" for c in cells))
    print(f"{'clean dropped':16s}" + "".join(f"{scores[k]['clean_dropped']:>19.1%} "
                                           for k in methods))
    print(f"{'corrupt caught':16s}" + "".join(
        f"{scores[k]['corrupt']:>16d}/{Counter(truth)['corrupt']:<2d} " for k in methods))
    if not args.no_tiles:
        tiles_report(args.half, config)
    if args.details:
        for k, pred in methods.items():
            print(f"\n{k}: what each kind got")
            for kind, c in sorted(misses(items, pred).items()):
                print(f"  {kind:32s} " + ", ".join(f"{r} {n}" for r, n in c.most_common()))


if __name__ == "__main__":
    main()
