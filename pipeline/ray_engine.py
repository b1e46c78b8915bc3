"""Runs a stage's per-chunk work on a Ray cluster: the same functions, an actor pool, in order.

The local engine (``runner.run_ordered``) maps a per-chunk function over index ranges in
threads or processes of one machine; this engine maps the very same function over the same
ranges on Ray actors, which may live on many machines, and yields the results in task order,
so the driver writes the same bytes through the same ``DatasetWriter``. Each actor receives the
stage state once (the process pool's initializer, ``runner.init_worker``); a task is a pure
function of its range, so Ray may rerun it after a worker dies (``max_task_retries``) without
changing the output. Errors raised by our code come back as data and are raised again on the
driver as the same exception, so a ``UserError`` stays one line.

Ray Core actors, not Ray Data, like img2dataset's and datatrove's Ray executors: the stage
reads its own sources and the driver writes, so a Ray Data pipeline would only add a
scheduler whose read tasks waited forever for CPUs held by the actor pool, a per-block cost
at planning time and exception wrapping (measured on Ray 2.60; docs/cluster.md).

Ray is an optional extra, imported only inside functions: ``import pipeline`` and
``cli.py --help`` never load it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.runner import worker_state

RAY_EXTRA = 'pip install -e ".[ray]"'
LOCAL = "local"  # ``address`` of a private Ray started on this machine for one run


def import_ray():
    """The ``ray`` module, or a one-line ``UserError`` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray, an optional extra: {RAY_EXTRA}") from None
    return ray


class RemoteTraceback(Exception):
    """The traceback of an error raised on a Ray worker, chained as the ``__cause__`` of the
    error raised again on the driver (as ``concurrent.futures`` does for process pools)."""

    def __str__(self) -> str:
        return self.args[0]


class _Failure:
    """An exception raised by our code on a worker, carried back as a task's result."""

    def __init__(self, error: BaseException):
        import pickle

        self.traceback = "".join(traceback.format_exception(error))
        try:
            pickle.dumps(error)
            self.error = error
        except Exception:  # an exception that cannot travel is re-created as text
            self.error = RuntimeError(f"{type(error).__name__}: {error}")

    def reraise(self) -> None:
        raise self.error from RemoteTraceback(self.traceback)


class _Worker:
    """A pool actor: the stage state set once, then ``fn(task)`` for each task it is sent."""

    def __init__(self, fn: Callable[[Any], Any], state: dict[str, Any], version: str):
        from pipeline import __version__
        from pipeline.runner import init_worker

        self.fn, self.failure = fn, None
        try:
            if version != __version__:
                import socket

                raise UserError(f"a Ray worker on {socket.gethostname()} runs dcgan-curate "
                                f"{__version__}, the driver {version}: install the same "
                                "version on every node")
            init_worker(state)
        except Exception as e:  # reported by the first task, as our own one-line error
            self.failure = _Failure(e)

    def run(self, task: Any) -> Any:
        if self.failure is not None:
            return self.failure
        try:
            return self.fn(task)
        except Exception as e:
            return _Failure(e)

    def pid(self) -> int:
        return os.getpid()


