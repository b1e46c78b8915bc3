"""The pieces of a report page: items with their evidence, groups, photo cards, galleries,
and the sampling rule.

Galleries are sampled so a report of millions of items stays small: a gallery of more than
``limit`` items shows ``limit`` of them, evenly spaced in the order of the measure that
decided (both ends included: the borderline cases and the clearest ones), or evenly spaced
in list order when nothing was measured. No randomness: the same data gives the same page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def sample(n: int, limit: int, values: np.ndarray | None = None) -> np.ndarray:
    """Indices of the items shown of ``n``: all, or ``limit`` evenly spaced ranks by
    ``values`` (ties in list order) or by position; returned in that order."""
    order = np.arange(n) if values is None else np.argsort(values, kind="stable")
    if n <= limit:
        return order
    return order[np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))]


def short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def record(row: dict[str, Any]) -> str:
    text = json.dumps(row, separators=(", ", ": "))
    return text if len(text) <= 400 else text[:397] + "..."


class Anchors:
    def __init__(self, prefix: str):
        self.prefix, self.n = prefix, 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n}"
