"""Reading a finished dataset directory, checked when opened."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset.names import CONFIG, MANIFEST, MARKER, PROGRESS, STATS
from pipeline.errors import UserError
from pipeline.outputs import owner_kind, read_json


@dataclass(frozen=True)
class StageResult:
    """What a stage did (or found already done): its counts and its own numbers."""

    path: Path
    stage: str
    read: int  # source items consumed
    kept: int
    dropped: dict[str, int]  # by reason
    seconds: float
    skipped: bool = False  # the same stage with the same settings had already finished
    extra: dict[str, Any] = field(default_factory=dict)  # the stage's own numbers

    @classmethod
    def from_stats(cls, path: Path, stats: dict[str, Any], skipped: bool) -> StageResult:
        known = {"stage", "read", "kept", "dropped", "seconds", "files", "drop_files",
                 "arrays", "columns"}
        return cls(Path(path), stats.get("stage", "?"), int(stats.get("read", 0)),
                   int(stats.get("kept", 0)), dict(stats.get("dropped", {})),
                   float(stats.get("seconds", 0.0)), skipped,
                   {k: v for k, v in stats.items() if k not in known})


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file (missing file: empty list); a damaged line is a UserError."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise UserError(f"{path} is damaged (line {n} is not JSON): re-create it by "
                                "running its stage again") from None
            if not isinstance(rec, dict):
                raise UserError(f"{path} is damaged (line {n} is not a JSON object)")
            out.append(rec)
    return out


class Dataset:
    """A finished dataset directory, read-only and checked when opened: manifest, pixel
    arrays, drop lists, stats, config and the identity of its inputs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.exists():
            raise UserError(f"{self.root} does not exist")
        if not (self.root / MARKER).is_file():
            raise UserError(_not_finished(self.root))
        self.config: dict[str, Any] = self._json(CONFIG)
        self.stats: dict[str, Any] = self._json(STATS)
        self._manifest: list[dict] | None = None
        self._arrays: dict[str, np.ndarray] = {}
        for name, rec in self.stats.get("files", {}).items():
            size = _size(self.root / name)
            if size != rec.get("size"):
                got = "missing" if size is None else f"{size:,} bytes"
                raise UserError(f"{self.root / name} is damaged ({got}, expected "
                                f"{rec.get('size'):,}): re-create the dataset by running its "
                                "stage again")
        for name in self.array_names:
            self.array(name)  # the .npy headers against the row count

    def _json(self, name: str) -> dict[str, Any]:
        obj = read_json(self.root / name)
        if not isinstance(obj, dict):
            raise UserError(f"{self.root} is damaged: {name} is missing or unreadable")
        return obj

    def __len__(self) -> int:
        return int(self.stats.get("kept", 0))

    @property
    def stage(self) -> str:
        return self.config.get("stage", "?")

    @property
    def manifest(self) -> list[dict]:
        if self._manifest is None:
            rows = read_jsonl(self.root / MANIFEST)
            if len(rows) != len(self):
                raise UserError(f"{self.root / MANIFEST} is damaged ({len(rows)} items, "
                                f"expected {len(self)})")
            self._manifest = rows
        return self._manifest

    @property
    def keys(self) -> list[str]:
        return [str(r.get("key", r.get("id"))) for r in self.manifest]

    # A report looks up a few hundred items among millions: these read the manifest's bytes
    # and parse only what they return (a 3M-line manifest parsed whole takes tens of seconds
    # and gigabytes of dicts). Lines are written as ``{"id": N, "key": "...", ...}``.
    _KEY = re.compile(rb'"key": ("[^"\\]*(?:\\.[^"\\]*)*")')

    def _manifest_bytes(self) -> bytes:
        return (self.root / MANIFEST).read_bytes()

    def find(self, keys: Iterable[str]) -> dict[str, int]:
        """The rows of those of ``keys`` that are in the manifest."""
        if self._manifest is not None:
            wanted = set(keys)
            return {k: i for i, k in enumerate(self.keys) if k in wanted}
        wanted_json = {json.dumps(k).encode(): k for k in keys}
        found = self._KEY.findall(self._manifest_bytes())
        if len(found) != len(self):  # a line of another shape: parse them all
            self._manifest = self.manifest
            return self.find(wanted_json.values())
        return {wanted_json[k]: i for i, k in enumerate(found) if k in wanted_json}

    def records(self, rows: Iterable[int]) -> dict[int, dict]:
        """The manifest records of ``rows`` (each checked to be a row of this dataset)."""
        rows = sorted(set(rows))
        if rows and not 0 <= rows[0] <= rows[-1] < len(self):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        if self._manifest is not None or not rows:
            return {i: self.manifest[i] for i in rows}
        data = self._manifest_bytes()
        ends = _line_ends(data)
        if len(ends) != len(self):
            raise UserError(f"{self.root / MANIFEST} is damaged ({len(ends)} items, "
                            f"expected {len(self)})")
        starts = np.concatenate([[0], ends[:-1] + 1])
        return {i: json.loads(data[starts[i]:ends[i]]) for i in rows}

    def having(self, field: str) -> dict[int, dict]:
        """The records whose ``field`` is present and not empty (e.g. the ``flags`` of a
        flag-only filter), by row."""
        if self._manifest is not None:
            return {i: r for i, r in enumerate(self.manifest) if r.get(field)}
        data = self._manifest_bytes()
        pattern = re.compile(re.escape(json.dumps(field).encode()) + rb": ")
        ends = _line_ends(data)
        rows = np.unique(np.searchsorted(ends, [m.start() for m in pattern.finditer(data)]))
        return {i: r for i, r in self.records(rows.tolist()).items() if r.get(field)}

    @property
    def array_names(self) -> list[str]:
        names = self.stats.get("arrays")
        if names is None:  # written before the list was recorded
            names = [p.stem for p in self.root.glob("*.npy")]
        return sorted(names)

    def array(self, name: str) -> np.ndarray:
        """An array of the dataset (pixels: N x H x W x C uint8), memory-mapped, checked
        against its size."""
        if name not in self._arrays:
            if name not in self.array_names:
                raise UserError(f"dataset {self.root} has no '{name}' array")
            path = self.root / f"{name}.npy"
            try:
                with open(path, "rb") as f:
                    fmt = np.lib.format
                    read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else \
                        fmt.read_array_header_2_0
                    shape, _, dtype = read(f)
                    offset = f.tell()
                size = os.path.getsize(path)
            except (OSError, ValueError) as e:
                raise UserError(f"{path} is damaged or missing ({e})") from None
            need = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
            if size != need or not shape or shape[0] != len(self):
                raise UserError(f"{path} is damaged ({size:,} bytes for {shape}, expected "
                                f"{len(self)} rows): re-create the dataset")
            self._arrays[name] = np.load(path, mmap_mode="r")
        return self._arrays[name]

    @property
    def images(self) -> np.ndarray:
        return self.array("images")

    def table(self, name: str) -> dict[str, np.ndarray]:
        """A 2-D array as named columns (``{"lum_mean": (N,), ...}``), memory-mapped."""
        names = self.stats.get("columns", {}).get(name)
        if names is None:
            raise UserError(f"dataset {self.root} has no '{name}' table")
        data = self.array(name)
        return {c: data[:, j] for j, c in enumerate(names)}

    def has_table(self, name: str) -> bool:
        return name in self.stats.get("columns", {})

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict]:
        return self.images[i], self.manifest[i]

    @property
    def drop_files(self) -> list[str]:
        names = self.stats.get("drop_files")
        if names is None:
            names = [p.stem for p in self.root.glob("*.jsonl") if p.name != MANIFEST]
        return sorted(names)

    def drops(self, file: str = "rejected") -> list[dict]:
        """The items of drop list ``file`` (``rejected``, ``duplicates``)."""
        return read_jsonl(self.root / f"{file}.jsonl") if file in self.drop_files else []

    def identity(self) -> dict[str, Any]:
        """What a later stage records of this input: a stale result is never mistaken for a
        fresh one (another extraction of the same path has another fingerprint)."""
        digest = hashlib.sha256(json.dumps([_identity_of(self.config),
                                            self.stats.get("files")], sort_keys=True)
                                .encode()).hexdigest()[:16]
        return {"kind": "dataset", "path": str(self.root.resolve()), "stage": self.stage,
                "count": len(self), "fingerprint": digest}

    @property
    def inputs(self) -> list[dict]:
        """The identities of the inputs this dataset was made from (its lineage)."""
        return list(self.config.get("inputs", []))

    def result(self, skipped: bool) -> StageResult:
        return StageResult.from_stats(self.root, self.stats, skipped)


