"""Runs a stage's per-chunk function in a process pool (or in-process), in order.

The per-item logic stays a plain function; parallelism lives here only. Workers get the
stage's shared state (a source, settings) once through ``init``; tasks are small (index
ranges), results come back in task order so ids follow source order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pipeline.errors import UserError

_STATE: dict[str, Any] = {}


def worker_state() -> dict[str, Any]:
    """The state ``run_ordered`` handed to this process."""
    return _STATE


def _init(state: dict[str, Any]) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads only oversubscribe
    _STATE.clear()
    _STATE.update(state)


def _init_worker(state: dict[str, Any]) -> None:
    import signal

    # Ctrl-C reaches the whole process group: only the parent handles it (checkpoints and
    # stops the pool), so workers do not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init(state)


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_ordered(fn: Callable[[Any], Any], tasks: Iterable[Any], state: dict[str, Any],
                workers: int) -> Iterator[Any]:
    """Yield ``fn(task)`` for each task, in order; ``workers <= 1`` runs in this process."""
    if workers <= 1:
        previous = dict(_STATE)
        _init(state)
        try:
            for t in tasks:
                yield fn(t)
        finally:
            _STATE.clear()
            _STATE.update(previous)
        return
    # Not fork: a parent that has used OpenCV's or torch's thread pools deadlocks children
    # forked from it. A fork server starts workers from a clean process in milliseconds.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["numpy", "cv2", "pipeline.decode"])
    # Not multiprocessing.Pool: it replaces a worker that died (out of memory, a crash in a
    # decoder) and then waits forever for the lost task. The executor reports it instead.
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(state,))
    try:
        yield from pool.map(fn, tasks)
    except BrokenProcessPool as e:
        raise UserError("a worker process died (out of memory, or a crash while decoding); "
                        "run the command again to resume") from e
    finally:
        # On an error or Ctrl-C: drop the queued tasks; a running one finishes (<1 s).
        pool.shutdown(wait=False, cancel_futures=True)
