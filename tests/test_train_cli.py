"""``python cli.py train`` as a user runs it: Ctrl-C, bad input, image folders, torchrun/DDP."""

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

from dcgan.checkpoint import list_checkpoints, load_checkpoint
from pipeline.dataset import DatasetWriter
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--resolution", "32", "--nz", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "16",
        "--device", "cpu", "--log-every", "1", "--sample-every", "50", "-q"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real entry point in a new process (exit codes, signals, stderr)."""
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env())


def invoke(*args: str):
    """The typer app in this process (fast): the result, with a UserError as its exception."""
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, list(map(str, args)))


def user_error(result) -> str:
    """The error as the CLI prints it (``cli.main`` formats library errors)."""
    from cli import format_error

    assert isinstance(result.exception, UserError), result.output
    return format_error(result.exception)


def test_ctrl_c_saves_and_resume_continues(data32, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "train", str(data32),
                             "--out", str(run), "--steps", "100000", *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted at step" in err and "Traceback" not in err
    step = int(err.split("Interrupted at step ")[1].split(":")[0])
    assert step >= 2
    ckpt = load_checkpoint(list_checkpoints(run)[0])
    assert ckpt["step"] == step
    assert (run / "generator.pt").is_file()
    r = run_cli("train", data32, "--out", run, "--resume", "--steps", step + 2, "-q",
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(list_checkpoints(run)[0])["step"] == step + 2


def test_image_folder_is_extracted_and_cached(jpeg_folder, tmp_path):
    args = ["train", jpeg_folder, "--steps", "2", *TINY[:-1]]
    r = invoke(*args, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "Trained 2 steps to step 2" in r.output and "cpu x1, eager" in r.output
    assert "extracting" in r.output  # extracted into the cache the first time
    assert "--steps or --epochs" in user_error(invoke(*args, "--out", tmp_path / "b",
                                                      "--epochs", "1"))
    r = invoke("train", jpeg_folder, "--epochs", "0.8", *TINY[:-1], "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert "to step 3" in r.output  # 60 images, 16 a step: 0.8 epochs = 3 steps
    assert "reusing the extraction" in r.output  # the cached extraction is reused


def _dataset(path: Path, shape: tuple[int, ...], n: int) -> Path:
    with DatasetWriter(path, "test", {"n": n}, {"images": shape}) as w:
        for i in range(n):
            w.add(str(i), {"images": np.zeros(shape, np.uint8)})
        w.finish()
    return path


@pytest.mark.parametrize("case,message", [
    ("empty", "is empty"),
    ("res", "holds 64x64 images but the training resolution is 32x32"),
    ("grey", "not H x W x 3"),
    ("missing", "does not exist"),
    ("no-checkpoint", "holds no checkpoint"),
    ("bad-resolution", "resolution must be 32, 64 or 128"),
])
def test_bad_input_is_one_line_error(tmp_path, case, message):
    data = {"empty": lambda: _dataset(tmp_path / "d", (32, 32, 3), 0),
            "res": lambda: _dataset(tmp_path / "d", (64, 64, 3), 2),
            "grey": lambda: _dataset(tmp_path / "d", (32, 32, 1), 2),
            }.get(case, lambda: tmp_path / "nowhere")()
    extra = {"no-checkpoint": ["--resume"], "bad-resolution": ["--resolution", "48"]}
    args = [*TINY, *extra.get(case, [])]
    if case == "bad-resolution":
        args = args[2:]
    r = invoke("train", data, "--out", tmp_path / "run", "--steps", "2", *args)
    assert message in user_error(r)


def test_resume_with_another_config_names_the_difference(data32, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", data32, "--out", run, "--steps", "2", *TINY).exit_code == 0
    r = invoke("train", data32, "--out", run, "--steps", "4", "--resume", "--lr", "0.001",
               "--ngf", "16", "-q")
    assert "ngf: 8 -> 16" in user_error(r) and "lr: 0.0002 -> 0.001" in user_error(r)
    r = invoke("train", data32, "--out", run, "--steps", "4", "--dry-run", "--resume")
    assert r.exit_code == 0 and '"ngf": 8' in r.output  # resume takes the run's config


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine "
                    "without CUDA")
def test_device_cuda_without_gpu(data32, tmp_path):
    r = run_cli("train", data32, "--out", tmp_path / "run", *TINY, "--device", "cuda")
    assert r.returncode == 2 and "no CUDA GPU is available" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_ddp_two_processes_gloo(data32, tmp_path):
    """torchrun --nproc-per-node 2 on the CPU (gloo): one run, both processes in step."""
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(29500 + os.getpid() % 1000), str(ROOT / "cli.py"), "train",
         str(data32), "--out", str(run), "--steps", "4", "--checkpoint-every", "2",
         *TINY[:-1]], capture_output=True, text=True, timeout=180, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Trained 4 steps") == 1  # process 0 reports
    assert "cpu x2" in r.stdout and "OUT OF SYNC" not in r.stdout
    ckpt = load_checkpoint(list_checkpoints(run)[0])
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2
    lines = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]


def test_lsun_database_is_extracted_then_trained(lsun_db, tmp_path):
    r = invoke("train", lsun_db, "--out", tmp_path / "run", "--steps", "1", *TINY[:-1])
    assert r.exit_code == 0, r.output
    assert "Trained 1 steps to step 1" in r.output
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["data"] == str(lsun_db) and config["resolution"] == 32


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``python cli.py ARGS`` in this process (fast): exit status, stdout, stderr."""
    import cli

    monkeypatch.setattr(sys, "argv", ["cli.py", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_a_second_run_into_a_run_points_to_resume(data32, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert run_main(monkeypatch, capsys, "train", data32, "--out", run, "--steps", "2",
                    *TINY)[0] == 0
    code, _, err = run_main(monkeypatch, capsys, "train", data32, "--out", run, "--steps", "4",
                            *TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.strip() == f"Error: {run} already holds a run (checkpoints up to step 2): " \
        "continue it with --resume, or choose another --out"


def test_epochs_zero_is_refused(data32, tmp_path, monkeypatch, capsys):
    """--epochs 0 used to train one step."""
    for value in ("0", "-1"):
        code, _, err = run_main(monkeypatch, capsys, "train", data32, "--out", tmp_path / "r",
                                "--epochs", value, *TINY)
        assert code == 2 and err.strip() == f"Error: --epochs must be more than 0 (got {value})"
    assert not (tmp_path / "r").exists()


def test_epochs_open_the_data_once(data32, tmp_path, monkeypatch):
    import dcgan.train

    opened = []
    real = dcgan.train.open_images
    monkeypatch.setattr(dcgan.train, "open_images",
                        lambda *a, **k: (opened.append(a[0]), real(*a, **k))[1])
    r = invoke("train", data32, "--out", tmp_path / "run", "--epochs", "0.5", *TINY)
    assert r.exit_code == 0, r.output
    assert len(opened) == 1
    assert load_checkpoint(list_checkpoints(tmp_path / "run")[0])["step"] == 2  # 30 of 60


@pytest.mark.parametrize("n,batch", [(1, 128), (100, 1000)])
def test_a_batch_larger_than_the_data_warns_with_the_numbers(tmp_path, monkeypatch, capsys, n,
                                                             batch):
    data = _dataset(tmp_path / "d", (32, 32, 3), n)
    code, _, err = run_main(monkeypatch, capsys, "train", data, "--out", tmp_path / "run",
                            "--steps", "1", *TINY, "--batch-size", batch)
    assert code == 0, err
    assert f"the data holds {n} image{'s' if n > 1 else ''} but a batch is {batch}: each " \
        f"batch holds every image about {batch // n} times" in err


def test_help_shows_every_default():
    from typer.testing import CliRunner

    from cli import app

    text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output
    for option, default in [("steps", "10000"), ("batch-size", "128"), ("device", "auto"),
                            ("seed", "0"), ("lr", "0.0002"), ("keep", "3"),
                            ("log-every", "(steps/250"), ("sample-every", "(steps/20"),
                            ("checkpoint-every", "(steps/10"), ("flip", "no-flip"),
                            ("amp", "amp")]:
        line = next(x for x in text.splitlines() if x.lstrip("│ ").startswith(f"--{option} "))
        assert f"[default: {default}" in line, line


def test_dry_run_shows_the_derived_intervals_and_resume_derives_them_again(data32, tmp_path):
    r = invoke("train", data32, "--out", tmp_path / "new", "--steps", "150", "--dry-run")
    shown = json.loads(r.output.split("config:", 1)[1])
    assert (shown["log_every"], shown["sample_every"], shown["checkpoint_every"]) == (1, 10, 20)
    run = tmp_path / "run"
    assert invoke("train", data32, "--out", run, "--steps", "2", *TINY[:-1]).exit_code == 0
    ckpt = load_checkpoint(list_checkpoints(run)[0])
    assert ckpt["config"]["checkpoint_every"] is None  # derived: not a setting of the run
    r = invoke("train", data32, "--out", run, "--steps", "1000", "--resume", "--dry-run")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output.split("config:", 1)[1])
    assert (shown["log_every"], shown["sample_every"], shown["checkpoint_every"]) == \
        (1, 50, 100)  # --log-every 1, --sample-every 50 were given; the other follows --steps