def _session_token() -> dict[str, str | None]:
    """Token authentication for a private local Ray without writing ``~/.ray/auth_token``.

    Ray 2.60 turns token authentication on by default and, when the user has no token, saves
    a new one in their home folder. A session this tool starts for one run gets a random
    token in the environment instead, inherited by the processes Ray starts (setting
    ``RAY_AUTH_MODE=token`` as well, after ``import ray``, made the GCS fail to start).
    Returns the variables' old values.
    """
    import logging
    import secrets

    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    if any(n in os.environ for n in names) or (Path.home() / ".ray" / "auth_token").exists():
        return {}  # the user's own setting
    old = {"RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Ray's notice that token authentication is on (as this session chose) is noise here.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    return old


def _ship(state: dict[str, Any]) -> dict[str, Any]:
    """The state as workers get it: LSUN sources carry their key list
    (``LsunSource.with_key_list``), so no node rebuilds it by scanning the database."""
    return {name: value.with_key_list() if hasattr(value, "with_key_list") else value
            for name, value in state.items()}


class RayEngine:
    """A Ray session (started here or joined) that maps per-chunk functions in task order.

    ``address``: None or ``"local"`` starts a private Ray on this machine, shut down on
    ``close``; ``"auto"`` joins the cluster that ``ray start`` runs here; ``"host:port"`` joins
    that head node. A Ray already initialized in this process is used as it is.
    ``workers``: actors per pool (0: one per CPU of the cluster). ``ahead``: tasks in flight
    per actor (bounds the results waiting for the driver: ``ahead * workers`` chunks).
    ``num_cpus``: CPUs of a private Ray (default: all of this machine's).
    """

    def __init__(self, address: str | None = None, workers: int = 0, ahead: int = 2,
                 num_cpus: int | None = None):
        self.address = address or LOCAL
        self.workers, self.ahead, self.num_cpus = workers, max(1, ahead), num_cpus
        self._started = False
        self._env: dict[str, str | None] = {}  # variables set for a local session, to undo
        self.ray = None
        self.actor_pids: list[int] = []  # of the pool running now (tests kill one)

    # -- the session -------------------------------------------------------------------------
    def start(self) -> RayEngine:
        """Start or join Ray (once); a failure to reach the cluster is a one-line error."""
        if self.ray is not None:
            return self
        ray = import_ray()
        if not ray.is_initialized():
            import logging

            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.WARNING}
            if self.address == LOCAL and self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            if self.address == LOCAL:
                self._env = _session_token()
                # Workers import this process's code, wherever it was imported from (Ray
                # puts only the driver's working directory on their path).
                root = str(Path(__file__).resolve().parents[1])
                path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                self._restore_env()
                raise UserError(f"cannot start or join Ray at {self.address!r}: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                ) from e
            self._started = True
        self.ray = ray
        return self

    def close(self) -> None:
        """Shut Ray down if this engine started it (a joined cluster keeps running)."""
        if self._started and self.ray is not None:
            self.ray.shutdown()
            self._restore_env()
        self._started, self.ray = False, None

    def _restore_env(self) -> None:
        for name, value in self._env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._env = {}

    def __enter__(self) -> RayEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cluster(self) -> bool:
        """Whether this engine joins a cluster (other machines: results go through parts on
        shared storage) rather than a private Ray on this machine."""
        return self.address != LOCAL

    def pool_size(self, tasks: int) -> int:
        """Actors for ``tasks`` tasks: ``workers``, else one per CPU of the cluster."""
        cpus = int(self.start().ray.cluster_resources().get("CPU", 1))
        return max(1, min(tasks, self.workers or cpus))

    # -- mapping -----------------------------------------------------------------------------
    def run_ordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any],
                    state: dict[str, Any], workers: int = 0,
                    threads: bool = False) -> Iterator[Any]:
        """Yield ``fn(task)`` for each task, in order, computed by Ray actors: a drop-in for
        ``runner.run_ordered``. ``workers`` and ``threads`` are ignored: the pool has
        ``RayEngine.workers`` actors, else one per CPU of the cluster (the stage's default,
        one per local core, says nothing about a cluster), at most one per task, and an
        actor runs one task at a time.

        A worker that dies is restarted and its tasks rerun by Ray; an error raised by ``fn``
        is raised here as the same exception; a failure of Ray itself is a ``UserError``. On
        an error or Ctrl-C the pool is killed (running tasks are abandoned: their ranges are
        recomputed by a resumed run).
        """
        from pipeline import __version__

        tasks = list(tasks)
        if not tasks:
            return
        ray = self.start().ray
        size = self.pool_size(len(tasks))
        worker = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(_Worker)
        state_ref = ray.put(_ship(state))  # once in the object store, shared by the actors
        # Ray logs, once per actor, that a restart needs the state's object: the driver holds
        # it until the pool is gone (boxing the reference in a list did not silence it).
        actors = [worker.remote(fn, state_ref, __version__) for _ in range(size)]
        try:
            self.actor_pids = ray.get([a.pid.remote() for a in actors])
            yield from self._ordered(actors, tasks)
        except ray.exceptions.RayError as e:
            raise UserError(f"the Ray cluster failed ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[-1][:200]}); run the command "
                            "again to resume") from e
        finally:
            for a in actors:  # on an error or Ctrl-C: stop the work in flight
                with contextlib.suppress(Exception):
                    ray.kill(a, no_restart=True)
            self.actor_pids = []
            del state_ref

    def _ordered(self, actors: list[Any], tasks: list[Any]) -> Iterator[Any]:
        """Keep every actor ``ahead`` tasks busy, at most ``ahead * len(actors)`` tasks past the
        oldest result not yet yielded, and yield results in task order."""
        ray = self.ray
        load = [0] * len(actors)
        refs: dict[int, Any] = {}  # task index -> result reference, until yielded
        owner: dict[Any, int] = {}  # result reference -> actor index, while running
        done: set[int] = set()
        index = {}  # result reference -> task index
        window = self.ahead * len(actors)
        nxt = head = 0
        while head < len(tasks):
            while nxt < len(tasks) and nxt - head < window:
                a = min(range(len(actors)), key=load.__getitem__)
                if load[a] >= self.ahead:
                    break
                ref = actors[a].run.remote(tasks[nxt])
                refs[nxt], owner[ref], index[ref] = ref, a, nxt
                load[a] += 1
                nxt += 1
            if head not in done:
                ready, _ = ray.wait(list(owner), num_returns=1, fetch_local=False)
                for ref in ready:
                    load[owner.pop(ref)] -= 1
                    done.add(index.pop(ref))
                continue
            result = ray.get(refs.pop(head))
            done.discard(head)
            head += 1
            if isinstance(result, _Failure):
                result.reraise()
            yield result

    def run_parts(self, fn: Callable[[Any], Any], write: Callable[[Any, Any], int],
                  tasks: Iterable[tuple[int, int]], state: dict[str, Any],
                  writer: Any) -> Iterator[str]:
        """Like ``run_ordered``, but each actor writes its task's result itself, with the
        stage's ``write``, as a part (a dataset directory) in ``parts/`` of the output, which
        every node and the driver share; yields the parts' paths in task order, for
        ``merge_part``, and removes each part once the next one is asked for (merged).

        Results then never travel through the driver's memory or the object store; a
        rerun finds the parts that finished (``write_part``).
        """
        from pipeline.outputs import OutputDir

        tasks = list(tasks)
        root = writer.out.own(PARTS + "/")
        of = _digest(writer.identity)
        with OutputDir(root, "parts") as held:
            for t in tasks:  # every part is listed as the tool's before an actor writes it
                held.own(part_name(t) + "/")
            state = {**state, "part": (fn, write, str(root.resolve()), writer.arrays_spec,
                                       writer.columns, of)}
            for task, path in zip(tasks, self.run_ordered(write_part, tasks, state)):
                yield path
                held.remove(part_name(task) + "/")
        writer.out.remove(PARTS + "/")

    # -- dedup codes --------------------------------------------------------------------------
    def encode_thumbs(self, model: Any, thumbs: np.ndarray | str | Path) -> np.ndarray:
        """``autoencoder.encode_thumbs`` on the actor pool: (N, 32, 32, 3) uint8 thumbnails
        (an array, or the path of a ``thumbs.npy`` every node can read) to (N, code_bits)
        float32 activations, encoded in the same ``ENCODE_BATCH`` batches as in-process."""
        from pipeline.dedup.autoencoder import ENCODE_BATCH

        if isinstance(thumbs, (str, Path)):
            source: Any = str(Path(thumbs).resolve())
            n = len(np.load(source, mmap_mode="r"))
        else:
            source, n = np.asarray(thumbs), len(thumbs)
        model = copy.deepcopy(model).cpu().eval()
        tasks = [(s, min(n, s + ENCODE_BATCH)) for s in range(0, n, ENCODE_BATCH)]
        out = np.empty((n, model.code_bits), np.float32)
        for (a, b), acts in zip(tasks, self.run_ordered(
                _encode_range, tasks, {"model": model, "thumbs": source})):
            out[a:b] = acts
        return out


