"""The Ray engine on a real local Ray (started once for this module): the same bytes as the
local engine, a killed worker, errors as one line, Ctrl-C then resume, dedup codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from demo.samples import encode
from pipeline.dataset import Dataset, DatasetWriter
from pipeline.errors import UserError
from pipeline.extract import ExtractConfig, extract, prepare_chunk
from pipeline.faces import FacesConfig, detect_faces
from pipeline.lsun import LsunSource
from pipeline.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
FILES = ("images.npy", "thumbs.npy", "manifest.jsonl", "rejected.jsonl")


@pytest.fixture(scope="module")
def engine():
    """One local Ray for the module (2 CPUs), shut down after it; skipped without Ray."""
    pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')
    import ray.cloudpickle

    from pipeline.ray_engine import RayEngine

    # Functions of this module run on the workers, which cannot import it by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    eng = RayEngine(num_cpus=2).start()
    yield eng
    eng.close()


@pytest.fixture
def on_ray(engine):
    """The engine the stages are given (``engine=``, as ``--engine ray`` does)."""
    return engine


def _same_files(a: Path, b: Path, names=FILES) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _stats(path: Path) -> dict:
    stats = json.loads((path / "stats.json").read_text())
    return {k: v for k, v in stats.items() if k not in ("seconds", "workers")}


def test_extract_on_ray_writes_the_same_bytes(lsun_db, tmp_path, on_ray):
    src = LsunSource([lsun_db])
    # the local engine, threads
    extract(src, tmp_path / "local", ExtractConfig(workers=2, chunk=4), progress=False)
    r = extract(src, tmp_path / "ray", ExtractConfig(workers=2, chunk=4), progress=False,
                engine=on_ray)
    assert r.read == 30 and r.kept == 25 and r.dropped == {"corrupt": 5}
    _same_files(tmp_path / "local", tmp_path / "ray")
    assert _stats(tmp_path / "local") == _stats(tmp_path / "ray")


def _slowly(task: tuple[int, int]):
    """``prepare_chunk`` taking long enough that a worker can be killed in mid-run."""
    time.sleep(0.3)
    return prepare_chunk(task)


def _descendants(pid: int) -> dict[int, str]:
    """Processes started (directly or not) by ``pid``: their command lines."""
    procs = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                procs[int(p.name)] = (ppid, (p / "cmdline").read_bytes().replace(b"\0", b" "))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, cmd) in procs.items():
            if ppid == parent and child not in found:
                found[child] = cmd.decode(errors="replace")
                todo.append(child)
    return found


def test_a_killed_worker_is_retried_and_nothing_is_lost(lsun_db, tmp_path, on_ray,
                                                        monkeypatch):
    """SIGKILL one Ray worker process while it holds tasks: Ray restarts it and reruns them;
    every record is written once, the same bytes as the local engine."""
    src = LsunSource([lsun_db])
    extract(src, tmp_path / "local", ExtractConfig(workers=1, chunk=2), progress=False)
    killed = []
    real = on_ray.run_ordered

    def run_and_kill(fn, tasks, state, workers=0, threads=False):
        tasks = list(tasks)
        for i, result in enumerate(real(_slowly, tasks, state, workers)):
            if i == 1:
                pid = on_ray.actor_pids[0]
                assert "ray::_Worker" in _descendants(os.getpid())[pid]  # ours, a Ray worker
                assert len(tasks) - i > on_ray.ahead * 2  # it still has tasks in flight
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            yield result

    monkeypatch.setattr(on_ray, "run_ordered", run_and_kill)
    r = extract(src, tmp_path / "ray", ExtractConfig(workers=2, chunk=2), progress=False,
                engine=on_ray)
    assert killed and not Path(f"/proc/{killed[0]}").exists()
    assert r.read == 30 and r.kept == 25
    _same_files(tmp_path / "local", tmp_path / "ray")


class _BrokenSource:
    """A source whose reads fail after ``good`` records with ``error`` (a user error, or a
    bug in our code)."""

    def __init__(self, inner, good: int, error: Exception):
        self.inner, self.good, self.error = inner, good, error

    def __len__(self) -> int:
        return len(self.inner)

    def read_range(self, start: int, stop: int):
        if stop > self.good:
            raise self.error
        return self.inner.read_range(start, stop)

    def describe(self) -> dict:
        return {"kind": "broken", **self.inner.describe()}

    @property
    def paths(self) -> list[Path]:
        return self.inner.paths


def test_errors_in_our_code_reach_the_driver_as_themselves(lsun_db, tmp_path, on_ray):
    """A ``UserError`` raised on a worker is the same one-line ``UserError`` on the driver
    (the worker's traceback chained, not printed); any other exception keeps its type; the
    run resumes afterwards."""
    src = LsunSource([lsun_db])
    broken = _BrokenSource(src, 12, UserError("cannot open LSUN database x: gone"))
    with pytest.raises(UserError) as e:
        extract(broken, tmp_path / "out", ExtractConfig(chunk=4), progress=False,
                engine=on_ray)
    assert str(e.value) == "cannot open LSUN database x: gone"
    assert "read_range" in str(e.value.__cause__)  # the worker's traceback, for -v users
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["position"] == 12  # the three chunks before the failing one
    with pytest.raises(ZeroDivisionError):
        extract(_BrokenSource(src, 4, ZeroDivisionError("bug")), tmp_path / "other",
                ExtractConfig(chunk=4), progress=False, engine=on_ray)


def _missing_on_this_node():
    raise FileNotFoundError("a module or file this node lacks")


class _Unloadable:
    """Pickles on the driver, fails to load on a worker (as a missing install would)."""

    def __reduce__(self):
        return _missing_on_this_node, ()


def test_a_pool_that_cannot_start_is_one_line(engine):
    """Actors that die while starting (here: their state cannot be loaded) stop the run
    with a one-line ``UserError``, not a hang or a Ray traceback."""
    with pytest.raises(UserError, match="the Ray cluster failed") as e:
        list(engine.run_ordered(prepare_chunk, [(0, 1)], {"bad": _Unloadable()}))
    assert "\n" not in str(e.value)


def test_interrupted_driver_resumes_to_the_same_bytes(lsun_db, tmp_path, on_ray, monkeypatch):
    """Ctrl-C in the driver mid-run stops the actors; the rerun resumes from the checkpoint
    and gives the bytes of an uninterrupted local run."""
    src = LsunSource([lsun_db])
    extract(src, tmp_path / "local", ExtractConfig(workers=1), progress=False)
    real, calls, pids = DatasetWriter.add_many, [], []

    def interrupt_on_third(self, keys, arrays, meta=None):
        calls.append(1)
        if len(calls) == 3:
            pids.extend(on_ray.actor_pids)
            raise KeyboardInterrupt
        return real(self, keys, arrays, meta)

    monkeypatch.setattr(DatasetWriter, "add_many", interrupt_on_third)
    out = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        extract(src, out, ExtractConfig(chunk=3), progress=False, engine=on_ray)
    assert not (out / "COMPLETE").exists() and on_ray.actor_pids == []
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in pids)  # the pool was stopped
    monkeypatch.setattr(DatasetWriter, "add_many", real)
    r = extract(src, out, ExtractConfig(chunk=5), progress=False, engine=on_ray)
    assert r.read == 30 and r.kept == 25
    _same_files(tmp_path / "local", out)


def test_faces_on_ray_write_the_same_bytes(tmp_path, on_ray):
    from skimage import data

    src = tmp_path / "photos"
    src.mkdir()
    (src / "astronaut.jpg").write_bytes(encode(data.astronaut(), "jpeg", 90))
    (src / "cat.webp").write_bytes(encode(data.chelsea(), "webp"))
    jpeg = encode(data.coffee(), "jpeg", 90)
    (src / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    config = FacesConfig(min_size=64, workers=2, chunk=1)
    r = detect_faces(open_source(src), tmp_path / "ray", config, progress=False,
                     engine=on_ray)
    assert r.kept == 1 and r.dropped["corrupt"] == 1
    detect_faces(open_source(src), tmp_path / "local", config, progress=False)
    _same_files(tmp_path / "local", tmp_path / "ray")
    assert (tmp_path / "ray" / "kept.png").read_bytes() == \
        (tmp_path / "local" / "kept.png").read_bytes()


def test_parts_on_shared_storage_merge_to_the_same_bytes(lsun_db, tmp_path, engine,
                                                          monkeypatch):
    """Joined to a cluster, actors write each range as a part (a dataset directory) in the
    shared output, and the driver merges them in order into the bytes of a local run; a
    driver stopped midway resumes; the parts are gone once merged."""
    from pipeline.ray_engine import PARTS, RayEngine

    cluster = RayEngine(address="auto").start()  # joins the Ray this module runs
    assert cluster.cluster and cluster.ray.is_initialized()
    src = LsunSource([lsun_db])
    config = ExtractConfig(chunk=4)
    extract(src, tmp_path / "local", config, progress=False)  # the local engine
    out = tmp_path / "shared" / "ray"
    real, calls = DatasetWriter.copy_many, []

    def interrupt_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "copy_many", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        extract(src, out, config, progress=False, engine=cluster)
    assert (out / PARTS).is_dir()  # finished parts wait for the rerun
    monkeypatch.setattr(DatasetWriter, "copy_many", real)
    r = extract(src, out, config, progress=False, engine=cluster)
    assert r.read == 30 and r.kept == 25 and r.dropped == {"corrupt": 5}
    _same_files(tmp_path / "local", out)
    left = sorted(str(p.relative_to(out)) for p in (out / PARTS).rglob("*"))
    assert not (out / PARTS).exists(), left
    assert not list(out.glob(".*tmp*"))
    cluster.close()
    assert engine.ray.is_initialized()  # a joined cluster keeps running


def test_dedup_codes_on_ray_equal_in_process_codes(data32, engine, monkeypatch, one_torch_thread):
    """The actor pool encodes the same batches as ``encode_thumbs``: identical activations,
    from an array or from the dataset's ``thumbs.npy`` path. (One torch thread here, as in
    each actor: between thread counts activations differ in their last bits, in-process
    too, and the codes, their signs, did not; benchmarks/engine.py.)"""
    import pipeline.dedup.autoencoder as ae
    from pipeline.dedup import AutoencoderConfig, hash_thumbs, train_autoencoder

    thumbs = np.ascontiguousarray(Dataset(data32).array("thumbs"))
    model = train_autoencoder(thumbs, AutoencoderConfig(steps=8), device="cpu",
                              progress=False)
    monkeypatch.setattr(ae, "ENCODE_BATCH", 16)  # several batches, over two actors below
    local = ae.encode_thumbs(model, thumbs)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(engine, "workers", 1)  # one actor (each one imports torch: seconds)
        assert np.array_equal(engine.encode_thumbs(model, thumbs), local)
    acts = engine.encode_thumbs(model, data32 / "thumbs.npy")
    assert np.array_equal(acts, local)
    codes, keys = hash_thumbs(model, thumbs, acts)
    ref_codes, ref_keys = hash_thumbs(model, thumbs)
    assert np.array_equal(codes, ref_codes) and np.array_equal(keys, ref_keys)


def test_ray_is_imported_only_by_the_engine_and_its_absence_is_one_line():
    """``import pipeline``, ``cli`` and the engine module leave Ray unloaded; without Ray installed,
    starting the engine is a one-line error naming the extra."""
    code = (
        "import sys\n"
        "import cli, pipeline.extract, pipeline.faces, pipeline.ray_engine\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "sys.modules['ray'] = None  # as if not installed\n"
        "from pipeline.errors import UserError\n"
        "try:\n"
        "    pipeline.ray_engine.RayEngine().start()\n"
        "except UserError as e:\n"
        "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == '--engine ray needs Ray, an optional extra: pip install -e ".[ray]"\n'


def _key_list_arrived(task: tuple[int, int]) -> bool:
    from pipeline.runner import worker_state

    return worker_state()["source"]._keys is not None


def test_lsun_sources_travel_with_their_key_list(lsun_db, engine):
    """Ray workers get the driver's key list (machines share no key cache: they would
    rescan the database); pickles for this machine's process pool still leave it out."""
    import pickle

    src = LsunSource([lsun_db])
    assert pickle.loads(pickle.dumps(src))._keys is None
    shipped = pickle.loads(pickle.dumps(src.with_key_list()))
    assert shipped._keys is not None and not src.ship_keys
    assert [shipped.key_bytes(i) for i in range(30)] == [src.key_bytes(i) for i in range(30)]
    assert all(engine.run_ordered(_key_list_arrived, [(0, 1), (1, 2)], {"source": src}))



