"""The report's view of a face stage: rejected detections cut from their photo, and each
source photo with every box found in it beside the crops."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.report.chain import Stage
from pipeline.report.items import Anchors, Card, Gallery, Tile, record, sample, short
from pipeline.report.pixels import DatasetOrigin, Origin, Pictures


def face_crop(config: dict[str, Any]) -> dict[str, Any]:
    return {"size": int(config.get("resolution", 64)), "margin": config.get("margin", 0.25),
            "border": config.get("border", "pad")}


def face_drops(reason: str, rows: list[dict], origin: Origin, pics: Pictures, limit: int,
           anchor: Anchors, config: dict[str, Any]) -> Gallery:
    """Rejected face detections: crops cut from their photo, sorted by box side or score."""
    by_side = reason == "too_small"
    values = np.array([min(r["box"][2:]) if by_side else float(r.get("score", 0))
                       for r in rows], np.float64)
    g = Gallery(f"drop-{reason}", reason, len(rows), sort="box side" if by_side else "score")
    for i in sample(len(rows), limit, values):
        r = rows[i]
        caption = f"box {int(values[i])} px" if by_side else f"score {short(values[i])}"
        g.tiles.append(Tile(str(r["key"]), caption,
                            pics.add(origin, str(r.get("source")), "face",
                                     box=tuple(r["box"]), **face_crop(config)),
                            value=float(values[i]), kind="removed", title=record(r),
                            anchor=anchor()))
    return g


def photo_cards(stage: Stage, own: dict[str, list[dict]], pics: Pictures, limit: int,
           anchor: Anchors, config: dict[str, Any]) -> Gallery:
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
                origin, key, "face", box=tuple(r["box"]), **face_crop(config))
            tiles.append(Tile(str(r["key"]), f"{label} · {min(r['box'][2:])}px", pic,
                              kind="kept" if ok else "removed", title=record(r),
                              anchor=anchor()))
        g.cards.append(Card(key, pics.add(origin, key, "photo"), "", boxes, tiles))
    return g
