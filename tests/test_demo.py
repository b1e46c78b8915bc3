"""The demo end to end at a reduced size: every stage runs and the report adds up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.dataset import Dataset

ROOT = Path(__file__).resolve().parents[1]


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "demo", "--out", str(out),
                           "--steps", "4", "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=600)


def test_demo_reduced(tmp_path):
    out = tmp_path / "demo"
    r = _demo(out, "--scenes", "240")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Demo finished" in r.stdout and "Traceback" not in r.stderr
    report = json.loads((out / "report.json").read_text())
    planted = report["lsun"]["planted_duplicates"]
    assert planted == 48  # 20% of 240 scenes
    # every record is accounted for: kept + removed + corrupt
    d = report["dedup"]
    assert d["kept"] + d["removed"] + 1 == report["lsun"]["records"]
    assert d["dropped"]["corrupt"] == 1
    assert d["planted_found"] >= planted * 0.8  # most planted copies are found...
    assert d["removed"] <= planted + 8  # ...and little else is removed
    assert len(Dataset(out / "scenes")) == d["kept"]
    assert report["faces"]["faces_kept"] >= 1  # the astronaut at least
    assert report["train"]["steps"] == 4
    for png in (d["review_sheet"], report["faces"]["sheet"], report["train"]["samples"]):
        assert Path(png).stat().st_size > 1000
    # a second run reuses every finished stage: none of their datasets is written again
    stages = ("scenes", "clean", "faces")
    before = {s: (out / s / "COMPLETE").stat().st_mtime_ns for s in stages}
    r2 = _demo(out, "--scenes", "240", "-q")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert {s: (out / s / "COMPLETE").stat().st_mtime_ns for s in stages} == before
    # Other settings make another database: the demo's folders are its own, so the stages
    # that depend on it are redone without asking (issue 17), and the report is new.
    r3 = _demo(out, "--scenes", "250", "-q")
    assert r3.returncode == 0, r3.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    lsun = report["lsun"]
    scenes = lsun["records"] - lsun["planted_duplicates"] - 1
    # The new database, not the old one: 20% of 250 scenes (or of fewer, when the package
    # photos without opencv-doc hold fewer distinct tiles than that).
    assert scenes > 240 and lsun["planted_duplicates"] == round(0.2 * scenes)
    d = report["dedup"]
    assert d["kept"] + d["removed"] + 1 == report["lsun"]["records"]
    assert len(Dataset(out / "scenes")) == d["kept"] and report["train"]["steps"] == 4
    # --overwrite makes everything again: the same numbers.
    r4 = _demo(out, "--scenes", "250", "--overwrite", "-q")
    assert r4.returncode == 0, r4.stderr[-2000:]
    again = json.loads((out / "report.json").read_text())
    assert again["dedup"] == d and again["lsun"] == report["lsun"]
