"""Training under faults: damaged checkpoints, exploding losses, kills mid-write, and output
folders that are not a run's own. Each asserts what a user sees (exit status, one line) and
that no file the tool did not write changes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_cli import run_main

from dcgan.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_generator,
    prune_checkpoints,
    save_checkpoint,
)
from dcgan.config import TrainConfig
from dcgan.train import Trainer, TrainingDiverged, train
from pipeline.dataset import Dataset
from pipeline.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = {"resolution": 32, "nz": 16, "ngf": 8, "ndf": 8, "batch_size": 16, "device": "cpu",
        "log_every": 1, "sample_every": 50, "checkpoint_every": 2}
TINY_ARGS = ["--resolution", "32", "--nz", "16", "--ngf", "8", "--ndf", "8", "--batch-size",
             "16", "--device", "cpu", "-q"]


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its bytes (folders: 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- checksums and pruning -------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_checkpoint(data32, tmp_path_factory) -> Path:
    """A trainer's full state after one real step, saved as the tool saves it."""
    t = Trainer(TrainConfig(**TINY, steps=1), Dataset(data32).images, torch.device("cpu"))
    t.train_step()
    path = save_checkpoint(t.state_dict(), tmp_path_factory.mktemp("ck") / "step-00000001.pt")
    t.close()
    return path


@pytest.mark.parametrize("where", ["start", "header", "third", "middle", "zip-end", "seal-tag",
                                   "seal-digest", "last"])
def test_a_flipped_byte_anywhere_is_detected(real_checkpoint, tmp_path, where):
    n = real_checkpoint.stat().st_size
    offset = {"start": 0, "header": 40, "third": n // 3, "middle": n // 2, "zip-end": n - 100,
              "seal-tag": n - 80, "seal-digest": n - 30, "last": n - 1}[where]
    damaged = tmp_path / "step-00000001.pt"
    shutil.copy(real_checkpoint, damaged)
    flip(damaged, offset)
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(damaged)


def test_a_sealed_checkpoint_is_a_plain_torch_file(real_checkpoint):
    """The seal is the zip's comment: torch.load (weights_only) reads the file as it is."""
    ours = load_checkpoint(real_checkpoint)
    plain = torch.load(real_checkpoint, weights_only=True)
    assert ours["step"] == plain["step"] == 1
    assert all(torch.equal(ours["G"][k], plain["G"][k]) for k in ours["G"])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_keep_counts_only_valid_checkpoints(data32, tmp_path, damage):
    """A damaged newer checkpoint no longer outlives the good ones (--keep 1 used to delete
    every good checkpoint and keep the damaged one: resume and sample then found none)."""
    run = tmp_path / "run"
    train(data32, run, TrainConfig(**TINY, steps=4), progress=False)
    newest = checkpoint_path(run, 4)
    if damage == "flip":
        flip(newest, newest.stat().st_size // 2)  # inside the tensors: torch reads it happily
    else:
        newest.write_bytes(newest.read_bytes()[:5000])
    assert latest_checkpoint(run)[0] == checkpoint_path(run, 2)
    r = train(data32, run, TrainConfig(**{**TINY, "checkpoint_every": 1, "keep": 1}, steps=3),
              resume=True, progress=False)
    assert r["steps_run"] == 1 and r["checkpoint"] == str(checkpoint_path(run, 3))
    assert list_checkpoints(run) == [checkpoint_path(run, 3)]  # the damaged one went too
    assert load_checkpoint(checkpoint_path(run, 3))["step"] == 3
    assert load_generator(run)[1].ngf == 8


def test_prune_keeps_the_newest_valid_and_touches_nothing_else(real_checkpoint, tmp_path):
    run = tmp_path / "run"
    folder = run / "checkpoints"
    folder.mkdir(parents=True)
    for step in (2, 3, 4, 5):
        shutil.copy(real_checkpoint, checkpoint_path(run, step))
    flip(checkpoint_path(run, 5), 1000)
    checkpoint_path(run, 4).write_bytes(real_checkpoint.read_bytes()[:-200])
    user = tmp_path / "mine.pt"
    user.write_bytes(b"the user's own file")
    (folder / "step-00000009.pt").symlink_to(user)
    (folder / "notes.txt").write_text("keep me")
    removed = prune_checkpoints(run, 1, Path.unlink)
    assert sorted(p.name for p in removed) == ["step-00000002.pt", "step-00000004.pt",
                                               "step-00000005.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "step-00000003.pt",
                                                        "step-00000009.pt"]
    assert user.read_bytes() == b"the user's own file"
    # A damaged checkpoint newer than the only valid one goes; the valid one stays.
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(real_checkpoint, checkpoint_path(other, 7))
    shutil.copy(real_checkpoint, checkpoint_path(other, 3))
    flip(checkpoint_path(other, 7), 1000)
    assert prune_checkpoints(other, 1, Path.unlink) == [checkpoint_path(other, 7)]
    assert prune_checkpoints(other, 1, Path.unlink) == []
    assert list_checkpoints(other) == [checkpoint_path(other, 3)]


# -- exploding losses ------------------------------------------------------------------------
def test_lr_1e5_stops_as_exploded(data32, tmp_path, monkeypatch, capsys):
    """--lr 1e5 used to train to losses of 1e13 and exit 0."""
    run = tmp_path / "run"
    code, _, err = run_main(monkeypatch, capsys, "train", data32, "--out", run, "--steps", "20",
                            "--lr", "1e5", *TINY_ARGS)
    line = one_line_error(code, err)
    assert "training diverged: the losses exploded (loss_" in line
    assert "no checkpoint had been written yet" in line and "Try a lower --lr" in line
    assert not list_checkpoints(run) and not (run / "generator.pt").exists()


def test_explosion_after_a_checkpoint_keeps_it(data32, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    config = TrainConfig(**TINY, steps=2)
    train(data32, run, config, progress=False)
    path = checkpoint_path(run, 2)
    ckpt = load_checkpoint(path)
    for opt in ("opt_d", "opt_g"):  # the resumed steps are Adam steps of size 1e5
        for group in ckpt[opt]["param_groups"]:
            group["lr"] = 1e5
    save_checkpoint(ckpt, path)
    before = tree(run)
    with pytest.raises(TrainingDiverged, match="exploded.*between steps 2 and 3.*last good "
                                               "checkpoint is kept.*step-00000002"):
        train(data32, run, config.replace(steps=8), resume=True, progress=False)
    after = tree(run)
    assert {k: v for k, v in after.items() if not k.startswith("samples")
            and k not in ("metrics.jsonl", "loss.png", "config.json")} == \
        {k: v for k, v in before.items() if not k.startswith("samples")
         and k not in ("metrics.jsonl", "loss.png", "config.json")}
    assert list_checkpoints(run) == [path] and load_checkpoint(path)["step"] == 2


# -- kills mid-write -------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sigkill_during_a_checkpoint_write_then_the_next_run_cleans_up(data32, tmp_path):
    """kill -9 while a checkpoint is being written leaves its temporary file; the next run in
    that directory removes exactly the stale temporary files of its own names."""
    run = tmp_path / "run"
    folder = run / "checkpoints"
    # Wide nets make checkpoints of ~25 MB: a write lasts long enough to be caught in.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "train", str(data32), "--out", str(run),
         "--steps", "100000", "--resolution", "32", "--ngf", "64", "--ndf", "64",
         "--batch-size", "4", "--device", "cpu", "--checkpoint-every", "1", "--log-every",
         "1000", "--sample-every", "100000", "-q"], env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    caught = None
    try:
        deadline = time.monotonic() + 240
        while caught is None and time.monotonic() < deadline and proc.poll() is None:
            names = os.listdir(folder) if folder.is_dir() else []
            temps = [n for n in names if n.startswith(".step-") and ".pt.tmp" in n]
            if not temps or not any(n.startswith("step-") for n in names):  # one to resume
                time.sleep(0.0005)
                continue
            os.kill(proc.pid, signal.SIGSTOP)  # freeze it, then make sure it is mid-write
            if (folder / temps[0]).exists():
                caught = folder / temps[0]
                os.kill(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGCONT)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert caught is not None, f"no checkpoint write was caught: {err.decode()[-2000:]}"
    assert caught.exists() and proc.returncode == -signal.SIGKILL
    step = load_checkpoint(list_checkpoints(run)[0])["step"]

    def resume() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(data32),
                               "--out", str(run), "--resume", "--steps", str(step + 1), "-q"],
                              env=_env(), capture_output=True, text=True, timeout=240)

    # Files beside it that are not the tool's (not its names, or not in its folders): the
    # run is refused, and they are left as they are.
    others = [folder / f".step-1.pt.tmp{_dead_pid()}",  # not our name
              folder / "notes.txt", run / f".notes.png.tmp{_dead_pid()}"]
    for p in others:
        p.write_text("not the tool's to delete")
    r = resume()
    assert r.returncode == 2 and "did not write" in r.stderr, r.stderr
    assert all(p.read_text() == "not the tool's to delete" for p in others) and caught.exists()
    for p in others:
        p.unlink()
    r = resume()
    assert r.returncode == 0, r.stderr
    assert not caught.exists()  # the killed run's temporary file, of a name the tool listed
    assert load_checkpoint(list_checkpoints(run)[0])["step"] == step + 1


