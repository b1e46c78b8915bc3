"""What a person meets on the command line (issue 17): errors that name what differs and
the flag to change, one line for bad values, summaries that add up, progress that suits a
log file, and nothing left behind by a refused run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo.samples import encode

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def lines(text: str) -> list[str]:
    return [ln for ln in text.strip().splitlines()
            if ln and not ln.startswith(("Corrupt JPEG data", "Premature end of JPEG"))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, jpeg_folder) -> Path:
    """conftest's 60 photos and one broken file."""
    root = tmp_path_factory.mktemp("msg") / "photos"
    shutil.copytree(jpeg_folder, root)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return root


@pytest.fixture(scope="module")
def dataset(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("msgds") / "ds"
    r = cli("extract", "images", str(folder), "--out", str(out), "--resolution", "32", "-q")
    assert r.returncode == 0, r.stderr
    return out


def test_changed_settings_name_only_what_differs(folder, dataset):
    r = cli("extract", "images", str(folder), "--out", str(dataset), "--resolution", "48")
    assert r.returncode == 2 and len(lines(r.stderr)) == 1
    assert "(resolution 32 -> 48); pass --overwrite to replace it" in r.stderr
    assert "{" not in r.stderr  # no dicts


def test_rerun_says_nothing_to_do_once(folder, dataset):
    r = cli("extract", "images", str(folder), "--out", str(dataset), "--resolution", "32")
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert "already finished" not in r.stderr and "nothing to do" not in r.stderr


def test_an_extraction_that_keeps_nothing_is_an_error(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.jpg").write_text("not an image")
    r = cli("extract", "images", str(junk), "--out", str(tmp_path / "o"), "-q")
    assert r.returncode == 2 and len(lines(r.stderr)) == 1, r.stderr
    assert "nothing was kept: all 3 records were dropped (3 corrupt)" in r.stderr


def test_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("hi")
    r = cli("dedup", str(tmp_path / "x"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and len(lines(r.stderr)) == 1
    assert "is not a dataset directory" in r.stderr and "COMPLETE" not in r.stderr


def test_dedup_summary_reports_stage_times_and_input_drops(dataset, tmp_path):
    r = cli("dedup", str(dataset), "--out", str(tmp_path / "d"), "--limit", "35",
            "--epochs", "1")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Read 35 images" in out and "records/s" not in out
    assert "train " in out and "search " in out and "write " in out
    # The input's corrupt record is reported apart, not as a drop of this run.
    assert "The input had already dropped 1 (1 corrupt)" in out


def test_refused_dedup_creates_nothing(dataset, tmp_path):
    out = tmp_path / "few"
    r = cli("dedup", str(dataset), "--out", str(out), "--limit", "20")
    assert r.returncode == 2 and "at least 32" in r.stderr and "(--model)" in r.stderr
    assert not out.exists()


def test_progress_in_a_log_is_a_few_lines(folder, tmp_path):
    """Without a terminal, progress is logged as lines, not redrawn with carriage returns."""
    r = cli("extract", "images", str(folder), "--out", str(tmp_path / "o"))
    assert r.returncode == 0
    assert "\r" not in r.stderr
    assert any(ln.startswith("extract: 61/61 img") for ln in lines(r.stderr)), r.stderr


def test_bad_values_are_one_line(tmp_path, folder):
    for args in (["extract", "images", str(folder), "--out", str(tmp_path / "o"),
                  "--resolution", "4"],
                 ["dedup", str(tmp_path), "--out", str(tmp_path / "o"), "--min-similarity",
                  "2"],
                 ["extract", "images"]):
        r = cli(*args)
        assert r.returncode == 2 and len(lines(r.stderr)) == 1, r.stderr
        assert r.stderr.startswith("Error: ") and "--help" in r.stderr


def test_help_is_plain(tmp_path):
    r = cli("extract", "images", "--help")
    assert r.returncode == 0 and "<bool>" not in r.stdout and "╭" not in r.stdout
    assert "FOLDER" in r.stdout
    r = cli("--help")
    assert "extract" in r.stdout and "Fig.\n" not in r.stdout


def test_dry_run_prints_config_the_same_way(folder, tmp_path):
    for args in (["extract", "images", str(folder)], ["detect-faces", str(folder)]):
        r = cli(*args, "--out", str(tmp_path / "o"), "--dry-run")
        assert r.returncode == 0 and r.stdout.startswith("config:\n"), r.stdout
    assert not (tmp_path / "o").exists()


def test_lsun_names_typed_slightly_wrong(tmp_path, photos):
    """A category close to one there is suggested; a bad split is named; a root given
    without a category says which databases it holds (issue 17)."""
    from demo.samples import lsun_key, write_lmdb

    rng = np.random.default_rng(0)
    for name in ("bedroom_train_lmdb", "church_outdoor_train_lmdb"):
        write_lmdb(tmp_path / name, [(lsun_key(rng), encode(photos[0], "webp"))])
    for args, said in (
        (["--category", "bedrom"], "holds no bedrom_train_lmdb; did you mean bedroom? "
                                   "(there: bedroom_train_lmdb, church_outdoor_train_lmdb)"),
        (["--category", "kitchen"], "holds no kitchen_train_lmdb (there: bedroom_train_lmdb"),
        (["--category", "bedroom", "--split", "vall"], "--split must be one of train, val, "
                                                       "test (got 'vall')"),
        ([], "is a folder of LSUN databases (bedroom_train_lmdb, church_outdoor_train_lmdb): "
             "give one of them, or the folder with a --category (e.g. --category bedroom)"),
    ):
        r = cli("extract", "lsun", str(tmp_path), "--out", str(tmp_path / "o"), *args)
        assert r.returncode == 2 and len(lines(r.stderr)) == 1 and said in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