def _encode_range(task: tuple[int, int]) -> np.ndarray:
    """Code activations of thumbnails ``start..stop-1`` (the encoder pool's task function)."""
    from pipeline.dedup.autoencoder import encode_thumbs

    state = worker_state()
    if isinstance(state["thumbs"], str):  # a path: memory-mapped once per worker
        state["thumbs"] = np.load(state["thumbs"], mmap_mode="r")
    return encode_thumbs(state["model"], state["thumbs"][task[0]:task[1]])


# -- parts on shared storage ------------------------------------------------------------------
PARTS = "parts"  # the folder of an output where actors write their parts


def part_name(task: tuple[int, int]) -> str:
    """The part of the records ``start..stop-1``."""
    return f"part-{task[0]:012d}-{task[1]:012d}"


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_part(task: tuple[int, int]) -> str:
    """Compute a task and write its result as a finished dataset directory (the part), with
    the stage's own ``write``; the task function of ``RayEngine.run_parts``.

    Idempotent, as Ray may run a task twice (a worker presumed dead, a rerun): a finished
    part of this very stage is returned as it is; each attempt writes under its own
    temporary name and renames it into place, and an attempt that finds the place taken
    removes its own copy.
    """
    import secrets

    from pipeline.dataset import Dataset, DatasetWriter, is_dataset

    fn, write, root, arrays, columns, of = worker_state()["part"]
    final = Path(root) / part_name(task)
    identity = {"task": list(task), "of": of}
    if is_dataset(final) and Dataset(final).config.get("config") == identity:
        return str(final)
    result = fn(task)
    tmp = final.with_name(f".{final.name}.tmp{secrets.randbelow(10**12)}")
    try:
        with DatasetWriter(tmp, "part", identity, arrays, columns=columns) as w:
            w.advance(write(w, result))
            w.finish()
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_dataset(final):
                raise
    finally:
        _remove_own(tmp)  # renamed away, or another attempt won
    return str(final)


