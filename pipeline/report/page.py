"""The report as one HTML page: inline CSS and script, pictures as files beside it."""

from __future__ import annotations

import json
from html import escape
from importlib import resources
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.report.chain import Node, Source, Stage
from pipeline.report.histograms import Histogram
from pipeline.report.items import Gallery, Tile
from pipeline.report.pixels import Picture
from pipeline.report.views import StageView


def _n(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _asset(name: str) -> str:
    return resources.files("pipeline.report").joinpath(name).read_text()


def render(nodes: list[Node], views: dict[int, StageView], pictures: list[Picture],
           folder: str, shards: int, created: str) -> str:
    """The page. ``folder``: the pictures' folder relative to the page; ``shards``: the
    number of key-index files in ``folder/keys/``."""
    targets = [n for n in nodes if isinstance(n, Stage) and n.target]
    title = "Curation report: " + ", ".join(n.ds.root.name for n in targets)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width">',
        f'<meta name="generator" content="dcgan-curate {escape(__version__)} report">',
        '<link rel="icon" href="data:,">', f"<title>{escape(title)}</title>",
        f"<style>{_asset('report.css')}</style></head>",
        f'<body data-shards="{shards}" data-keys="{escape(folder)}/keys/">',
        "<header><h1>" + escape(title) + "</h1>",
        '<input id="q" type="search" placeholder="Find a key (filter; Enter: look it up in '
        'every drop list)" aria-label="Find a key"> <button id="qgo">Look up</button>',
        f'<span class="muted">written {escape(created)} by dcgan-curate '
        f'{escape(__version__)}</span><div id="qres"></div></header><main>',
        _chain(nodes),
    ]
    for node in nodes:
        if isinstance(node, Stage):
            parts.append(_stage(views[node.index], pictures, folder))
        else:
            parts.append(_source(node))
    parts += ["</main>", f"<script>{_asset('report.js')}</script></body></html>"]
    return "\n".join(parts) + "\n"


def _name(node: Node) -> str:
    if isinstance(node, Stage):
        return f"{node.index}. {node.title}"
    kind = {"lsun": "LSUN", "folder": "folder"}.get(str(node.ident.get("kind")), "source")
    return f"{node.index}. {kind}"


def _chain(nodes: list[Node]) -> str:
    flow = []
    for node in nodes:
        label = _name(node) + (f" ({node.ds.stats.get('kept', 0):,} kept)"
                               if isinstance(node, Stage) else "")
        inputs = ", ".join(str(i.index) for i in node.inputs) if isinstance(node, Stage) else ""
        flow.append(f'<a href="#n{node.index}">{escape(label)}'
                    + (f' <span class="muted">from {inputs}</span>' if inputs else "") + "</a>")
    rows = ['<tr><th>#</th><th>stage</th><th class="n">read</th><th class="n">kept</th>'
            "<th>dropped</th><th>carried from inputs</th><th>dataset</th></tr>"]
    for node in nodes:
        if isinstance(node, Source):
            rows.append(f'<tr><td>{node.index}</td><td>{escape(_name(node).split(" ", 1)[1])}'
                        '</td><td class="n">'
                        f'{_n(node.count) if node.count is not None else ""}</td><td></td>'
                        f"<td></td><td></td><td>{escape(node.title)}"
                        + (f' <b>{escape(node.note)}</b>' if node.note else "") + "</td></tr>")
            continue
        s = node.ds.stats
        rows.append(
            f'<tr data-path="{escape(str(node.ds.root.resolve()))}"><td>{node.index}</td>'
            f'<td><a href="#n{node.index}">{escape(node.title)}</a></td>'
            f'<td class="n" data-stat="read">{_n(s.get("read", 0))}</td>'
            f'<td class="n" data-stat="kept">{_n(s.get("kept", 0))}</td>'
            f"<td>{_reasons(s.get('dropped') or {}, 'dropped')}</td>"
            f"<td>{_reasons(s.get('carried') or {}, 'carried')}</td>"
            f'<td class="path">{escape(str(node.ds.root))}</td></tr>')
    return ('<section id="chain"><h2>The chain</h2><div class="flow">'
            + ' <span class="arrow">→</span> '.join(flow) + "</div><table>" + "".join(rows)
            + "</table><p class=\"muted\">Counts are those each stage recorded when it finished. "
            "Carried: drops an input had recorded, listed again by the stage.</p></section>")


