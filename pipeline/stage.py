"""Running a stage: a source's index ranges through a per-chunk function into a writer.

Shared by every stage that turns a source into a dataset directory (extraction, faces):
the settings' identity, sharding over machines, resuming after the writer's last
checkpoint, the worker pool and the progress report; and by the stages that read a dataset
(dedup, filter): carrying the input's drop lists over.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.dataset import Dataset, DatasetWriter
from pipeline.errors import UserError, at_least
from pipeline.progress import progress_bar
from pipeline.runner import default_workers, run_ordered

# Field metadata of a config setting that changes how a result is made, not what it is:
# left out of the output's identity (a rerun with another value reuses or resumes).
HOW = {"identity": False}


def identity(config: Any) -> dict[str, Any]:
    """A config dataclass's fields that determine the output (nested configs included)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("identity", True):
            value = getattr(config, f.name)
            out[f.name] = identity(value) if dataclasses.is_dataclass(value) else value
    return out


class Parallelism(Protocol):
    chunk: int  # records per task
    rank: int  # this shard
    world_size: int  # number of shards
    workers: int  # processes; 0 = one per core


def check_parallelism(config: Parallelism) -> None:
    """The sharding and pool settings every stage shares, checked once."""
    at_least(config, world_size=1)
    if not 0 <= config.rank < config.world_size:
        raise UserError(f"rank {config.rank} is outside 0..{config.world_size - 1}",
                        param="rank")
    if config.workers < 0 or config.chunk < 1:
        raise UserError("workers must be 0 (one per core) or more, and chunk at least 1",
                        param="workers")


def shard_tasks(n: int, chunk: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """Index ranges of ``chunk`` records covering shard ``rank``: the ``rank``-th of
    ``world_size`` contiguous blocks (which records a shard holds never depends on
    ``chunk``, a speed setting that may differ between runs)."""
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    return [(s, min(s + chunk, hi)) for s in range(lo, hi, chunk)]


def remaining_tasks(tasks: list[tuple[int, int]], position: int) -> list[tuple[int, int]]:
    """The tasks left after the first ``position`` records of ``tasks`` were consumed.

    A task is cut where the position falls inside it (a resumed run may use another chunk
    size: the chunk size is a speed setting, not part of the output's identity).
    """
    todo, seen = [], 0
    for a, b in tasks:
        if seen + (b - a) <= position:
            seen += b - a
            continue
        todo.append((a + max(0, position - seen), b))
        seen = position
    return todo


def open_engine(engine: str = "local", address: str | None = None, workers: int = 0) -> Any:
    """A context giving the engine a stage runs its per-record work on: None for this
    machine's threads and processes, or a Ray session (``pipeline.ray_engine``)."""
    if engine == "local":
        return contextlib.nullcontext(None)
    if engine == "ray":
        from pipeline.ray_engine import RayEngine

        return RayEngine(address, workers=workers)
    raise UserError(f"engine must be local or ray (got {engine!r})", param="engine")


def run_stage(writer: DatasetWriter, fn: Callable[[tuple[int, int]], Any],
              write: Callable[[DatasetWriter, Any], int], state: dict[str, Any], n: int,
              config: Parallelism, desc: str, unit: str, progress: bool = True,
              threads: bool = False, engine: Any = None, parts: bool = False) -> int:
    """Run ``fn`` on the records ``writer`` has not consumed yet and ``write`` each result,
    in order (``write`` returns how many records the result covers); returns the number of
    workers. They are processes or ``threads`` of this process (``runner.run_ordered``), or
    the actors of a Ray ``engine``; on a Ray cluster a stage whose ``write`` needs nothing but
    the writer may have each actor write ``parts`` on the shared output, merged here in
    order. An error or Ctrl-C leaves the writer to checkpoint (its context does)."""
    tasks = shard_tasks(n, config.chunk, config.rank, config.world_size)
    total = sum(b - a for a, b in tasks)
    todo = remaining_tasks(tasks, writer.position)
    bar = progress_bar(total, desc, unit, progress, initial=total - sum(b - a for a, b in todo))
    if engine is None:
        workers = min(config.workers or default_workers(), max(1, len(todo)))
        results = run_ordered(fn, todo, state, workers, threads)
    else:
        workers = engine.pool_size(max(1, len(todo)))
        if parts and engine.cluster:
            from pipeline.ray_engine import merge_part

            results, write = engine.run_parts(fn, write, todo, state, writer), merge_part
        else:
            results = engine.run_ordered(fn, todo, state)
    try:
        for result in results:
            consumed = write(writer, result)
            writer.advance(consumed)
            bar.update(consumed)
            bar.set_postfix(kept=writer.kept, dropped=sum(writer.dropped.values()),
                            refresh=False)
    finally:
        with contextlib.suppress(Exception):
            bar.close()
        if hasattr(results, "close"):
            results.close()  # a pool stops with the generator that drives it
    return workers


def carry_drops(writer: DatasetWriter, ds: Dataset) -> None:
    """Copy the input's drop lists (e.g. corrupt records) into the output's, counted apart
    (``carried``): what was dropped earlier in the chain stays listed."""
    for file in ds.drop_files:
        for rec in ds.drops(file):
            rest = {k: v for k, v in rec.items() if k not in ("key", "reason")}
            writer.drop(rec["key"], rec.get("reason", "rejected"), file=file, carried=True,
                        **rest)
