"""Histograms of a dataset's measures, with the limits a filter applied."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Histogram:
    measure: str
    description: str
    edges: np.ndarray
    kept: np.ndarray  # counts per bin
    dropped: np.ndarray  # counts per bin of items dropped for this measure
    limits: list[tuple[float, str]]  # (value, label) lines


def histograms(ds: Any, own: dict[str, list[dict]], thresholds: dict[str, Any],
               bins: int = 40) -> list[Histogram]:
    """Each measure of the kept items, with the deciding values of the items dropped for it
    and the limits applied."""
    from pipeline.quality import MEASURES

    names = ds.stats["columns"]["measures"]
    table = np.asarray(ds.array("measures"), np.float64)
    cols = {n: table[:, j] for j, n in enumerate(names)}
    if "width" in cols and "height" in cols:
        cols["short_side"] = np.minimum(cols["width"], cols["height"])
    dropped: dict[str, list[float]] = defaultdict(list)
    for rows in own.values():
        for r in rows:
            if isinstance(r.get("value"), (int, float)) and r.get("measure"):
                dropped[r["measure"]].append(float(r["value"]))
    limits: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for issue, t in thresholds.items():
        sign = "<" if t.get("direction") == "below" else ">"
        limits[t.get("measure")].append((float(t["limit"]), f"{issue} {sign} {t['limit']:.3g}"))
    # The measures that decide first (in the order of the issues), then the others.
    deciding = [t.get("measure") for t in thresholds.values()]
    order = [n for n in dict.fromkeys(deciding) if n in cols]
    order += [n for n in names if n not in order]
    out = []
    for name in order:
        kept = cols[name]
        kept = kept[np.isfinite(kept)]
        drop = np.array(dropped.get(name, []))
        lines = limits.get(name, [])
        allv = np.concatenate([kept, drop, [v for v, _ in lines]])
        if not len(allv):
            continue
        lo, hi = float(allv.min()), float(allv.max())
        if hi <= lo:
            hi = lo + 1
        edges = np.linspace(lo, hi, bins + 1)
        out.append(Histogram(name, MEASURES.get(name, "min(width, height), pixels"
                                                if name == "short_side" else ""),
                             edges, np.histogram(kept, edges)[0], np.histogram(drop, edges)[0],
                             lines))
    return out
