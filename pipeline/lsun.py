"""LSUN scene databases: LMDB environments whose values are encoded images (mostly WebP).

Safe in worker processes and threads: each process opens its own read-only environment
lazily (no locking, no readahead), shared by its threads (one transaction each); the key
list, which takes a full scan to build, is cached outside the database (which may be
read-only) and rebuilt when the database changes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.outputs import atomic_write, cache_key, cache_root


def cache_dir() -> Path:
    """Where key lists are cached."""
    return cache_root() / "lsun-keys"


SPLITS = ("train", "val", "test")  # LSUN's splits (test has one database for all scenes)


def resolve_databases(paths: list[str | Path], category: str | None = None,
                      split: str = "train") -> list[Path]:
    """LMDB directories from ``*_lmdb`` paths, or from roots plus a category and split; a
    name typed slightly wrong gets the databases that are there, and the closest."""
    if not paths:
        raise UserError("give at least one LSUN database")
    if category and split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)} (got {split!r})",
                        param="split")
    out = []
    for p in map(Path, paths):
        if category:
            root, p = p, p / f"{category}_{split}_lmdb"
            if not p.exists() and root.is_dir():
                raise UserError(f"{root} holds no {p.name}{_hint(category, split, root)}")
        if not p.exists():
            raise UserError(f"LSUN database {p} does not exist")
        if not p.is_dir() or not (p / "data.mdb").is_file():
            found = _databases_in(p) if p.is_dir() else []
            if found:
                raise UserError(f"{p} is a folder of LSUN databases ({_names(found)}): give "
                                "one of them, or the folder with a `category` (e.g. "
                                f"`category` {found[0].name.rsplit('_', 2)[0]})")
            raise UserError(f"{p} is not an LMDB database (no data.mdb inside)")
        out.append(p)
    return out


def _databases_in(root: Path) -> list[Path]:
    try:
        return sorted(d for d in root.iterdir()
                      if d.name.endswith("_lmdb") and (d / "data.mdb").is_file())
    except OSError:
        return []


def _names(dbs: list[Path]) -> str:
    names = [d.name for d in dbs]
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _hint(category: str, split: str, root: Path) -> str:
    """'; did you mean bedroom? (there: ...)' for a category close to one there."""
    import difflib

    found = _databases_in(root)
    if not found:
        return " (and no LSUN database at all)"
    suffix = f"_{split}_lmdb"
    there = [d.name[: -len(suffix)] for d in found if d.name.endswith(suffix)]
    close = difflib.get_close_matches(category, there, n=1, cutoff=0.6)
    return (f"; did you mean {close[0]}?" if close else "") + f" (there: {_names(found)})"


def key_text(key: bytes) -> str:
    """An LMDB key as manifest text, one text per key: a UTF-8 key without a backslash as
    it is; any other key escaped, each backslash as two and each byte that is not UTF-8 as
    ``\\xNN`` (so an escaped text always holds a backslash, and reads back one way only).
    """
    try:
        text = key.decode("utf-8")
        if "\\" not in text:
            return text
    except UnicodeDecodeError:
        pass
    return key.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


class LsunSource:
    """One or more LSUN databases read as a single sequence of (key, encoded image)."""

    def __init__(self, databases: list[Path], limit: int | None = None):
        self.databases = [Path(d) for d in databases]
        self._keys = [_load_keys(d) for d in self.databases]
        for d, (offsets, _) in zip(self.databases, self._keys):
            if len(offsets) == 1:
                raise UserError(f"LSUN database {d} is empty")
        counts = [len(o) - 1 for o, _ in self._keys]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        total = int(self._starts[-1])
        self.length = min(total, limit) if limit else total

    def __len__(self) -> int:
        return self.length

    @property
    def paths(self) -> list[Path]:
        return list(self.databases)

    ship_keys = False  # pickles carry the key list (for nodes that share no key cache)

    def __getstate__(self) -> dict:
        # Workers on this machine reload the key list from the cache (memory-mapped, shared)
        # instead of receiving a pickled copy of it.
        state = dict(self.__dict__)
        if not self.ship_keys:
            state["_keys"] = None
        return state

    def with_key_list(self) -> LsunSource:
        """A copy whose pickles carry the key list: for workers on other machines, which
        share no key cache and would otherwise rescan the database."""
        shipped = object.__new__(LsunSource)
        shipped.__dict__.update(self.__dict__, _keys=self.keys, ship_keys=True)
        return shipped

    @property
    def keys(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._keys is None:
            self._keys = [_load_keys(d) for d in self.databases]
        return self._keys

    def key_bytes(self, i: int) -> bytes:
        db = int(np.searchsorted(self._starts, i, side="right") - 1)
        offsets, blob = self.keys[db]
        j = i - int(self._starts[db])
        return bytes(blob[offsets[j]:offsets[j + 1]])

    def _env(self, db: int):
        return open_env(self.databases[db])

    def read_range(self, start: int, stop: int) -> Iterator[tuple[str, bytes | None]]:
        stop = min(stop, self.length)
        i = start
        while i < stop:
            db = int(np.searchsorted(self._starts, i, side="right") - 1)
            end = min(stop, int(self._starts[db + 1]))
            base = int(self._starts[db])
            yield from self._read_db(db, i - base, end - base)
            i = end

    def _read_db(self, db: int, start: int, stop: int) -> Iterator[tuple[str, bytes | None]]:
        """Records ``start..stop-1`` of database ``db``, walked with one cursor.

        A cursor walk costs 4 us a record against 25-50 us for a lookup by key. A record
        the walk cannot read (a damaged page) comes back as ``None`` (dropped as corrupt),
        and the walk restarts at the next key.
        """
        import lmdb

        offsets, blob = self.keys[db]

        def key_at(j: int) -> bytes:
            return bytes(blob[offsets[j]:offsets[j + 1]])

        env = self._env(db)
        j = start
        while j < stop:
            try:
                # A fresh transaction after an error: LMDB refuses every later call in a
                # transaction that met a damaged page (MDB_BAD_TXN).
                with env.begin(buffers=False) as txn:
                    cur = txn.cursor()
                    ok = cur.set_key(key_at(j))
                    while ok and j < stop:
                        yield key_text(cur.key()), cur.value()
                        j += 1
                        ok = j == stop or cur.next()
            except lmdb.Error:
                pass
            if j < stop:  # record j could not be found or read
                yield key_text(key_at(j)), None
                j += 1

    def describe(self) -> dict:
        return {"kind": "lsun", "databases": [str(d.resolve()) for d in self.databases],
                "count": self.length, "stamps": [_stamp(d) for d in self.databases]}


_ENVS: dict[str, object] = {}
_ENVS_PID = -1
_ENVS_LOCK = threading.Lock()


def open_env(db: Path):
    """This process's read-only environment for ``db`` (LMDB allows one per process)."""
    global _ENVS_PID
    if _ENVS_PID != os.getpid():  # never reuse an environment across fork
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    path = str(db.resolve())
    with _ENVS_LOCK:  # decoding threads share this process's environment
        if path not in _ENVS:
            _ENVS[path] = _open_checked(db)
    return _ENVS[path]


