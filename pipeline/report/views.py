"""What the report shows of one stage: its counts, and each decision with its evidence."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.report.chain import Stage
from pipeline.report.faces import face_drops, photo_cards
from pipeline.report.histograms import Histogram, histograms
from pipeline.report.items import (
    GROUP_MEMBERS,
    Anchors,
    Gallery,
    Group,
    Tile,
    record,
    sample,
    short,
)
from pipeline.report.pixels import DatasetOrigin, Origin, Pictures

UNREADABLE = ("corrupt", "too_large")  # drops of items that never had pixels


@dataclass
class StageView:
    stage: Stage
    galleries: list[Gallery]
    histograms: list[Histogram]
    thresholds: dict[str, dict[str, Any]]
    lookup: list[list[Any]]  # [key, node index, reason, evidence, anchor]


def gather(stage: Stage, pics: Pictures, limit: int, drops_of: Any) -> StageView:
    """The view of one stage. ``drops_of(ds)``: a dataset's drop lists by file (cached by
    the caller: a stage's input is read for its own section too)."""
    ds, stats = stage.ds, stage.ds.stats
    origin = stage.origin()
    anchor = Anchors(f"n{stage.index}")
    thresholds = stats.get("thresholds") or {}
    carried = {(r.get("key"), r.get("reason")) for inp in stage.inputs if isinstance(inp, Stage)
               for rows in drops_of(inp.ds).values() for r in rows}
    own: dict[str, list[dict]] = defaultdict(list)
    for rows in drops_of(ds).values():
        for r in rows:
            if (r.get("key"), r.get("reason")) not in carried:
                own[str(r.get("reason"))].append(r)
    config = ds.config.get("config") or {}
    galleries, lookup = [], []
    faces = {r: rows for r, rows in own.items() if rows and "box" in rows[0]}
    for reason, rows in sorted(own.items(), key=lambda kv: -len(kv[1])):
        if rows and "duplicate_of" in rows[0]:
            g = _duplicates(reason, rows, origin, pics, limit, anchor)
        elif reason in faces:
            g = face_drops(reason, rows, origin, pics, limit, anchor, config)
        else:
            g = _drops(reason, rows, origin, pics, limit, anchor, thresholds)
        galleries.append(g)
        shown = {t.key: t.anchor for t in g.tiles}
        shown.update({t.key: t.anchor for grp in g.groups for t in grp.tiles})
        lookup += [[r.get("key"), stage.index, reason, evidence(r, thresholds, config),
                    shown.get(r.get("key"), "")] for r in rows]
    flagged = ds.having("flags") if stats.get("flag_only") or stats.get("flagged") else {}
    for g, rows in _flagged(flagged, ds, pics, limit, anchor, thresholds):
        galleries.append(g)
        shown = {t.key: t.anchor for t in g.tiles}
        lookup += [[r["key"], stage.index, f"flagged {f['issue']}",
                    evidence({**f, "reason": f["issue"]}, thresholds), shown.get(r["key"], "")]
                   for r, f in rows]
    if faces or (len(ds) and "box" in ds.records([0])[0]):
        galleries.append(photo_cards(stage, own, pics, limit, anchor, config))
    if stage.target and len(ds):
        galleries.append(_kept(ds, pics, limit, anchor))
    hists = []
    if ds.has_table("measures") and (thresholds or stage.target):
        hists = histograms(ds, own, thresholds)
    return StageView(stage, galleries, hists, thresholds, lookup)


def evidence(row: dict[str, Any], thresholds: dict[str, Any],
             config: dict[str, Any] | None = None) -> str:
    """Why an item was dropped or flagged, in one line."""
    config = config or {}
    reason = row.get("reason")
    if "duplicate_of" in row:
        return (f"duplicate of {row['duplicate_of']} (distance {row.get('distance')}, "
                f"similarity {short(row.get('similarity'))})")
    if "measure" in row and "value" in row:
        op = _op(row, thresholds)
        return f"{row['measure']} {short(row['value'])} {op} {short(row.get('threshold'))}"
    if "box" in row:
        side = min(row["box"][2:])
        if reason == "too_small":
            return f"box {side} px < {config.get('min_size', '?')} (photo {row.get('source')})"
        return (f"score {short(row.get('score'))}, box {side} px (photo "
                f"{row.get('source')})")
    return str(row.get("detail") or reason)


def _op(row: dict[str, Any], thresholds: dict[str, Any]) -> str:
    direction = (thresholds.get(row.get("reason") or row.get("issue")) or {}).get("direction")
    if direction is None:
        direction = "below" if row["value"] < (row.get("threshold") or 0) else "above"
    return "<" if direction == "below" else ">"