def is_dataset(path: str | Path) -> bool:
    """True if ``path`` is a finished dataset directory."""
    return (Path(path) / MARKER).is_file()


def _not_finished(root: Path) -> str:
    if not root.is_dir():
        return f"{root} is not a folder, and not a dataset directory"
    if (root / PROGRESS).exists():
        return (f"{root} is an unfinished dataset: its stage stopped before the end; run "
                "that stage again to resume it")
    if owner_kind(root) == "run":
        return f"{root} is a training run directory, not a dataset directory"
    return f"{root} is not a dataset directory (no stage of this tool finished one there)"


def _line_ends(data: bytes) -> np.ndarray:
    """Offsets of the newlines ending each line of a JSON-lines file (blank lines left out)."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1])
    return ends[ends > starts]


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _identity_of(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in ("stage", "config", "inputs")}


def _jsonable(obj: Any) -> Any:
    """Values as JSON would give them back (paths as text, tuples as lists)."""
    return json.loads(json.dumps(obj, default=str))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def describe_difference(old: dict | None, new: dict) -> str:
    """What differs between two identities, by name: ``min_similarity 0.9 -> 0.95``."""
    if not old:
        return "its config.json is unreadable"
    if old.get("stage") != new["stage"]:
        return f"a {old.get('stage')} stage, not {new['stage']}"
    a, b = _flatten(old.get("config") or {}), _flatten(new["config"])
    diffs = [f"{k} {_short(a.get(k))} -> {_short(b.get(k))}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if (old.get("inputs") or []) != new.get("inputs"):
        diffs.append("its input changed since")
    return ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "") \
        or "other settings"


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."
