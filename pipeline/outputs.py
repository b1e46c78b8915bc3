"""Output directories the tool writes: one writer at a time, and a list of what it wrote.

Every output directory (a dataset, a training run) holds two files of ours besides its
content: ``.dcgan-curate`` lists, one JSON line each, every path the tool created there
(a name is listed *before* its file is created), and ``.dcgan-curate.lock`` is held with
``flock`` for the whole run, so the kernel releases it when the process dies. The tool
deletes or replaces only listed paths; a folder holding anything else is refused, with or
without ``--overwrite``, and an output equal to, inside or above an input is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

OWNER = ".dcgan-curate"
LOCK = ".dcgan-curate.lock"
_TOOL = "dcgan-curate"
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp\d+$")  # atomic_write's temporary names


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open ``path`` for writing under a temporary name; rename into place on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def cache_key(path: str | Path) -> str:
    """A short, stable name in the cache for what was made from ``path`` (its resolved
    path, hashed)."""
    import hashlib

    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]


def cache_root() -> Path:
    """Where the tool caches what it can rebuild (``$DCGAN_CURATE_CACHE``, else the user's
    cache folder): LSUN key lists, extractions made for training."""
    env = os.environ.get("DCGAN_CURATE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcgan-curate"


def check_separate(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output folder that is, is inside, or contains one of ``inputs``."""
    o = Path(os.path.realpath(out))
    for given in inputs:
        i = Path(os.path.realpath(given))
        if o == i:
            raise UserError(f"the output {out} is the input itself: choose another folder")
        if i in o.parents:
            raise UserError(f"the output {out} is inside the input {given}: choose a folder "
                            "outside it")
        if o in i.parents:
            raise UserError(f"the output {out} contains the input {given}: choose a folder "
                            "that does not")


