"""``report``: one HTML page of what every stage behind a dataset directory kept and dropped.

The page (``--out``, e.g. ``report.html``) and its folder of pictures beside it
(``report_files/``) are the only files written; the page works from ``file://`` with no
server and no network. What each section shows and how galleries are sampled:
``docs/report.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipeline.dataset import Dataset, is_dataset
from pipeline.errors import UserError, at_least
from pipeline.outputs import (
    OutputDir,
    atomic_write,
    check_separate,
    owner_kind,
    read_json,
    write_json,
)
from pipeline.report.chain import Node, Source, Stage, walk_chain
from pipeline.report.page import render
from pipeline.report.pixels import Pictures
from pipeline.report.views import gather

log = logging.getLogger(__name__)

RECORD = "page.json"  # in the folder: the page's name and checksum (it is ours to replace)
SHARD_ROWS = 20000  # key-index rows per file loaded by a lookup


@dataclass(frozen=True)
class ReportConfig:
    max_per_gallery: int = 48  # items shown per gallery; more are sampled (docs/report.md)

    def __post_init__(self) -> None:
        at_least(self, max_per_gallery=1)


@dataclass(frozen=True)
class ReportResult:
    path: Path  # the page
    folder: Path  # its pictures and key index
    nodes: int  # sources and stages in the chain
    stages: int
    pictures: int
    lookup_rows: int  # drop-list rows the key lookup finds
    seconds: dict[str, float]  # gather, pictures, page


def files_folder(out: Path) -> Path:
    """The folder beside the page: ``report.html`` -> ``report_files``."""
    return out.with_name(out.stem + "_files")


def _input_paths(nodes: list[Node]) -> list[Path]:
    paths: list[Path] = []
    for node in nodes:
        if isinstance(node, Stage):
            paths.append(node.ds.root)
        elif node.ident.get("kind") == "lsun":
            paths += [Path(d) for d in node.ident.get("databases", [])]
        elif node.ident.get("path"):
            paths.append(Path(str(node.ident["path"])))
    return paths


def _check_place(out: Path, folder: Path, inputs: list[Path]) -> None:
    """The page goes beside the data, never into a dataset or run directory or an input."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"the report {out} must be an .html file", param="out")
    for path in (out, folder):
        check_separate(path, inputs)
    parent = out.resolve().parent
    for p in (parent, *parent.parents):
        if is_dataset(p) or owner_kind(p) in ("dataset", "run"):
            raise UserError(f"{out} would be inside {p}, a {owner_kind(p) or 'dataset'} "
                            "directory (the tool's own files): write the report outside it")
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the report's file name, e.g. "
                        f"{out / 'report.html'}")


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _check_page(out: Path, folder: Path) -> str | None:
    """The checksum of the page at ``out`` when this tool wrote it (None: no page there);
    a page it did not write, or one changed since, is refused."""
    old = _sha(out)
    record = read_json(folder / RECORD) if owner_kind(folder) == "report" else {}
    record = record if isinstance(record, dict) else {}
    if old is not None and (record.get("page") != out.name
                            or old not in record.get("sha256", [])):
        raise UserError(f"{out} exists and was not written by this tool (or was changed "
                        "since): it is never replaced; choose another --out")
    return old


def write_report(dirs: list[str | Path], out: str | Path,
                 config: ReportConfig = ReportConfig()) -> ReportResult:
    """Write the report of the dataset directories ``dirs`` and the chains that made them.

    Only the page ``out`` and the folder beside it are written: a page that exists is
    replaced only when this tool wrote it (its checksum is recorded in the folder).
    """
    out = Path(out)
    if not dirs:
        raise UserError("give at least one dataset directory")
    t0 = time.perf_counter()
    nodes = walk_chain(list(dirs))
    folder = files_folder(out)
    inputs = _input_paths(nodes)
    _check_place(out, folder, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_page(out, folder)  # before the folder is made
    with OutputDir(folder, "report", inputs) as od:
        old = _check_page(out, folder)  # again, under the lock
        od.clear(keep=(RECORD,))

        @cache
        def drops_of(ds: Dataset) -> dict[str, list[dict]]:
            return {f: ds.drops(f) for f in ds.drop_files}

        pics = Pictures()
        views = {n.index: gather(n, pics, config.max_per_gallery, drops_of)
                 for n in nodes if isinstance(n, Stage)}
        t1 = time.perf_counter()
        od.own_many(["img/"] + [f"img/{pics.name(i)}" for i in range(len(pics.requests))])
        (folder / "img").mkdir(exist_ok=True)

        def write(name: str, data: bytes) -> None:
            (folder / "img" / name).write_bytes(data)

        pictures = pics.resolve(write, f"{folder.name}/img/")
        t2 = time.perf_counter()
        rows = [r for v in views.values() for r in v.lookup]
        shards = _write_index(od, rows)
        html = render(nodes, views, pictures, folder.name, shards,
                      time.strftime("%Y-%m-%d %H:%M:%S"))
        new = hashlib.sha256(html.encode()).hexdigest()
        od.own(RECORD)
        # Both checksums while the page is replaced: a crash between leaves it ours.
        write_json(folder / RECORD, {"page": out.name, "sha256": [h for h in (old, new) if h]})
        with atomic_write(out) as f:
            f.write(html)
        write_json(folder / RECORD, {"page": out.name, "sha256": [new]})
    t3 = time.perf_counter()
    return ReportResult(out, folder, len(nodes), len(views), sum(p.src is not None
                                                                  for p in pictures),
                        len(rows), {"gather": round(t1 - t0, 3), "pictures": round(t2 - t1, 3),
                                    "page": round(t3 - t2, 3)})


def _write_index(od: OutputDir, rows: list[list]) -> int:
    """The drop-list rows of the whole chain in files by CRC-32 of the key, so a lookup loads
    one small file however large the chain (the page's script computes the same CRC)."""
    shards = min(256, max(1, math.ceil(len(rows) / SHARD_ROWS)))
    parts: list[list[list]] = [[] for _ in range(shards)]
    for r in rows:
        parts[zlib.crc32(str(r[0]).encode()) % shards].append(r)
    paths = od.own_many(["keys/"] + [f"keys/{i:02x}.js" for i in range(shards)])[1:]
    for i, (path, part) in enumerate(zip(paths, parts)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"reportKeys({i},{json.dumps(part, separators=(',', ':'))});\n")
    return shards


__all__ = ["ReportConfig", "ReportResult", "Source", "Stage", "files_folder", "walk_chain",
           "write_report"]
