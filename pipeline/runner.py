"""Runs a stage's per-chunk function in a process pool, in threads or in-process, in order.

The per-item logic stays a plain function; parallelism lives here only. Workers get the
stage's shared state (a source, settings) once through ``init``; tasks are small (index
ranges), results come back in task order so ids follow source order. Worker processes
exit when the parent does, however it ends (``_exit_with_parent``).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

from pipeline.errors import UserError

_STATE: dict[str, Any] = {}
MAX_THREADS = 8  # thread pools up to this size; larger ones are process pools


def worker_state() -> dict[str, Any]:
    """The state ``run_ordered`` handed to this process."""
    return _STATE


def _init(state: dict[str, Any]) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads only oversubscribe
    _STATE.clear()
    _STATE.update(state)


def init_worker(state: dict[str, Any], lifeline: Connection | None = None) -> None:
    """A worker process's setup: the stage state, Ctrl-C left to the parent, and (with a
    ``lifeline``, the read end of a pipe only the parent writes to) an exit when the parent
    dies. Ray's actors get theirs from Ray."""
    import signal
    import threading

    # Ctrl-C reaches the whole process group: only the parent handles it (checkpoints and
    # stops the pool), so workers do not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if lifeline is not None:
        threading.Thread(target=_exit_with_parent, args=(lifeline,), name="lifeline",
                         daemon=True).start()
    _init(state)


def _exit_with_parent(lifeline: Connection) -> None:
    """Exit this worker when the parent's end of ``lifeline`` closes: the parent finished,
    or died without cleaning up (SIGKILL, the OOM killer's signal).

    Workers are children of the fork server, not of the parent, and each holds the fork
    server's own lifeline, so neither notices the parent's death: orphaned, they would wait
    for tasks forever, holding memory and the parent's stdout (``cmd | grep`` never ends).
    ``PR_SET_PDEATHSIG`` cannot help: it watches the fork server, which the workers keep
    alive.
    """
    try:
        lifeline.recv_bytes()  # the parent never writes: this returns at end of file
    except (EOFError, OSError):
        pass
    os._exit(1)


@contextlib.contextmanager
def _in_this_process(state: dict[str, Any]) -> Iterator[None]:
    """The workers' setup in this process, undone afterwards."""
    import cv2

    previous, cv2_threads = dict(_STATE), cv2.getNumThreads()
    _init(state)
    try:
        yield
    finally:
        _STATE.clear()
        _STATE.update(previous)
        cv2.setNumThreads(cv2_threads)


def _run_in_threads(fn: Callable[[Any], Any], tasks: Iterable[Any], state: dict[str, Any],
                    workers: int) -> Iterator[Any]:
    """``fn`` over ``tasks`` in threads, in order, at most ``2 * workers`` tasks ahead.

    Threads start at once where a process pool takes ~0.3 s (a fork server importing NumPy
    and OpenCV: 10% of a 5,000-record extraction on 2 cores), and results are not pickled
    between processes. Measured (VM, 2 workers, 5,000 WebP records, alternating runs):
    1,308-1,545 img/s with processes, 1,412-1,691 with threads. An extracted record holds
    the GIL for ~45 us of the ~1.1 ms it takes on one core (~27 us of header checks and
    slicing around OpenCV's calls, which release it, and ~14 us of writing), so the GIL
    would cap extraction near 22,000 records/s: 8 threads use a third of that, and larger
    pools (``MAX_THREADS``) are processes, where the GIL is not shared.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it = iter(tasks)
    with _in_this_process(state), ThreadPoolExecutor(workers, "decode") as pool:
        pending = deque(pool.submit(fn, t) for t in itertools.islice(it, 2 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                for t in itertools.islice(it, 1):
                    pending.append(pool.submit(fn, t))
                yield result
        finally:
            for f in pending:  # on an error or Ctrl-C: drop what has not started
                f.cancel()


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_ordered(fn: Callable[[Any], Any], tasks: Iterable[Any], state: dict[str, Any],
                workers: int, threads: bool = False) -> Iterator[Any]:
    """Yield ``fn(task)`` for each task, in order; ``workers <= 1`` runs in this process.

    ``threads``: run the tasks in ``workers`` threads of this process instead of a process
    pool, for per-task work that spends its time in code that releases the GIL (decoding),
    up to ``MAX_THREADS`` workers; more go to processes (see ``_run_in_threads``).
    """
    if workers <= 1:
        with _in_this_process(state):
            for t in tasks:
                yield fn(t)
        return
    if threads and workers <= MAX_THREADS:
        yield from _run_in_threads(fn, tasks, state, workers)
        return
    # Not fork: a parent that has used OpenCV's or torch's thread pools deadlocks children
    # forked from it. A fork server starts workers from a clean process in milliseconds.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["numpy", "cv2", "pipeline.decode"])
    # Not multiprocessing.Pool: it replaces a worker that died (out of memory, a crash in a
    # decoder) and then waits forever for the lost task. The executor reports it instead.
    # Only this process holds the writing end: it closes when this process ends, however.
    lifeline, keep_alive = ctx.Pipe(duplex=False)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                               initargs=(state, lifeline))
    try:
        yield from pool.map(fn, tasks)
    except BrokenProcessPool as e:
        raise UserError("a worker process died (out of memory, or a crash while decoding); "
                        "run the command again to resume") from e
    finally:
        # On an error or Ctrl-C: drop the queued tasks; the workers exit when the lifeline
        # closes (a running task is abandoned, not waited for).
        pool.shutdown(wait=False, cancel_futures=True)
        keep_alive.close()
        lifeline.close()