def test_dedup_on_ray_writes_the_same_bytes(data32, tmp_path, on_ray):
    """With a given model every thumbnail is encoded: by the actors under the Ray engine,
    in-process under the local one; the cleaned datasets are the same bytes."""
    from pipeline.dedup.stage import DedupConfig, dedup

    trained = dedup(data32, tmp_path / "trained", DedupConfig(epochs=1), progress=False)
    model = str(trained.path / "hash" / "autoencoder.pt")
    config = DedupConfig(model=model, device="cpu")
    dedup(data32, tmp_path / "local", config, progress=False)
    r = dedup(data32, tmp_path / "ray", config, progress=False, engine=on_ray)
    assert r.extra["trained"] is False
    _same_files(tmp_path / "local", tmp_path / "ray",
                ("images.npy", "thumbs.npy", "manifest.jsonl"))
    assert (tmp_path / "local" / "hash" / "codes.npy").read_bytes() == \
        (tmp_path / "ray" / "hash" / "codes.npy").read_bytes()


def test_cli_engine_ray(lsun_db, tmp_path):
    """``--engine ray`` from the command line starts its own Ray and writes the bytes of
    ``--engine local``; the engine is not part of the dataset's identity."""
    pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')

    def cli(*args):
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    r = cli("extract", "lsun", str(lsun_db), "--out", str(tmp_path / "ray"), "--engine", "ray",
            "-j", "2", "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    assert cli("extract", "lsun", str(lsun_db), "--out", str(tmp_path / "local"),
               "-q").returncode == 0
    _same_files(tmp_path / "local", tmp_path / "ray")
    r = cli("extract", "lsun", str(lsun_db), "--out", str(tmp_path / "ray"))
    assert r.returncode == 0 and "nothing to do" in r.stdout
