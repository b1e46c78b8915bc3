"""The --out rule of the experiment commands (pipeline.outfiles): suffix = file and format, no
suffix = folder, a missing parent of a file is an error, and a file the tool did not write
is never replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo.samples import encode
from pipeline.errors import UserError
from pipeline.outfiles import (
    IMAGE_SUFFIXES,
    JSON_SUFFIXES,
    Outputs,
    is_ours,
    save_animation,
    save_image,
    save_json,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(data32, tmp_path_factory) -> Path:
    """Two real training steps of a tiny DCGAN: a run directory with a checkpoint."""
    from dcgan.checkpoint import TrainConfig
    from dcgan.train import train

    out = tmp_path_factory.mktemp("runs") / "run"
    config = TrainConfig(resolution=32, nz=8, ngf=8, ndf=8, batch_size=8, steps=2,
                         device="cpu", log_every=1, sample_every=2, checkpoint_every=2)
    train(data32, out, config, progress=False)
    return out


def invoke(*args):
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def magic(path: Path) -> str:
    head = path.read_bytes()[:12]
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"GIF8"):
        return "gif"
    return "?"


# -- the rule, without a generator ------------------------------------------------------------
def test_rule_file_folder_and_companions(tmp_path):
    named = Outputs.resolve(tmp_path / "x.JPG", "walk.png", IMAGE_SUFFIXES)
    assert named.named and named.main == tmp_path / "x.JPG"
    assert named.companion("walk.gif") == tmp_path / "x.gif"
    assert named.companion("candidates.png") == tmp_path / "x-candidates.png"
    folder = Outputs.resolve(tmp_path / "a" / "b", "walk.png", IMAGE_SUFFIXES)
    assert not folder.named and folder.main == tmp_path / "a" / "b" / "walk.png"
    assert folder.companion("walk.gif") == tmp_path / "a" / "b" / "walk.gif"
    assert not (tmp_path / "a").exists()  # nothing is created until the command writes
    folder.ready()
    assert (tmp_path / "a" / "b").is_dir()
    # An existing folder is a folder whatever its name looks like.
    (tmp_path / "results.v2").mkdir()
    dotted = Outputs.resolve(tmp_path / "results.v2", "fid.json", JSON_SUFFIXES)
    assert dotted.main == tmp_path / "results.v2" / "fid.json"


@pytest.mark.parametrize("out,message", [
    ("walk.txt", "unknown file type '.txt'"),
    ("s.gif", "unknown file type '.gif'"),
    ("missing/dir/s.png", "does not exist"),
])
def test_rule_refusals(tmp_path, out, message):
    with pytest.raises(UserError, match=message):
        Outputs.resolve(tmp_path / out, "grid.png", IMAGE_SUFFIXES)
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_is_meant_is_refused(tmp_path):
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder"):
        Outputs.resolve(tmp_path / "notes", "grid.png", IMAGE_SUFFIXES)


def test_every_written_kind_is_tagged_and_foreign_files_are_not(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)
    for suffix in IMAGE_SUFFIXES:
        path = save_image(img, tmp_path / f"a{suffix}")
        assert is_ours(path), suffix
        assert magic(path) == {".jpeg": "jpeg", ".jpg": "jpeg"}.get(suffix, suffix[1:])
    assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(tmp_path / "a.png")),
                          img)  # PNG and WebP are lossless
    for suffix in (".gif", ".webp"):
        assert is_ours(save_animation(np.stack([img, img[::-1]]), tmp_path / f"m{suffix}"))
    assert is_ours(save_json({"fid": 1.0}, tmp_path / "r.json"))
    # Files a person made: real images and JSON without the tag, text, links, folders.
    (tmp_path / "photo.png").write_bytes(encode(img, "png"))
    (tmp_path / "photo.jpg").write_bytes(encode(img, "jpeg"))
    (tmp_path / "notes.json").write_text(json.dumps({"fid": 3}))
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    for name in ("photo.png", "photo.jpg", "notes.json", "text.png", "link.png"):
        assert not is_ours(tmp_path / name), name
    outs = Outputs.resolve(tmp_path, "grid.png", IMAGE_SUFFIXES)
    outs.claim([tmp_path / "a.png", tmp_path / "m.gif", tmp_path / "new.png"])  # ours or new
    for name in ("photo.png", "notes.json", "link.png", "text.png"):
        with pytest.raises(UserError, match="not written by dcgan-curate"):
            outs.claim([tmp_path / name])
    (tmp_path / "sub.png").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        outs.claim([tmp_path / "sub.png"])


# -- the commands -----------------------------------------------------------------------------
def test_sample_suffix_is_the_format(run, tmp_path):
    for name, kind in (("s.jpg", "jpeg"), ("s.jpeg", "jpeg"), ("s.webp", "webp"),
                       ("s.png", "png")):
        r = invoke("sample", run, "--n", 4, "--out", tmp_path / name, "--quiet")
        assert r.exit_code == 0, r.output
        assert (tmp_path / name).is_file() and magic(tmp_path / name) == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jpeg", "s.jpg", "s.png", "s.webp"]
    assert invoke("sample", run, "--n", 4, "--out", tmp_path / "s.png").exit_code == 0  # rerun


def test_folder_without_suffix_is_created_with_parents(run, tmp_path):
    r = invoke("sample", run, "--n", 3, "--out", tmp_path / "a" / "b")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [
        "00000.png", "00001.png", "00002.png", "grid.png"]
    assert r.output.strip().endswith(f"3 single PNGs in {tmp_path / 'a' / 'b'}")


@pytest.mark.parametrize("args,message", [
    (["interpolate", "--out", "walk.txt"], "unknown file type '.txt'"),
    (["sample", "--out", "nonexistent/dir/s.png"], "nonexistent/dir does not exist"),
    (["fid", "--data", "x", "--out", "fid.csv"], "unknown file type '.csv'"),
])
def test_bad_out_is_one_line_and_creates_nothing(run, tmp_path, args, message):
    args = [*args[:1], run, *[str(tmp_path / a) if a.endswith((".txt", ".png", ".csv"))
                              else a for a in args[1:]]]
    r = run_cli(*args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_interpolate_names_the_animation_after_the_grid(run, tmp_path):
    r = invoke("interpolate", run, "--out", tmp_path / "w.jpg", "--rows", 2, "--steps", 3)
    assert r.exit_code == 0, r.output
    assert magic(tmp_path / "w.jpg") == "jpeg" and magic(tmp_path / "w.gif") == "gif"
    r = invoke("interpolate", run, "--out", tmp_path / "anim.gif", "--rows", 2, "--steps", 3)
    assert r.exit_code == 0, r.output
    assert magic(tmp_path / "anim.gif") == "gif" and magic(tmp_path / "anim.png") == "png"
    r = invoke("interpolate", run, "--out", tmp_path / "dir", "--rows", 2, "--steps", 3)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["walk.gif", "walk.png"]


def test_arithmetic_file_puts_candidates_beside_it(run, tmp_path):
    r = invoke("arithmetic", run, "--out", tmp_path / "ar.png", "--n", 8, "--a", "1",
               "--b", "2", "--c", "3")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar-candidates.png", "ar.png"]


def test_a_users_files_are_never_replaced(run, data32, tmp_path):
    """An existing file the tool did not write (here: a photo, notes, a link to a photo)
    stops the command before any work, with one line, and every byte stays."""
    photo = encode(np.full((8, 8, 3), 7, np.uint8), "png")
    (tmp_path / "photo.png").write_bytes(photo)
    (tmp_path / "mem").mkdir()
    (tmp_path / "mem" / "memorization.json").write_text('{"mine": 1}')
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "00001.png").write_bytes(photo)  # a name sample's singles take
    os.symlink(tmp_path / "keep" / "00001.png", tmp_path / "link.png")
    (tmp_path / "w.gif").write_bytes(b"GIF89a my animation")
    before = snapshot(tmp_path)
    for args in (["sample", run, "--out", tmp_path / "photo.png"],
                 ["sample", run, "--n", 2, "--out", tmp_path / "keep"],
                 ["filters", run, "--out", tmp_path / "link.png"],
                 ["interpolate", run, "--out", tmp_path / "w.png"],  # the .gif beside it
                 ["memorization", run, "--data", data32, "--out", tmp_path / "mem"],
                 ["fid", run, "--data", data32, "--out", tmp_path / "mem" / "memorization.json"]):
        r = run_cli(*args)
        assert r.returncode == 2 and "not written by dcgan-curate" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_quiet_silences_the_summary(run, tmp_path):
    r = invoke("sample", run, "--n", 2, "--out", tmp_path / "q.png", "--quiet")
    assert r.exit_code == 0 and r.output == ""
    r = invoke("sample", run, "--n", 2, "--out", tmp_path / "q.png")
    assert r.output.strip().splitlines() == [f"Wrote 2 samples (seed 0): {tmp_path / 'q.png'}"]