def _remove_own(path: Path) -> None:
    """Delete a temporary part this attempt wrote (only files listed as the tool's)."""
    from pipeline.outputs import LOCK, OWNER, OutputDir, owner_kind

    if owner_kind(path) != "dataset":
        return
    with OutputDir(path, "dataset") as held:
        held.clear()
        if not held.foreign():
            for name in (OWNER, LOCK):
                (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def merge_part(writer: Any, part: str | Path) -> int:
    """Append a part to ``writer``: its kept items (pixels copied file to file), then its
    drops list by list, in their order; returns the records the part covers (``advance``).

    The manifest's ids are renumbered by ``writer`` and every other field is copied, so the
    merged directory has the bytes that writing the results directly would have given.
    """
    from pipeline.dataset import Dataset

    part = Dataset(part)
    rows = part.manifest
    writer.copy_many([r["key"] for r in rows],
                     {name: part.array(name) for name in writer.arrays_spec},
                     np.arange(len(rows)),
                     [{k: v for k, v in r.items() if k not in ("id", "key")} for r in rows])
    for file in part.drop_files:
        for rec in part.drops(file):
            rest = {k: v for k, v in rec.items() if k not in ("key", "reason")}
            writer.drop(rec["key"], rec["reason"], file=file, **rest)
    return part.result(skipped=False).read
