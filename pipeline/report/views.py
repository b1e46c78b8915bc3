"""What the report shows of one stage: its counts, and each decision with its evidence.

Galleries are sampled so a report of millions of items stays small: a gallery of more than
``limit`` items shows ``limit`` of them, evenly spaced in the order of the measure that
decided (both ends included: the borderline cases and the clearest ones), or evenly spaced
in list order when nothing was measured. No randomness: the same data gives the same page.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.report.chain import Stage
from pipeline.report.pixels import DatasetOrigin, Origin, Pictures

UNREADABLE = ("corrupt", "too_large")  # drops of items that never had pixels
GROUP_MEMBERS = 8  # removed items shown per duplicate group


@dataclass
class Tile:
    """One item on the page: its picture (or why there is none) and the evidence under it."""

    key: str
    caption: str
    pic: int | None = None  # a request of ``Pictures``
    note: str = ""
    value: float | None = None  # what the gallery sorts by
    kind: str = ""  # kept, removed, flagged
    title: str = ""  # the full record, on hover
    anchor: str = ""


@dataclass
class Group:
    """Near-duplicates: the kept item first, then the removed ones."""

    tiles: list[Tile]
    size: int  # removed items in the group (some may not be shown)
    similarity: float  # the lowest of the group
    distance: int  # the largest of the group


@dataclass
class Card:
    """A source photo with every face box found in it, and the crops."""

    key: str
    pic: int | None
    note: str
    boxes: list[tuple[list[int], str, str]]  # (box, label, kept|rejected)
    tiles: list[Tile]


@dataclass
class Gallery:
    slug: str  # anchor and test hook
    title: str
    total: int  # items of this kind (what stats.json counts)
    tiles: list[Tile] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    cards: list[Card] = field(default_factory=list)
    sort: str | None = None  # the measure the items are sorted by
    note: str = ""

    @property
    def shown(self) -> int:
        return len(self.tiles) or len(self.groups) or len(self.cards)


@dataclass
class Histogram:
    measure: str
    description: str
    edges: np.ndarray
    kept: np.ndarray  # counts per bin
    dropped: np.ndarray  # counts per bin of items dropped for this measure
    limits: list[tuple[float, str]]  # (value, label) lines


@dataclass
class StageView:
    stage: Stage
    galleries: list[Gallery]
    histograms: list[Histogram]
    thresholds: dict[str, dict[str, Any]]
    lookup: list[list[Any]]  # [key, node index, reason, evidence, anchor]


def sample(n: int, limit: int, values: np.ndarray | None = None) -> np.ndarray:
    """Indices of the items shown of ``n``: all, or ``limit`` evenly spaced ranks by
    ``values`` (ties in list order) or by position; returned in that order."""
    order = np.arange(n) if values is None else np.argsort(values, kind="stable")
    if n <= limit:
        return order
    return order[np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))]


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _record(row: dict[str, Any]) -> str:
    text = json.dumps(row, separators=(", ", ": "))
    return text if len(text) <= 400 else text[:397] + "..."


class _Anchors:
    def __init__(self, prefix: str):
        self.prefix, self.n = prefix, 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n}"


def gather(stage: Stage, pics: Pictures, limit: int, drops_of: Any) -> StageView:
    """The view of one stage. ``drops_of(ds)``: a dataset's drop lists by file (cached by
    the caller: a stage's input is read for its own section too)."""
    ds, stats = stage.ds, stage.ds.stats
    origin = stage.origin()
    anchor = _Anchors(f"n{stage.index}")
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
            g = _faces(reason, rows, origin, pics, limit, anchor, config)
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
        galleries.append(_cards(stage, own, pics, limit, anchor, config))
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
                f"similarity {_short(row.get('similarity'))})")
    if "measure" in row and "value" in row:
        op = _op(row, thresholds)
        return f"{row['measure']} {_short(row['value'])} {op} {_short(row.get('threshold'))}"
    if "box" in row:
        side = min(row["box"][2:])
        if reason == "too_small":
            return f"box {side} px < {config.get('min_size', '?')} (photo {row.get('source')})"
        return (f"score {_short(row.get('score'))}, box {side} px (photo "
                f"{row.get('source')})")
    return str(row.get("detail") or reason)


def _op(row: dict[str, Any], thresholds: dict[str, Any]) -> str:
    direction = (thresholds.get(row.get("reason") or row.get("issue")) or {}).get("direction")
    if direction is None:
        direction = "below" if row["value"] < (row.get("threshold") or 0) else "above"
    return "<" if direction == "below" else ">"