def _drops(reason: str, rows: list[dict], origin: Origin, pics: Pictures, limit: int,
           anchor: Anchors, thresholds: dict[str, Any]) -> Gallery:
    """A gallery of one drop reason, sorted by its deciding measure when it has one."""
    measured = [r for r in rows if isinstance(r.get("value"), (int, float))]
    values = np.array([r["value"] for r in rows], np.float64) \
        if len(measured) == len(rows) and rows else None
    g = Gallery(f"drop-{reason}", reason, len(rows),
                sort=rows[0].get("measure") if values is not None else None)
    for i in sample(len(rows), limit, values):
        r = rows[i]
        t = Tile(str(r.get("key")), evidence(r, thresholds), title=record(r), kind="removed",
                 value=None if values is None else float(values[i]), anchor=anchor())
        if reason in UNREADABLE:
            t.note = f"{reason}: {r.get('detail') or 'no pixels'}"
        else:
            t.pic = pics.add(origin, t.key)
        g.tiles.append(t)
    return g


def _duplicates(reason: str, rows: list[dict], origin: Origin, pics: Pictures, limit: int,
                anchor: Anchors) -> Gallery:
    """Duplicate groups: each kept item beside the items removed as its duplicates."""
    members: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        members[str(r["duplicate_of"])].append(r)
    kept = list(members)
    sims = np.array([min(float(r.get("similarity", 0)) for r in members[k]) for k in kept])
    g = Gallery(f"drop-{reason}", f"{reason} groups", len(rows), sort="similarity",
                note=f"{len(rows)} removed in {len(kept)} groups; each group: the kept item "
                "first, then the removed ones with their code distance (bits) and pixel "
                "similarity")
    for i in sample(len(kept), limit, sims):
        k = kept[i]
        group = sorted(members[k], key=lambda r: -float(r.get("similarity", 0)))
        tiles = [Tile(k, "kept", pics.add(origin, k), kind="kept", anchor=anchor())]
        for r in group[:GROUP_MEMBERS]:
            tiles.append(Tile(str(r["key"]), f"d {r.get('distance')} · sim "
                              f"{short(r.get('similarity'))}", pics.add(origin, str(r["key"])),
                              value=float(r.get("similarity", 0)), kind="removed",
                              title=record(r), anchor=anchor()))
        g.groups.append(Group(tiles, len(group), float(sims[i]),
                              max(int(r.get("distance", 0)) for r in group)))
    return g


def _flagged(flagged: dict[int, dict], ds: Any, pics: Pictures, limit: int, anchor: Anchors,
             thresholds: dict[str, Any]) -> list[tuple[Gallery, list]]:
    """Kept items a flag-only filter flagged, one gallery per issue."""
    by_issue: dict[str, list[tuple[int, dict, dict]]] = defaultdict(list)
    for i, r in flagged.items():
        for f in r.get("flags") or []:
            by_issue[f["issue"]].append((i, r, f))
    totals = ds.stats.get("flagged") or {}
    out = []
    own = DatasetOrigin(ds)
    for issue, items in sorted(by_issue.items(), key=lambda kv: -len(kv[1])):
        values = np.array([float(f["value"]) for _, _, f in items])
        g = Gallery(f"flag-{issue}", f"flagged {issue} (kept)", int(totals.get(issue,
                    len(items))), sort=items[0][2].get("measure"))
        for j in sample(len(items), limit, values):
            i, r, f = items[j]
            g.tiles.append(Tile(str(r["key"]), evidence({**f, "reason": issue}, thresholds),
                                pics.add(own, str(r["key"]), row=i), value=float(values[j]),
                                kind="flagged", title=record(r), anchor=anchor()))
        out.append((g, [(r, f) for _, r, f in items]))
    return out


def _kept(ds: Any, pics: Pictures, limit: int, anchor: Anchors) -> Gallery:
    """A sample of what the dataset keeps, evenly spaced over its items."""
    rows = sample(len(ds), limit).tolist()
    records = ds.records(rows)
    g = Gallery("kept", "kept (sample)", len(ds))
    own = DatasetOrigin(ds)
    for i in rows:
        r = records[i]
        g.tiles.append(Tile(str(r.get("key")), f"id {r.get('id', i)}",
                            pics.add(own, str(r.get("key")), row=i), kind="kept",
                            title=record(r), anchor=anchor()))
    return g
