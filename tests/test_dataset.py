"""The dataset directory: writing, finishing, reading, no-op reruns, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.dataset import MARKER, Dataset, DatasetWriter, is_dataset
from pipeline.errors import UserError

ARRAYS = {"images": (8, 8, 3)}


def _img(i: int) -> np.ndarray:
    return np.full((8, 8, 3), i, np.uint8)


def test_write_finish_read(tmp_path):
    w = DatasetWriter(tmp_path / "d", "test", {"a": 1}, ARRAYS)
    assert not w.done and w.position == 0
    for i in range(5):
        w.add(f"k{i}", {"images": _img(i)}, extra=i)
        w.advance()
    w.drop("bad", "corrupt", detail="x")
    w.advance()
    stats = w.finish()
    assert stats["kept"] == 5 and stats["read"] == 6 and stats["dropped"] == {"corrupt": 1}
    d = Dataset(tmp_path / "d")
    assert len(d) == 5 and is_dataset(tmp_path / "d")
    assert isinstance(d.images, np.memmap) and d.images.shape == (5, 8, 8, 3)
    img, rec = d[3]
    assert (img == 3).all() and rec == {"id": 3, "key": "k3", "extra": 3}
    assert d.drops() == [{"key": "bad", "reason": "corrupt", "detail": "x"}]
    assert not list((tmp_path / "d").glob("*.partial"))
    assert json.loads((tmp_path / "d" / "config.json").read_text())["config"] == {"a": 1}


def test_rerun_same_config_is_noop_and_different_is_refused(tmp_path):
    w = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS)
    w.add("k", {"images": _img(1)})
    w.finish()
    marker = (tmp_path / MARKER).read_text()
    assert DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS).done
    assert (tmp_path / MARKER).read_text() == marker
    with pytest.raises(UserError, match="different finished dataset.*a=1 vs 2"):
        DatasetWriter(tmp_path, "test", {"a": 2}, ARRAYS)
    w = DatasetWriter(tmp_path, "test", {"a": 2}, ARRAYS, overwrite=True)
    assert not w.done and not (tmp_path / MARKER).exists()


def test_interrupted_run_resumes_from_checkpoint(tmp_path):
    w = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS)
    for i in range(3):
        w.add(f"k{i}", {"images": _img(i)})
        w.advance()
    w.drop("d0", "corrupt")
    w.advance()
    w.checkpoint()
    w.add("lost", {"images": _img(9)})  # written after the checkpoint: discarded on resume
    w.advance()
    # a crash here: no abort, no finish
    w2 = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS)
    assert w2.position == 4 and w2.kept == 3
    w2.add("k3", {"images": _img(3)})
    w2.advance()
    stats = w2.finish()
    d = Dataset(tmp_path)
    assert [r["key"] for r in d.manifest] == ["k0", "k1", "k2", "k3"]
    assert [int(x[0, 0, 0]) for x in d.images] == [0, 1, 2, 3]
    assert stats["read"] == 5 and stats["dropped"] == {"corrupt": 1}


def test_changed_config_restarts_interrupted_run(tmp_path):
    w = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS)
    w.add("k0", {"images": _img(0)})
    w.advance()
    w.checkpoint()
    w2 = DatasetWriter(tmp_path, "test", {"a": 2}, ARRAYS)
    assert w2.position == 0 and w2.kept == 0


def test_refuses_non_dataset_folder_and_unfinished_read(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a dataset directory"):
        DatasetWriter(tmp_path, "test", {}, ARRAYS)
    assert (tmp_path / "notes.txt").exists()
    with pytest.raises(UserError, match="not a finished dataset"):
        Dataset(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        Dataset(tmp_path / "missing")


def test_wrong_shape_is_rejected(tmp_path):
    w = DatasetWriter(tmp_path, "test", {}, ARRAYS)
    with pytest.raises(ValueError, match="expected uint8"):
        w.add("k", {"images": np.zeros((4, 4, 3), np.uint8)})


def test_unwritable_output_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")  # a parent that is a file: mkdir fails like EACCES
    with pytest.raises(UserError, match="cannot write"):
        DatasetWriter(tmp_path / "file" / "d", "test", {}, ARRAYS)


def test_abort_mid_item_never_keeps_an_item_twice(tmp_path):
    """Ctrl-C (or a disk error) between ``add`` and ``advance``: the checkpoint written by
    ``abort`` records the last item boundary, so the half-written item is redone once."""
    w = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS)
    w.add("k0", {"images": _img(0)})
    w.advance()
    w.add("k1", {"images": _img(1)})  # its source item is not yet marked consumed
    w.drop("d1", "corrupt", file="late")  # a drop file begun after the last boundary
    w.abort()
    w2 = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS)
    assert w2.position == 1 and w2.kept == 1
    w2.add("k1", {"images": _img(1)})
    w2.advance()
    w2.finish()
    d = Dataset(tmp_path)
    assert [r["key"] for r in d.manifest] == ["k0", "k1"] and d.images.shape[0] == 2
    assert not (tmp_path / "late.jsonl").exists()


def test_run_stopped_before_any_checkpoint_resumes(tmp_path):
    """A crash before the first timed checkpoint (no abort) still leaves a resumable
    directory, not one the next run refuses as foreign."""
    w = DatasetWriter(tmp_path / "d", "test", {"a": 1}, ARRAYS)
    w.add("k0", {"images": _img(0)})
    w.advance()  # no checkpoint yet, then a hard crash
    w2 = DatasetWriter(tmp_path / "d", "test", {"a": 1}, ARRAYS)
    assert w2.position == 0 and w2.kept == 0
    w2.add("k0", {"images": _img(0)})
    w2.advance()
    assert w2.finish()["kept"] == 1


def test_copy_many_copies_rows_file_to_file_and_resumes(tmp_path):
    """Rows of another dataset's memory map, copied in the kernel, in runs; the same bytes as
    writing them through memory, and a checkpointed copy resumes like any write."""
    src = DatasetWriter(tmp_path / "src", "test", {}, ARRAYS)
    src.add_many([f"k{i}" for i in range(10)], {"images": np.stack([_img(i) for i in range(10)])})
    src.finish()
    images = Dataset(tmp_path / "src").images
    rows = np.array([0, 1, 2, 5, 7, 8])  # three runs
    via_copy = DatasetWriter(tmp_path / "a", "test", {}, ARRAYS)
    via_copy.copy_many([f"k{i}" for i in rows[:3]], {"images": images}, rows[:3])
    via_copy.advance(3)
    via_copy.checkpoint()
    via_copy.copy_many(["lost"], {"images": images}, np.array([9]))  # after the checkpoint
    resumed = DatasetWriter(tmp_path / "a", "test", {}, ARRAYS)
    assert resumed.kept == 3
    resumed.copy_many([f"k{i}" for i in rows[3:]], {"images": images}, rows[3:])
    resumed.finish()
    via_memory = DatasetWriter(tmp_path / "b", "test", {}, ARRAYS)
    via_memory.copy_many([f"k{i}" for i in rows], {"images": np.array(images)}, rows)
    via_memory.finish()
    for name in ("images.npy", "manifest.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert [int(x[0, 0, 0]) for x in Dataset(tmp_path / "a").images] == rows.tolist()