def _drops(reason: str, rows: list[dict], origin: Origin, pics: Pictures, limit: int,
           anchor: _Anchors, thresholds: dict[str, Any]) -> Gallery:
    """A gallery of one drop reason, sorted by its deciding measure when it has one."""
    measured = [r for r in rows if isinstance(r.get("value"), (int, float))]
    values = np.array([r["value"] for r in rows], np.float64) \
        if len(measured) == len(rows) and rows else None
    g = Gallery(f"drop-{reason}", reason, len(rows),
                sort=rows[0].get("measure") if values is not None else None)
    for i in sample(len(rows), limit, values):
        r = rows[i]
        t = Tile(str(r.get("key")), evidence(r, thresholds), title=_record(r), kind="removed",
                 value=None if values is None else float(values[i]), anchor=anchor())
        if reason in UNREADABLE:
            t.note = f"{reason}: {r.get('detail') or 'no pixels'}"
        else:
            t.pic = pics.add(origin, t.key)
        g.tiles.append(t)
    return g


def _duplicates(reason: str, rows: list[dict], origin: Origin, pics: Pictures, limit: int,
                anchor: _Anchors) -> Gallery:
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
                              f"{_short(r.get('similarity'))}", pics.add(origin, str(r["key"])),
                              value=float(r.get("similarity", 0)), kind="removed",
                              title=_record(r), anchor=anchor()))
        g.groups.append(Group(tiles, len(group), float(sims[i]),
                              max(int(r.get("distance", 0)) for r in group)))
    return g


def _face_crop(config: dict[str, Any]) -> dict[str, Any]:
    return {"size": int(config.get("resolution", 64)), "margin": config.get("margin", 0.25),
            "border": config.get("border", "pad")}


def _faces(reason: str, rows: list[dict], origin: Origin, pics: Pictures, limit: int,
           anchor: _Anchors, config: dict[str, Any]) -> Gallery:
    """Rejected face detections: crops cut from their photo, sorted by box side or score."""
    by_side = reason == "too_small"
    values = np.array([min(r["box"][2:]) if by_side else float(r.get("score", 0))
                       for r in rows], np.float64)
    g = Gallery(f"drop-{reason}", reason, len(rows), sort="box side" if by_side else "score")
    for i in sample(len(rows), limit, values):
        r = rows[i]
        caption = f"box {int(values[i])} px" if by_side else f"score {_short(values[i])}"
        g.tiles.append(Tile(str(r["key"]), caption,
                            pics.add(origin, str(r.get("source")), "face",
                                     box=tuple(r["box"]), **_face_crop(config)),
                            value=float(values[i]), kind="removed", title=_record(r),
                            anchor=anchor()))
    return g


def _cards(stage: Stage, own: dict[str, list[dict]], pics: Pictures, limit: int,
           anchor: _Anchors, config: dict[str, Any]) -> Gallery:
    """Source photos with every face box found in them: kept crops from the dataset,
    rejected ones cut from the photo."""
    ds, origin = stage.ds, stage.origin()
    faces: dict[str, list[tuple[int | None, dict]]] = defaultdict(list)
    for i, r in enumerate(ds.manifest):
        faces[str(r.get("source"))].append((i, r))
    for rows in own.values():
        for r in rows:
            if "box" in r:
                faces[str(r.get("source"))].append((None, r))
    photos = sorted(faces)
    g = Gallery("faces", "faces with their photo", len(photos),
                note="green: kept faces; red: detections dropped, with the reason")
    own_pixels = DatasetOrigin(ds)
    for i in sample(len(photos), limit):
        key = photos[i]
        items = sorted(faces[key], key=lambda x: (x[1]["box"][1], x[1]["box"][0]))
        boxes, tiles = [], []
        for row, r in items:
            ok = row is not None
            label = "kept" if ok else r.get("reason", "?")
            boxes.append((list(r["box"]), f"{label} {min(r['box'][2:])}px", "kept" if ok
                          else "removed"))
            pic = pics.add(own_pixels, str(r["key"]), row=row) if ok else pics.add(
                origin, key, "face", box=tuple(r["box"]), **_face_crop(config))
            tiles.append(Tile(str(r["key"]), f"{label} · {min(r['box'][2:])}px", pic,
                              kind="kept" if ok else "removed", title=_record(r),
                              anchor=anchor()))
        g.cards.append(Card(key, pics.add(origin, key, "photo"), "", boxes, tiles))
    return g


def _flagged(flagged: dict[int, dict], ds: Any, pics: Pictures, limit: int, anchor: _Anchors,
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
                                kind="flagged", title=_record(r), anchor=anchor()))
        out.append((g, [(r, f) for _, r, f in items]))
    return out


def _kept(ds: Any, pics: Pictures, limit: int, anchor: _Anchors) -> Gallery:
    """A sample of what the dataset keeps, evenly spaced over its items."""
    rows = sample(len(ds), limit).tolist()
    records = ds.records(rows)
    g = Gallery("kept", "kept (sample)", len(ds))
    own = DatasetOrigin(ds)
    for i in rows:
        r = records[i]
        g.tiles.append(Tile(str(r.get("key")), f"id {r.get('id', i)}",
                            pics.add(own, str(r.get("key")), row=i), kind="kept",
                            title=_record(r), anchor=anchor()))
    return g


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
