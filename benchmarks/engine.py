"""Local engine vs Ray engine: the same extraction and the same dedup encoding, in one run.

On one LSUN-format database (built once, cached under ``--work``: random views of the photos
that ship with scikit-image/-learn, short side 256, WebP q75, as LSUN's) it measures, each in
a fresh process:

- ``local``: ``extract`` as shipped (decoding threads), ``--workers`` threads;
- ``ray``: the same ``extract`` with its chunks mapped by ``RayEngine`` (a private local Ray
  with ``max(2, workers)`` CPUs, ``workers`` actors);
- ``encode``: 128-bit codes of ``--encode`` thumbnails (the extracted ones, repeated) by
  ``autoencoder.encode_thumbs`` in-process vs ``RayEngine.encode_thumbs``.

Per measurement: records/s of the run itself; the Ray session's start (``ray.init``) apart;
the pool's start (until its first result); CPU seconds of the process and everything it
started, Ray's daemons and workers included (each process's CPU time sampled from ``/proc``
every 0.2 s: up to 0.2 s of each is missed); peak memory, the largest sum of the
resident sets of the process tree (sampled every 0.2 s; shared pages, such as the object
store's, counted once per process that maps them). Ray's outputs are checked byte-identical
to the local ones, and its codes (the activations' signs) identical. Ratios are against
``local`` measured in the same run.

Usage: ``python benchmarks/engine.py [--n 5000] [--workers 1 2] [--encode 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILES = ("images.npy", "thumbs.npy", "manifest.jsonl")


def build_db(work: Path, n: int) -> Path:
    from demo.samples import make_lsun

    root = work / f"lsun-{n}"
    db, done = root / "bedroom_train_lmdb", root / "BUILT"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"building {n} WebP records in {db} ...", flush=True)
        make_lsun(db, n, seed=0, short_side=256, quality=75)
        done.write_text("ok\n")
    return db


# -- one measurement, in a child process ---------------------------------------------------
def child(mode: str, workers: int, db: Path, out: Path, encode: int) -> dict:
    import numpy as np

    from pipeline.extract import ExtractConfig, extract
    from pipeline.lsun import LsunSource
    from pipeline.ray_engine import RayEngine

    result: dict = {"mode": mode, "workers": workers}
    engine = None
    t0 = time.perf_counter()
    if mode in ("ray", "ray-encode"):
        engine = RayEngine(workers=workers, num_cpus=max(2, workers)).start()
        result["start_s"] = time.perf_counter() - t0
        run_ordered = engine.run_ordered

        def first_result_timed(*a, **k):  # the pool's start: until its first result
            t = time.perf_counter()
            for i, r in enumerate(run_ordered(*a, **k)):
                if i == 0:
                    result["pool_s"] = time.perf_counter() - t
                yield r

        engine.run_ordered = first_result_timed
    if mode in ("local", "ray"):
        source = LsunSource([db])
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        stats = extract(source, out, ExtractConfig(workers=workers), progress=False,
                        engine=engine)
        result["run_s"] = time.perf_counter() - t
        result["records"] = stats.read
    else:
        import torch

        from pipeline.dataset import Dataset
        from pipeline.dedup.autoencoder import (
            AutoencoderConfig,
            encode_thumbs,
            train_autoencoder,
        )

        torch.set_num_threads(workers)
        thumbs = Dataset(out).array("thumbs")
        model = train_autoencoder(np.ascontiguousarray(thumbs), AutoencoderConfig(steps=16),
                                  device="cpu", progress=False)
        big = np.resize(np.asarray(thumbs), (encode, *thumbs.shape[1:]))
        path = out.parent / f"thumbs-{encode}.npy"
        if not path.exists():
            np.save(path, big)
        t = time.perf_counter()
        acts = engine.encode_thumbs(model, path) if engine else encode_thumbs(model, big)
        result["run_s"] = time.perf_counter() - t
        result["records"] = len(acts)
        np.save(out.parent / f"acts-{mode}-{workers}.npy", acts)
    if engine is not None:
        engine.close()
    result["total_s"] = time.perf_counter() - t0
    return result


# -- the parent: processes, CPU and memory -------------------------------------------------
def _tree(pid: int) -> dict[int, tuple[float, int]]:
    """``pid`` and all its descendants: (CPU seconds so far, resident bytes) of each."""
    parents: dict[int, int] = {}
    usage: dict[int, tuple[float, int]] = {}
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(p.name)] = int(fields[1])
            usage[int(p.name)] = ((int(fields[11]) + int(fields[12])) / tick,
                                  int(fields[21]) * page)
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        for child_pid, ppid in parents.items():
            if ppid == parent and child_pid not in tree:
                tree.add(child_pid)
                todo.append(child_pid)
    return {p: usage[p] for p in tree if p in usage}


def measure(args: argparse.Namespace, mode: str, workers: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--n", str(args.n), "--work",
                             str(args.work), "--encode", str(args.encode), "--child", mode,
                             str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak, cpu = 0, {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.2):
            tree = _tree(proc.pid)
            peak = max(peak, sum(rss for _, rss in tree.values()))
            cpu.update({p: max(c, cpu.get(p, 0.0)) for p, (c, _) in tree.items()})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=args.timeout)
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{mode} with {workers} workers failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_s"] = sum(cpu.values())
    result["peak_mb"] = peak / 2**20
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="records in the database")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--encode", type=int, default=100_000, help="thumbnails to encode")
    ap.add_argument("--work", type=Path,
                    default=Path(tempfile.gettempdir()) / "dcgan-curate-bench")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DCGAN_CURATE_CACHE", str(args.work / "cache"))
    db = build_db(args.work, args.n)
    if args.child:
        mode, workers = args.child[0], int(args.child[1])
        out = args.work / "engine" / ("ray" if mode == "ray" else "local")
        print(json.dumps(child(mode, workers, db, out, args.encode)))
        return

    from pipeline.lsun import LsunSource

    len(LsunSource([db]))  # builds the key cache before any timing
    print(f"{args.n} records (WebP q75, short side 256) -> 64 px; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    rows = []
    for w in args.workers:
        local = measure(args, "local", w)
        ray = measure(args, "ray", w)
        for name in FILES:
            a = (args.work / "engine" / "local" / name).read_bytes()
            assert a == (args.work / "engine" / "ray" / name).read_bytes(), name
        enc_local = measure(args, "encode", w)
        enc_ray = measure(args, "ray-encode", w)
        import numpy as np

        acts = [np.load(args.work / "engine" / f"acts-{m}-{w}.npy")
                for m in ("encode", "ray-encode")]
        # Codes are the signs; activations may differ in the last bits, as they do in-process
        # between torch thread counts (the Ray actors run one thread each).
        assert np.array_equal(acts[0] > 0, acts[1] > 0), "codes differ"
        enc_ray["max_activation_difference"] = float(np.abs(acts[0] - acts[1]).max())
        rows += [("extract", local, ray), ("encode", enc_local, enc_ray)]
        for r in (local, ray, enc_local, enc_ray):
            print("  " + json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                     for k, v in r.items()}), flush=True)

    print("\nbyte-identical outputs and identical codes: yes\n")
    print("| work | workers | local rec/s | Ray rec/s | Ray/local | Ray start s | pool start s "
          "| CPU s local / Ray | peak MB local / Ray |")
    print("|---|---|---|---|---|---|---|---|---|")
    for what, lo, ra in rows:
        lr, rr = lo["records"] / lo["run_s"], ra["records"] / ra["run_s"]
        print(f"| {what} | {lo['workers']} | {lr:.0f} | {rr:.0f} | {rr / lr:.2f}x | "
              f"{ra['start_s']:.1f} | {ra.get('pool_s', 0):.1f} | "
              f"{lo['cpu_s']:.1f} / {ra['cpu_s']:.1f} | "
              f"{lo['peak_mb']:.0f} / {ra['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