# -- output folders that are not a run's own -------------------------------------------------
def _foreign(tmp_path: Path, data32: Path) -> Path:
    out = tmp_path / "documents"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("years of work")
    (out / "sub" / "notes.md").write_text("notes")
    (out / "config.json").write_text('{"lr": 1}')  # someone else's config
    return out


def _other_dataset(tmp_path: Path, data32: Path) -> Path:
    out = tmp_path / "other-dataset"
    shutil.copytree(data32, out)
    return out


def _data_copy(tmp_path: Path, data32: Path) -> Path:
    data = tmp_path / "parent" / "data"
    shutil.copytree(data32, data)
    return data


CASES = {  # name: (data, out, the message's words)
    "the data itself": (lambda t, d: d, lambda t, d: d, "is the input itself"),
    "inside the data": (_data_copy, lambda t, d: d / "run", "is inside the input"),
    "above the data": (_data_copy, lambda t, d: d.parent, "contains the input"),
    "a dataset directory": (lambda t, d: d, _other_dataset,
                            "is a dataset directory, not a training run directory"),
    "someone's documents": (lambda t, d: d, _foreign, "holds files this tool did not write "
                            "(config.json, sub/, thesis.txt)"),
    "a file": (lambda t, d: d, lambda t, d: (t / "f.txt", (t / "f.txt").write_text("x"))[0],
               "exists and is not a folder"),
}


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_out_that_is_not_a_run_is_refused(data32, tmp_path, monkeypatch, capsys, case, resume):
    make_data, make_out, words = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    data = make_data(work, data32)
    out = make_out(work, data)
    before_work, before_data = tree(work), tree(data32)
    code, _, err = run_main(monkeypatch, capsys, "train", data, "--out", out, "--steps", "1",
                            *TINY_ARGS, *(["--resume"] if resume else []))
    line = one_line_error(code, err)
    assert words in line and line.endswith(("choose another folder",
                                            "choose an empty or new folder",
                                            "choose a folder outside it",
                                            "choose a folder that does not")), line
    assert tree(work) == before_work and tree(data32) == before_data
