"""Writing a dataset directory: locked, resumable, finished at one commit point."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.appenders import NPY_HEADER, ArrayAppender, TextAppender, file_crc
from pipeline.dataset.names import CONFIG, MANIFEST, MARKER, PARTIAL, PROGRESS, STATS
from pipeline.dataset.reader import (
    Dataset,
    StageResult,
    _identity_of,
    _jsonable,
    describe_difference,
)
from pipeline.errors import UserError
from pipeline.outputs import OutputDir, atomic_write, read_json, write_json

log = logging.getLogger(__name__)

_CHECKPOINT_SECONDS = 5.0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a stage; ``message`` says what was saved (also logged as it stops)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class DatasetWriter:
    """Builds one dataset directory: locked, resumable, finished at one commit point.

    Use as a context manager: on an error or Ctrl-C the state at the last item boundary is
    saved, so a rerun resumes. Inside, ``done`` says the same stage with the same settings
    and inputs had already finished (``result`` holds its counts); ``position`` is the number
    of source items an interrupted run already consumed (skip them).

    ``arrays`` maps each array's name to its row shape (uint8 pixels) or to ``(row shape,
    dtype)``, and ``columns`` names the columns of a 2-D one (a table of per-item measures,
    ``Dataset.table``); ``lineage`` is the identity of
    each input (``Dataset.identity()``, a source's ``describe()``), part of the output's
    identity; ``inputs`` are paths the output must stay apart from; ``keep`` names entries
    (caches the stage manages itself) that starting again does not delete.
    """

    def __init__(self, root: str | Path | OutputDir, stage: str, config: dict[str, Any],
                 arrays: dict[str, tuple[int, ...]], *, lineage: list[dict] = (),
                 inputs: list[str | Path] = (), overwrite: bool = False,
                 keep: tuple[str, ...] = (), columns: dict[str, list[str]] | None = None):
        # An OutputDir already held (``dedup lsun`` holds its output for the whole run) is
        # used as it is; a path is opened (locked) here and released at the end.
        self._held = isinstance(root, OutputDir)
        self.out = root if self._held else OutputDir(root, "dataset", inputs)
        self.root = self.out.root
        self.stage = stage
        self.identity = _jsonable({"stage": stage, "config": config,
                                   "inputs": list(lineage)})
        self.arrays_spec = {k: _array_spec(v) for k, v in arrays.items()}
        self.columns = dict(columns or {})  # names of a 2-D array's columns (a table)
        self.overwrite, self.keep = overwrite, tuple(keep)
        self.done = False
        self.result: StageResult | None = None
        self.position = 0
        self._kept = 0
        self._dropped: Counter[str] = Counter()
        self._carried: Counter[str] = Counter()
        self._drops: dict[str, TextAppender] = {}
        self._parts: dict[str, Any] = {}
        self._seconds_before = 0.0
        self._t0 = time.monotonic()
        self._last_checkpoint = self._t0
        self._committed: dict[str, Any] = {}

    # -- opening ---------------------------------------------------------------------------
    def __enter__(self) -> DatasetWriter:
        try:
            if not self._held:
                self.out.open()
            self._open()
        except OSError as e:
            self._release()
            raise UserError(f"cannot write dataset to {self.root}: {e.strerror or e}") from e
        except BaseException:
            self._release()
            raise
        return self

    def _release(self) -> None:
        if not self._held:
            self.out.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self._parts and self.result is None:
                self._abort()
        finally:
            self._release()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) \
                and not isinstance(exc, Interrupted) and self._committed:
            done = self._committed
            message = (f"stopped after {done['position']} items ({done['kept']} kept); what "
                       f"was done is saved in {self.root}: run the same command again to "
                       "resume")
            log.warning("Interrupted: %s.", message)
            raise Interrupted(message) from None

    def _open(self) -> None:
        root = self.root
        if (root / MARKER).exists():
            old = read_json(root / CONFIG)
            if old is not None and _identity_of(old) == self.identity:
                # The same stage, settings and inputs: nothing to redo, even when asked to
                # replace a different result (a damaged one is replaced when asked).
                try:
                    self.result = Dataset(root).result(skipped=True)
                except UserError as e:
                    if not self.overwrite:
                        raise UserError(f"{root} holds a finished dataset that is damaged "
                                        f"({e})", param="overwrite") from None
                else:
                    self.done = True
                    if (root / PROGRESS).exists():  # left by a crash just after the marker
                        (root / PROGRESS).unlink()
                    return
            if not self.overwrite:
                raise UserError(f"{root} already holds a finished dataset made with other "
                                f"settings ({describe_difference(old, self.identity)})",
                                param="overwrite")
        progress = read_json(root / PROGRESS)
        if progress and progress.get("identity") == self.identity:  # resumed, not redone
            if progress.get("state") == "finishing" and self._complete_finish(progress):
                self.done = True
                self.result = Dataset(root).result(skipped=False)
                return
            if progress.get("state") == "running" and self._resume(progress):
                return
        elif progress:
            log.info("%s: an unfinished run with other settings is discarded", root)
        self._start()

    def _start(self) -> None:
        self.out.clear(keep=self.keep)
        self.position, self._kept, self._dropped, self._carried = 0, 0, Counter(), Counter()
        self._drops = {}
        for name in (PROGRESS, MARKER, STATS, CONFIG):
            self.out.own(name)
        self._parts = {MANIFEST: TextAppender(self._own_partial(MANIFEST))}
        self._parts.update({f"{n}.npy": ArrayAppender(self._own_partial(f"{n}.npy"), *s[:1],
                                                      dtype=s[1])
                            for n, s in self.arrays_spec.items()})
        self._commit()
        # At once, so a run stopped before its first timed checkpoint resumes.
        self.checkpoint()

    def _resume(self, progress: dict[str, Any]) -> bool:
        """Reopen the parts at the recorded boundary, after checking each one's size and
        checksum there; False (start again) when any part does not match."""
        parts = progress.get("parts", {})
        if not {MANIFEST, *(f"{n}.npy" for n in self.arrays_spec)} <= set(parts):
            return False
        for name, rec in parts.items():
            skip = NPY_HEADER if name.endswith(".npy") else 0
            crc = file_crc(self._partial(name), rec["size"], skip)
            if crc != rec["crc"]:
                log.warning("%s: %s%s does not match what the last checkpoint recorded (%s); "
                            "starting again from the beginning", self.root, name, PARTIAL,
                            "too short" if crc is None else "different content")
                return False
        for p in self.root.glob("*.jsonl" + PARTIAL):  # drop files begun after the checkpoint
            if p.name[: -len(PARTIAL)] not in parts and self.out.owns(p.name):
                p.unlink()
        self.position = progress["position"]
        self._kept = progress["kept"]
        self._dropped = Counter(progress["dropped"])
        self._carried = Counter(progress.get("carried", {}))
        self._seconds_before = progress["seconds"]
        for name, rec in parts.items():
            path = self._partial(name)
            if name.endswith(".npy"):
                shape, dtype = self.arrays_spec[name[:-4]]
                self._parts[name] = ArrayAppender(path, shape, rows=self._kept, crc=rec["crc"],
                                                  dtype=dtype)
            else:
                self._parts[name] = TextAppender(path, rec["size"], rec["crc"])
                if name != MANIFEST:
                    self._drops[name[: -len(".jsonl")]] = self._parts[name]
        self._commit()
        log.info("%s: resuming after %d items (%d kept)", self.root, self.position, self._kept)
        return True

    def _own_partial(self, name: str) -> Path:
        self.out.own(name)
        return self.out.own(name + PARTIAL)

    def _partial(self, name: str) -> Path:
        return self.root / (name + PARTIAL)

    # -- writing ---------------------------------------------------------------------------
    def add(self, key: str, arrays: dict[str, np.ndarray], **meta: Any) -> int:
        """Keep one item; returns its id (its row in every array)."""
        item_id = self._kept
        self.add_many([key], {name: np.asarray(a)[None] for name, a in arrays.items()}, [meta])
        return item_id

    def add_many(self, keys: list[str], arrays: dict[str, np.ndarray],
                 meta: list[dict[str, Any]] | None = None) -> None:
        """Keep ``len(keys)`` items whose pixels are the rows of ``arrays``, in order: one
        write per file (a write per row cost a tenth of the main process's time)."""
        if any(len(a) != len(keys) for a in arrays.values()):
            raise ValueError("arrays must have one row per key")
        for name in self.arrays_spec:
            self._parts[f"{name}.npy"].extend(arrays[name])
        self._add_meta(keys, meta)

    def copy_many(self, keys: list[str], sources: dict[str, np.ndarray], rows: np.ndarray,
                  meta: list[dict[str, Any]] | None = None) -> None:
        """Keep ``len(keys)`` items whose pixels are rows ``rows`` (increasing) of
        ``sources`` (another dataset's memory-mapped arrays), copied file to file."""
        if len(rows) != len(keys):
            raise ValueError("rows must have one row per key")
        for name in self.arrays_spec:
            self._parts[f"{name}.npy"].copy_rows(sources[name], rows)
        self._add_meta(keys, meta)

    def _add_meta(self, keys: list[str], meta: list[dict[str, Any]] | None) -> None:
        meta = meta or [{}] * len(keys)
        self._parts[MANIFEST].write("".join(
            json.dumps({"id": self._kept + i, "key": k, **m}) + "\n"
            for i, (k, m) in enumerate(zip(keys, meta))))
        self._kept += len(keys)

    def drop(self, key: str, reason: str, file: str = "rejected", carried: bool = False,
             **meta: Any) -> None:
        """Record an item that is not kept, with its reason, in the drop list ``file``;
        ``carried``: an input's own drop, listed again here but counted apart."""
        if file not in self._drops:
            name = f"{file}.jsonl"
            self._drops[file] = self._parts[name] = TextAppender(self._own_partial(name))
        self._drops[file].write(json.dumps({"key": key, "reason": reason, **meta}) + "\n")
        (self._carried if carried else self._dropped)[reason] += 1

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` more source items as consumed; checkpoints every few seconds."""
        self.position += n
        self._commit()
        if time.monotonic() - self._last_checkpoint > _CHECKPOINT_SECONDS:
            self.checkpoint()

    def _commit(self) -> None:
        """Note the state at a source-item boundary: what a checkpoint records. Rows added
        since (an item half written when Ctrl-C or a disk error struck) are cut on resume,
        so no item is ever kept twice."""
        self._committed = {
            "position": self.position, "kept": self._kept, "dropped": dict(self._dropped),
            "carried": dict(self._carried),
            "parts": {n: {"size": p.size, "crc": p.crc} for n, p in self._parts.items()}}

    def path(self, name: str) -> Path:
        """Where a stage puts an extra output (``review.png``, ``hash/codes.npy``): listed as
        the tool's before it exists. Write it with ``atomic_write``."""
        path = self.out.own(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def kept(self) -> int:
        return self._kept

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self._dropped)

    def checkpoint(self) -> None:
        """Flush everything and record the state at the last ``advance``, so a crash can
        resume there."""
        for p in self._parts.values():
            p.sync()
        write_json(self.root / PROGRESS, {"identity": self.identity, "state": "running",
                                          **self._committed, "seconds": self._seconds()})
        self._last_checkpoint = time.monotonic()

    def _seconds(self) -> float:
        return round(self._seconds_before + time.monotonic() - self._t0, 3)

    def finish(self, **extra: Any) -> StageResult:
        """Close every part, then commit: the parts, ``stats.json`` and ``config.json`` are
        recorded as one set in ``progress.json`` before any is moved into place, so a crash
        anywhere in here leaves a state that a rerun completes."""
        for p in self._parts.values():
            p.close()
        files = {n: {"size": p.size, "crc": p.crc} for n, p in self._parts.items()}
        stats = {"stage": self.stage, "read": self.position, "kept": self._kept,
                 "dropped": dict(sorted(self._dropped.items())), "seconds": self._seconds(),
                 **({"carried": dict(sorted(self._carried.items()))} if self._carried else {}),
                 **_jsonable(extra), "files": files, "drop_files": sorted(self._drops),
                 "arrays": {n: {"shape": list(shape), "dtype": dtype.name}
                            for n, (shape, dtype) in self.arrays_spec.items()},
                 "columns": self.columns}
        parts = dict(files)
        for name, obj in ((STATS, stats), (CONFIG, {**self.identity, "version": __version__})):
            part = TextAppender(self._own_partial(name))
            part.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
            part.close()
            parts[name] = {"size": part.size, "crc": part.crc}
        write_json(self.root / PROGRESS, {"identity": self.identity, "state": "finishing",
                                          "parts": parts})
        self._parts = {}
        if not self._complete_finish({"parts": parts}):
            raise UserError(f"{self.root}: a file changed while the stage was finishing")
        self.result = StageResult.from_stats(self.root, stats, skipped=False)
        return self.result

    def _complete_finish(self, progress: dict[str, Any]) -> bool:
        """Move every recorded part into place (each checked against its size and checksum),
        then write the marker: the commit point. False when a part is missing or differs."""
        for name, rec in progress["parts"].items():
            skip = NPY_HEADER if name.endswith(".npy") else 0
            final, partial = self.root / name, self._partial(name)
            if partial.exists() and file_crc(partial, rec["size"], skip) == rec["crc"] \
                    and partial.stat().st_size == rec["size"]:
                os.replace(partial, final)
            elif not (final.exists() and final.stat().st_size == rec["size"]
                      and file_crc(final, rec["size"], skip) == rec["crc"]):
                log.warning("%s: %s is missing or changed since the stage began finishing; "
                            "starting again from the beginning", self.root, name)
                return False
        _fsync_dir(self.root)
        with atomic_write(self.root / MARKER) as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        (self.root / PROGRESS).unlink(missing_ok=True)
        return True

    def _abort(self) -> None:
        """Checkpoint and close after an error or Ctrl-C, so a rerun resumes."""
        with contextlib.suppress(Exception):
            self.checkpoint()
        for p in self._parts.values():
            with contextlib.suppress(Exception):
                p.f.close()
        self._parts = {}


def _array_spec(spec: Any) -> tuple[tuple[int, ...], np.dtype]:
    """``(64, 64, 3)`` (uint8 pixels) or ``((12,), "float32")`` -> (row shape, dtype)."""
    if len(spec) == 2 and isinstance(spec[0], (tuple, list)):
        return tuple(spec[0]), np.dtype(spec[1])
    return tuple(spec), np.dtype(np.uint8)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