def owner_kind(root: str | Path) -> str | None:
    """The kind of output (``dataset``, ``run``) this tool wrote at ``root``, or None."""
    try:
        with open(Path(root) / OWNER) as f:
            return json.loads(f.readline()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


class OutputDir:
    """An output directory held by this process: locked, with the list of its own files.

    Use as a context manager (or ``open()``/``close()``). ``kind`` says what it holds
    (``dataset`` or ``run``): a folder written as one kind is refused as the other.
    """

    def __init__(self, root: str | Path, kind: str, inputs: Sequence[str | Path] = ()):
        self.root = Path(root)
        self.kind = kind
        self.inputs = list(inputs)
        self._owned: set[str] = set()
        self._lock_fd: int | None = None

    # -- opening and closing ---------------------------------------------------------------
    def check(self) -> OutputDir:
        """Refuse what ``open`` would refuse, without creating or locking anything (for a
        dry run, and before the slow part of a command)."""
        root = self.root
        check_separate(root, self.inputs)
        if root.exists() and not root.is_dir():
            raise UserError(f"the output {root} exists and is not a folder: choose another folder")
        if not root.is_dir():
            return self
        if not (root / OWNER).exists():
            self._refuse_foreign()  # not ours: refused before anything is created in it
        else:
            self._refuse_other_kind()
            self._owned = self._read_owned()
            self._refuse_foreign()
        return self

    def _refuse_other_kind(self) -> None:
        kind = owner_kind(self.root)
        if kind != self.kind:
            what = {"dataset": "a dataset directory", "run": "a training run directory",
                    "demo": "a demo's folder"}
            raise UserError(f"{self.root} is {what.get(kind, 'not a folder of this tool')}, "
                            f"not {what.get(self.kind, self.kind)}: choose another folder")

    def open(self) -> OutputDir:
        root = self.root
        check_separate(root, self.inputs)
        if root.exists() and not root.is_dir():
            raise UserError(f"the output {root} exists and is not a folder: choose another folder")
        if root.is_dir() and not (root / OWNER).exists():
            self._refuse_foreign()  # not ours: refused before anything is created in it
        root.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if (root / OWNER).exists():
                self._refuse_other_kind()
            else:
                self._append_to_list([{"tool": _TOOL, "kind": self.kind}])
            self._owned = self._read_owned()
            self._refuse_foreign()
            self._remove_stale_temporaries()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the kernel drops the flock with the descriptor
            self._lock_fd = None

    def __enter__(self) -> OutputDir:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            pid = (self.root / LOCK).read_text().strip() or "?"
            raise UserError(f"{self.root} is being written by process {pid}: wait for it "
                            "to finish, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    # -- what is ours ----------------------------------------------------------------------
    def _read_owned(self) -> set[str]:
        owned = set()
        with contextlib.suppress(OSError), open(self.root / OWNER) as f:
            next(f, None)  # the header line
            for line in f:
                with contextlib.suppress(ValueError):
                    name = json.loads(line)
                    if isinstance(name, str) and _safe(name):
                        owned.add(name)
        return owned

    def own(self, name: str) -> Path:
        """List ``name`` (a path relative to the folder; a trailing ``/`` for a folder) and
        the folders it is in as the tool's, durably, before it is created; returns its
        path."""
        return self.own_many([name])[0]

    def own_many(self, names: Iterable[str]) -> list[Path]:
        """``own`` for many names with one durable write (a report's hundreds of images:
        one fsync each took seconds)."""
        if self._lock_fd is None:
            raise RuntimeError("OutputDir is not open")
        names = list(names)
        new: dict[str, None] = {}  # in order, once each
        for name in names:
            if not _safe(name):
                raise ValueError(f"not a relative path inside the output: {name!r}")
            parts = name.rstrip("/").split("/")
            for n in ["/".join(parts[:i]) + "/" for i in range(1, len(parts))] + [name]:
                if n not in self._owned:
                    new[n] = None
        if new:
            self._append_to_list(new)
            self._owned.update(new)
        return [self.root / n.rstrip("/") for n in names]

    def _append_to_list(self, entries: Iterable[Any]) -> None:
        """Add JSON lines to the folder's list, on disk before anything they name exists."""
        with open(self.root / OWNER, "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())

    def owns(self, name: str) -> bool:
        return name in self._owned or name.rstrip("/") + "/" in self._owned

    def _is_ours(self, rel: str, is_dir: bool) -> bool:
        if rel in (OWNER, LOCK) or self.owns(rel):
            return True
        m = _TMP.match(Path(rel).name)
        return bool(m) and self.owns(str(Path(rel).parent / m["name"]).removeprefix("./"))

    def foreign(self) -> list[str]:
        """Paths under the folder that the tool did not write (nested outputs of this tool,
        such as ``dedup lsun``'s extraction, are checked against their own lists)."""
        return _foreign(self.root, "", self)

    def _refuse_foreign(self) -> None:
        found = self.foreign() if (self.root / OWNER).exists() else _all_entries(self.root)
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3
                                             else "")
            raise UserError(f"{self.root} holds files this tool did not write ({shown}); "
                            "it never deletes or replaces those: choose an empty or new "
                            "folder")

    # -- removing what is ours -------------------------------------------------------------
    def remove(self, name: str) -> None:
        """Delete the listed file ``name`` (or the listed folder's listed content)."""
        if not self.owns(name):
            raise ValueError(f"{name!r} is not a file this tool wrote here")
        path = self.root / name.rstrip("/")
        if path.is_dir() and not path.is_symlink() and _nested(path) is None:
            prefix = name.rstrip("/") + "/"
            for sub in sorted(self._owned, reverse=True):
                if sub.startswith(prefix) and sub != prefix:
                    self.remove(sub)
            with contextlib.suppress(OSError):
                path.rmdir()  # only when nothing foreign is left in it
        else:
            _remove_listed(path)

    def clear(self, keep: Iterable[str] = ()) -> None:
        """Delete every listed file except those under ``keep`` (top-level names)."""
        keep = {k.rstrip("/") for k in keep}
        tops = sorted({n.split("/")[0] + ("/" if "/" in n else "") for n in self._owned})
        for top in tops:
            if top.rstrip("/") in keep:
                continue
            if self.owns(top):
                self.remove(top)
            else:  # files listed inside a folder that was not itself listed
                for sub in sorted(n for n in self._owned if n.startswith(top)):
                    self.remove(sub)
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of listed names that a killed process left (we hold the lock,
        so no writer of ours is using them)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            dirnames_all = list(dirnames)
            dirnames[:] = [d for d in dirnames
                           if self.owns(os.path.normpath(os.path.join(rel_dir, d)) + "/")
                           and not (Path(dirpath) / d / OWNER).exists()]
            for fn in filenames + dirnames_all:
                m = _TMP.match(fn)
                rel = os.path.normpath(os.path.join(rel_dir, m["name"])) if m else ""
                if m and self.owns(rel):
                    with contextlib.suppress(UserError):  # a writer still at work in it
                        _remove_listed(Path(dirpath) / fn)


def _safe(name: str) -> bool:
    parts = name.rstrip("/").split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..")
                                                              for p in parts)


def _remove_listed(path: Path) -> None:
    """Delete a file, or a nested output of this tool (its own listed files, then its list
    and lock, then the folder when nothing foreign is left in it)."""
    nested = _nested(path) if path.is_dir() and not path.is_symlink() else None
    if nested is None:
        if not path.is_dir() or path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            _remove_unlisted(path)
        return
    with nested:
        nested.clear()
        if not nested.foreign():  # then the folder is wholly ours: its list too
            (path / OWNER).unlink()
            (path / LOCK).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def _remove_unlisted(path: Path) -> None:
    """A temporary output of ours killed before its list was written (a folder holding at
    most the lock and a partial list): removed unless a live process holds its lock."""
    import fcntl

    if _all_entries(path):
        return  # it holds something else: left as it is
    try:
        fd = os.open(path / LOCK, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UserError(f"{path} is being written by another process") from None
        for name in (OWNER, LOCK):
            (path / name).unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)
    with contextlib.suppress(OSError):
        path.rmdir()


def _nested(path: Path) -> OutputDir | None:
    """The nested output of this tool at ``path`` (to open with ``with``), or None."""
    kind = owner_kind(path)
    return OutputDir(path, kind) if kind else None


def _all_entries(root: Path) -> list[str]:
    try:
        return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "")
                      for p in root.iterdir() if p.name not in (OWNER, LOCK))
    except FileNotFoundError:
        return []


def _foreign(folder: Path, prefix: str, owner: OutputDir) -> list[str]:
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return [prefix or "."]
    for e in entries:
        rel = prefix + e.name
        is_dir = e.is_dir(follow_symlinks=False)
        if not owner._is_ours(rel, is_dir):
            found.append(rel + ("/" if is_dir else ""))
        elif is_dir and (Path(e.path) / OWNER).exists():
            nested = OutputDir(e.path, owner_kind(e.path) or "")
            nested._owned = nested._read_owned()
            found += [rel + "/" + f for f in _foreign(Path(e.path), "", nested)]
        elif is_dir:
            found += _foreign(Path(e.path), rel + "/", owner)
    return found
