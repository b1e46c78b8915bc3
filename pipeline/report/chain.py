"""The chain of stages behind dataset directories: each one's inputs, followed to the sources.

``walk_chain`` opens every dataset directory named in the lineage (``Dataset.inputs``) and
stops at the sources (LSUN databases, photo folders), noting inputs that are gone or have
changed since a stage read them. Its nodes come inputs first, so a page reads in the order
the data flowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.dataset import Dataset
from pipeline.errors import UserError
from pipeline.lsun import _stamp  # the database's identity, as its reader records it
from pipeline.report.pixels import (
    DatasetOrigin,
    FolderOrigin,
    LsunOrigin,
    MissingOrigin,
    Origin,
)


@dataclass
class Source:
    """The start of a chain (an LSUN database, a photo folder) or an input that is gone."""

    ident: dict[str, Any]  # as the stage that read it recorded it
    title: str
    note: str = ""  # why it cannot be read, when it cannot
    index: int = 0  # position in the chain, from 1

    @property
    def count(self) -> int | None:
        return self.ident.get("count")


@dataclass
class Stage:
    """A dataset directory and the nodes it was made from."""

    ds: Dataset
    inputs: list[Source | Stage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # inputs changed since they were read
    target: bool = False  # one of the directories the report was asked for
    index: int = 0

    @property
    def title(self) -> str:
        return self.ds.stage

    def origin(self) -> Origin:
        """Where this stage's input items are (the pixels of what it dropped)."""
        if not self.inputs:
            return MissingOrigin("no input recorded")
        return origin_of(self.inputs[0])


Node = Source | Stage


def origin_of(node: Node) -> Origin:
    if isinstance(node, Stage):
        return DatasetOrigin(node.ds)
    if node.note:
        return MissingOrigin(node.note)
    kind = node.ident.get("kind")
    if kind == "lsun":
        return LsunOrigin([Path(d) for d in node.ident.get("databases", [])])
    if kind == "folder":
        return FolderOrigin(Path(node.ident["path"]))
    return MissingOrigin(f"a {kind} source cannot be read by the report")


def walk_chain(paths: list[str | Path]) -> list[Node]:
    """Every node behind the dataset directories ``paths``, inputs before the stages that
    read them (each once)."""
    order: list[Node] = []
    memo: dict[str, Node] = {}
    for p in paths:
        ds = Dataset(Path(p).resolve())  # one that cannot be opened is the user's error
        node = _stage(ds, memo, order, set())
        node.target = True
    for i, node in enumerate(order, 1):
        node.index = i
    return order


def _stage(ds: Dataset, memo: dict[str, Node], order: list[Node], active: set[str]) -> Stage:
    key = str(ds.root.resolve())
    if key in memo:
        node = memo[key]
        assert isinstance(node, Stage)
        return node
    node = Stage(ds)
    memo[key] = node
    active.add(key)
    for ident in ds.inputs:
        child = _input(ident, memo, order, active)
        if isinstance(child, Stage) and ident.get("fingerprint") and \
                child.ds.identity().get("fingerprint") != ident.get("fingerprint"):
            node.notes.append(f"its input {child.ds.root} has changed since this stage read "
                              "it: the pictures of dropped items come from its present state")
        node.inputs.append(child)
    active.discard(key)
    order.append(node)
    return node


def _input(ident: dict[str, Any], memo: dict[str, Node], order: list[Node],
           active: set[str]) -> Node:
    kind = ident.get("kind")
    if kind == "dataset":
        path = Path(str(ident.get("path")))
        key = str(path.resolve())
        if key in active:  # a cycle cannot be made by the tool; refuse to loop on one
            return _source(ident, f"dataset {path}", "a cycle in the lineage")
        if key in memo:
            return memo[key]
        try:
            ds = Dataset(path)
        except UserError as e:
            node = _source(ident, f"dataset {path}", f"cannot be read: {e}")
            memo[key] = node
            order.append(node)
            return node
        return _stage(ds, memo, order, active)
    key = json.dumps(ident, sort_keys=True)
    if key in memo:
        return memo[key]
    if kind == "lsun":
        dbs = [Path(d) for d in ident.get("databases", [])]
        gone = [str(d) for d in dbs if not (d / "data.mdb").is_file()]
        stamps = ident.get("stamps") or []
        changed = [str(d) for d, s in zip(dbs, stamps) if str(d) not in gone and s
                   and _stamp(d) != s]
        note = f"not found: {', '.join(gone)}" if gone else ""
        node = _source(ident, ", ".join(map(str, dbs)), note)
        if changed:
            node.title += f" (changed since it was read: {', '.join(changed)})"
    elif kind == "folder":
        path = Path(str(ident.get("path")))
        node = _source(ident, str(path), "" if path.is_dir() else "not found")
    else:
        node = _source(ident, f"{kind} source", f"a {kind} source is not known to the report")
    memo[key] = node
    order.append(node)
    return node


def _source(ident: dict[str, Any], title: str, note: str = "") -> Source:
    return Source(dict(ident), title, note)