def _reasons(counts: dict[str, int], field: str) -> str:
    if not counts:
        return '<span class="muted">none</span>'
    return ", ".join(f'<span data-stat="{field}.{escape(r)}">{_n(n)}</span> {escape(r)}'
                     for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _source(node: Source) -> str:
    ident = json.dumps(node.ident, indent=1)
    return (f'<section id="n{node.index}" class="source" data-title="{escape(_name(node))}">'
            f"<h2>{escape(_name(node))}: {escape(node.title)}</h2>"
            + (f'<p class="note">{escape(node.note)}</p>' if node.note else "")
            + f"<p>{_n(node.count) if node.count is not None else '?'} items when it was read."
            f"</p><details><summary>identity</summary><pre>{escape(ident)}</pre></details>"
            "</section>")


def _stage(view: StageView, pictures: list[Picture], folder: str) -> str:
    node = view.stage
    ds, s = node.ds, node.ds.stats
    read = int(s.get("read", 0))
    # Shares of what was read, where every item read was kept or dropped (not for faces,
    # where a photo gives any number of detections).
    whole = read > 0 and int(s.get("kept", 0)) + sum((s.get("dropped") or {}).values()) == read

    def share(n: int) -> str:
        return f'<td class="n">{n / read:.1%}</td>' if whole else "<td></td>"

    rows = [f'<tr><td>read</td><td class="n" data-stat="read">{_n(read)}</td><td></td></tr>',
            f'<tr><td>kept</td><td class="n" data-stat="kept">{_n(s.get("kept", 0))}</td>'
            f'{share(int(s.get("kept", 0)))}</tr>']
    for field, label in (("dropped", "dropped"), ("carried", "carried from its input"),
                         ("flagged", "flagged (kept)")):
        for r, n in sorted((s.get(field) or {}).items(), key=lambda kv: -kv[1]):
            rows.append(f'<tr><td>{label}: {escape(r)}</td><td class="n" '
                        f'data-stat="{field}.{escape(r)}">{_n(n)}</td>'
                        f'{share(n) if field != "carried" else "<td></td>"}</tr>')
    made_from = ", ".join(f'<a href="#n{i.index}">{escape(_name(i))}</a>' for i in node.inputs)
    out = [f'<section id="n{node.index}" class="stage" data-title="{escape(_name(node))}" '
           f'data-path="{escape(str(ds.root.resolve()))}">',
           f"<h2>{escape(_name(node))}</h2>",
           f'<p class="path">{escape(str(ds.root))}'
           + (f" — made from {made_from}" if made_from else "") + "</p>"]
    out += [f'<p class="note">{escape(n)}</p>' for n in node.notes]
    out.append(f"<table>{''.join(rows)}</table>")
    out.append(f'<p class="muted">{s.get("seconds", 0):.1f} s. </p><details><summary>settings'
               f"</summary><pre>{escape(json.dumps(ds.config.get('config'), indent=1))}"
               "</pre></details>")
    if view.thresholds:
        out.append(_thresholds(view.thresholds, s))
    out += [_gallery(g, pictures, node.index) for g in view.galleries]
    if view.histograms:
        out.append("<h3>Measures</h3><p class=\"muted\">Bars: kept items (blue) and items "
                   "dropped for that measure (red, their deciding value); heights on a log "
                   "scale; dashed lines: the limits applied.</p><div class=\"hists\">"
                   + "".join(_histogram(h) for h in view.histograms) + "</div>")
    out.append("</section>")
    return "\n".join(out)


def _thresholds(thresholds: dict[str, dict[str, Any]], s: dict[str, Any]) -> str:
    rows = ["<tr><th>issue</th><th>measure</th><th>limit</th><th class=\"n\">dropped</th>"
            "<th class=\"n\">flagged</th></tr>"]
    for issue, t in thresholds.items():
        sign = "<" if t.get("direction") == "below" else ">"
        rows.append(f"<tr><td>{escape(issue)}</td><td>{escape(str(t.get('measure')))}</td>"
                    f"<td>{sign} {t.get('limit', 0):.4g}</td><td class=\"n\">"
                    f"{_n((s.get('dropped') or {}).get(issue, 0))}</td><td class=\"n\">"
                    f"{_n((s.get('flagged') or {}).get(issue, 0))}</td></tr>")
    mode = "flag only: nothing dropped" if s.get("flag_only") else "items past a limit dropped"
    return f"<h3>Thresholds ({mode})</h3><table>{''.join(rows)}</table>"


def _gallery(g: Gallery, pictures: list[Picture], index: int) -> str:
    count = (f"showing {g.shown:,} groups, {g.total:,} removed in all" if g.groups else
             f"showing {g.shown:,} of {g.total:,}" + (" photos" if g.cards else ""))
    sort = ""
    if g.sort:
        label = f"sort by {g.sort}"
        sort = (f'<button class="sort" data-label="{escape(label)}" data-dir="asc">'
                f"{escape(label)} ▲</button>")
    head = (f'<div class="gallery" id="n{index}-{escape(g.slug)}" data-slug="{escape(g.slug)}"'
            f' data-total="{g.total}" data-shown="{g.shown}"><h3>{escape(g.title)} '
            f'<span class="count muted" data-text="{escape(count)}">{escape(count)}</span>'
            f"{sort}</h3>" + (f'<p class="muted">{escape(g.note)}</p>' if g.note else ""))
    if g.groups:
        body = "".join(f'<div class="group" data-value="{grp.similarity:.6g}">'
                       + "".join(_tile(t, pictures) for t in grp.tiles)
                       + (f'<span class="muted">+{grp.size - len(grp.tiles) + 1} more</span>'
                          if grp.size > len(grp.tiles) - 1 else "") + "</div>"
                       for grp in g.groups)
    elif g.cards:
        body = "".join(_card(c, i, pictures) for i, c in enumerate(g.cards))
    else:
        body = "".join(_tile(t, pictures) for t in g.tiles)
    return head + f'<div class="items">{body}</div></div>'


def _tile(t: Tile, pictures: list[Picture]) -> str:
    pic = pictures[t.pic] if t.pic is not None else None
    if pic is not None and pic.src:
        img = (f'<img loading="lazy" src="{escape(pic.src)}" width="{pic.width}" '
               f'height="{pic.height}" alt="{escape(t.key)}">')
    else:
        img = f'<div class="ph">{escape(t.note or (pic.note if pic else "no pixels"))}</div>'
    value = f' data-value="{t.value:.6g}"' if t.value is not None else ""
    return (f'<figure class="item {t.kind}" id="{t.anchor}" data-key="{escape(t.key)}"{value}'
            f' title="{escape(t.title or t.key)}">{img}<figcaption>{escape(t.caption)}'
            f'</figcaption><figcaption class="key">{escape(t.key)}</figcaption></figure>')


def _card(c: Any, i: int, pictures: list[Picture]) -> str:
    pic = pictures[c.pic] if c.pic is not None else None
    if pic is not None and pic.src:
        w, h = pic.source_size
        boxes = "".join(
            f'<div class="box {cls}" style="left:{100 * b[0] / w:.2f}%;top:{100 * b[1] / h:.2f}%;'
            f'width:{100 * b[2] / w:.2f}%;height:{100 * b[3] / h:.2f}%">'
            f"<span>{escape(label)}</span></div>" for b, label, cls in c.boxes)
        photo = (f'<div class="photo"><img loading="lazy" src="{escape(pic.src)}" '
                 f'width="{pic.width}" height="{pic.height}" alt="{escape(c.key)}">{boxes}</div>')
    else:
        note = escape(pic.note if pic else c.note)
        photo = f'<div class="item"><div class="ph photo-ph">{note}</div></div>'
    return (f'<div class="card" data-value="{i}" data-key="{escape(c.key)}">{photo}'
            f'<div><div class="key muted">{escape(c.key)}</div><div class="items">'
            + "".join(_tile(t, pictures) for t in c.tiles) + "</div></div></div>")


def _histogram(h: Histogram, width: int = 300, height: int = 110) -> str:
    top, bottom = 14, 18
    plot = height - top - bottom
    total = h.kept + h.dropped
    scale = np.log1p(total.max()) if total.max() else 1.0
    bw = width / len(h.kept)
    lo, hi = float(h.edges[0]), float(h.edges[-1])
    bars = []
    for i, (k, d) in enumerate(zip(h.kept, h.dropped)):
        if not k + d:
            continue
        full = plot * np.log1p(k + d) / scale
        dh = full * d / (k + d)
        x = i * bw
        tip = f"{h.edges[i]:.3g}–{h.edges[i + 1]:.3g}: {k:,} kept, {d:,} dropped"
        bars.append(f'<g><title>{escape(tip)}</title>'
                    f'<rect x="{x:.1f}" y="{top + plot - full:.1f}" width="{bw - 1:.1f}" '
                    f'height="{full - dh:.1f}" fill="#5c85d6"/>'
                    + (f'<rect x="{x:.1f}" y="{top + plot - dh:.1f}" width="{bw - 1:.1f}" '
                       f'height="{dh:.1f}" fill="#c62828"/>' if d else "") + "</g>")
    lines = []
    for v, label in h.limits:
        x = (v - lo) / (hi - lo) * width
        lines.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 2}" y2="{top + plot}" '
                     f'stroke="#c62828" stroke-dasharray="4 2"/><text x="{min(x, width - 60):.1f}"'
                     f' y="{top - 4}" font-size="10" fill="#c62828">{escape(label)}</text>')
    axis = (f'<text x="0" y="{height - 4}" font-size="10">{lo:.3g}</text>'
            f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">{hi:.3g}'
            "</text>")
    return (f'<figure class="hist" data-measure="{escape(h.measure)}"><svg width="{width}" '
            f'height="{height}" role="img" aria-label="{escape(h.measure)}">'
            + "".join(bars) + "".join(lines) + axis
            + f"</svg><figcaption><b>{escape(h.measure)}</b> {escape(h.description)}"
            f" ({int(h.kept.sum()):,} kept, {int(h.dropped.sum()):,} dropped)</figcaption>"
            "</figure>")