def check_database(db: Path) -> None:
    """Raise ``UserError`` when ``db`` cannot be opened or is truncated (see ``_open_checked``);
    leaves no environment open unless this process already had one."""
    with _ENVS_LOCK:
        env = _ENVS.get(str(db.resolve())) if _ENVS_PID == os.getpid() else None
        if env is not None:
            _check_size(db, env)
            return
        _open_checked(db).close()


def _open_checked(db: Path):
    """Open ``db`` read-only, refusing a ``data.mdb`` shorter than its meta page says.

    LMDB memory-maps the file: reading a page past a truncated end (a half-finished
    download) kills the process with SIGBUS, which no ``try`` can catch, so the size is
    checked before any page but the meta pages is touched.
    """
    import lmdb

    try:
        env = lmdb.open(str(db), readonly=True, lock=False, readahead=False, meminit=False,
                        max_readers=126)
    except lmdb.Error as e:
        raise UserError(f"{db} is not a readable LMDB database ({e})") from e
    try:
        _check_size(db, env)
    except BaseException:
        env.close()
        raise
    return env


def _check_size(db: Path, env) -> None:
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = (db / "data.mdb").stat().st_size
    if have < need:
        raise UserError(f"LSUN database {db} is truncated: data.mdb has {have:,} of its "
                        f"{need:,} bytes (an unfinished download or copy?)")


def _stamp(db: Path) -> dict:
    st = (db / "data.mdb").stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_keys(db: Path) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, blob) of every key in ``db``, from the cache when it is still valid."""
    check_database(db)  # a truncated or unreadable one fails here, cached keys or not
    base = cache_dir() / cache_key(db)
    meta_path = base.with_suffix(".json")
    stamp = _stamp(db)
    try:
        if json.loads(meta_path.read_text()) == stamp:
            return (np.load(base.with_suffix(".offsets.npy"), mmap_mode="r"),
                    np.load(base.with_suffix(".keys.npy"), mmap_mode="r"))
    except (OSError, ValueError):
        pass
    offsets, blob = _scan_keys(db)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for suffix, arr in ((".offsets.npy", offsets), (".keys.npy", blob)):
            with atomic_write(base.with_suffix(suffix), "wb") as f:
                np.save(f, arr)
        with atomic_write(meta_path) as f:
            f.write(json.dumps(stamp))
    except OSError:
        pass  # an unwritable cache only costs a rescan next time
    return offsets, blob


# The key scan's child process: only lmdb and the standard library (a fast start).
_SCAN = """
import array, sys, lmdb
try:
    env = lmdb.open(sys.argv[1], readonly=True, lock=False, readahead=False)
    with env.begin() as txn:
        keys = list(txn.cursor().iternext(keys=True, values=False))
except lmdb.Error as e:
    sys.exit(str(e).splitlines()[0])
with open(sys.argv[2] + "/keys", "wb") as f:
    f.write(b"".join(keys))
with open(sys.argv[2] + "/lengths", "wb") as f:
    array.array("q", map(len, keys)).tofile(f)
"""


def _scan_keys(db: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every key of ``db``, listed by a child process.

    LMDB aborts the process (an assertion, SIGABRT) when a cursor steps onto a damaged
    tree page, e.g. a zeroed leaf: in a child that becomes a one-line error here. Once the
    whole tree has been walked, reading the records cannot meet such a page.
    """
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lsun-keys-") as tmp:
        r = subprocess.run([sys.executable, "-c", _SCAN, str(db), tmp], capture_output=True,
                           text=True, errors="replace")
        if r.returncode:
            why = (r.stderr.strip().splitlines() or ["no message"])[-1]
            if r.returncode > 0:
                raise UserError(f"{db} is not a readable LMDB database ({why})")
            why = why.split("Assertion ", 1)[-1][:100]  # not the build's source path
            raise UserError(f"LSUN database {db} is damaged: LMDB stopped on a broken page "
                            f"while listing its keys ({signal.Signals(-r.returncode).name}: "
                            f"{why}); copy or download it again")
        lengths = np.fromfile(Path(tmp) / "lengths", np.int64)
        blob = np.fromfile(Path(tmp) / "keys", np.uint8)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, blob
