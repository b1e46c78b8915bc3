"""The dataset directory: writing, finishing, reading, no-op reruns, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.dataset import Dataset, DatasetWriter, is_dataset
from pipeline.dataset.names import MARKER
from pipeline.errors import UserError

ARRAYS = {"images": (8, 8, 3)}


def _img(i: int) -> np.ndarray:
    return np.full((8, 8, 3), i, np.uint8)


def _crash(w: DatasetWriter) -> None:
    """What a killed process leaves: open files closed by the kernel, nothing written, the
    lock released."""
    for part in w._parts.values():
        part.f.close()
    w.out.close()


def test_write_finish_read(tmp_path):
    with DatasetWriter(tmp_path / "d", "test", {"a": 1}, ARRAYS) as w:
        assert not w.done and w.position == 0
        for i in range(5):
            w.add(f"k{i}", {"images": _img(i)}, extra=i)
            w.advance()
        w.drop("bad", "corrupt", detail="x")
        w.advance()
        r = w.finish()
    assert r.kept == 5 and r.read == 6 and r.dropped == {"corrupt": 1} and not r.skipped
    d = Dataset(tmp_path / "d")
    assert len(d) == 5 and is_dataset(tmp_path / "d")
    assert isinstance(d.images, np.memmap) and d.images.shape == (5, 8, 8, 3)
    img, rec = d[3]
    assert (img == 3).all() and rec == {"id": 3, "key": "k3", "extra": 3}
    assert d.drops() == [{"key": "bad", "reason": "corrupt", "detail": "x"}]
    assert d.drop_files == ["rejected"] and d.array_names == ["images"]
    assert not list((tmp_path / "d").glob("*.partial"))
    assert json.loads((tmp_path / "d" / "config.json").read_text())["config"] == {"a": 1}


def test_rerun_same_config_is_noop_and_different_is_refused(tmp_path):
    with DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS) as w:
        w.add("k", {"images": _img(1)})
        w.finish()
    marker = (tmp_path / MARKER).read_text()
    with DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS) as w:
        assert w.done and w.result.skipped and w.result.kept == 1
    assert (tmp_path / MARKER).read_text() == marker
    with pytest.raises(UserError, match=r"other settings \(a 1 -> 2\)") as e:
        DatasetWriter(tmp_path, "test", {"a": 2}, ARRAYS).__enter__()
    assert e.value.param == "overwrite"
    with DatasetWriter(tmp_path, "test", {"a": 2}, ARRAYS, overwrite=True) as w:
        assert not w.done and not (tmp_path / MARKER).exists()


def test_interrupted_run_resumes_from_checkpoint(tmp_path):
    w = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS).__enter__()
    for i in range(3):
        w.add(f"k{i}", {"images": _img(i)})
        w.advance()
    w.drop("d0", "corrupt")
    w.advance()
    w.checkpoint()
    w.add("lost", {"images": _img(9)})  # written after the checkpoint: discarded on resume
    w.advance()
    _crash(w)
    with DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS) as w2:
        assert w2.position == 4 and w2.kept == 3
        w2.add("k3", {"images": _img(3)})
        w2.advance()
        r = w2.finish()
    d = Dataset(tmp_path)
    assert [r["key"] for r in d.manifest] == ["k0", "k1", "k2", "k3"]
    assert [int(x[0, 0, 0]) for x in d.images] == [0, 1, 2, 3]
    assert r.read == 5 and r.dropped == {"corrupt": 1}


def test_changed_config_restarts_interrupted_run(tmp_path):
    w = DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS).__enter__()
    w.add("k0", {"images": _img(0)})
    w.advance()
    w.checkpoint()
    _crash(w)
    with DatasetWriter(tmp_path, "test", {"a": 2}, ARRAYS) as w2:
        assert w2.position == 0 and w2.kept == 0


def test_refuses_foreign_folder_and_unfinished_read(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"did not write \(notes.txt\)"):
            DatasetWriter(tmp_path, "test", {}, ARRAYS, overwrite=overwrite).__enter__()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created
    with pytest.raises(UserError, match="not a dataset directory"):
        Dataset(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        Dataset(tmp_path / "missing")


def test_wrong_shape_is_rejected(tmp_path):
    with DatasetWriter(tmp_path, "test", {}, ARRAYS) as w, \
            pytest.raises(ValueError, match="expected uint8 rows"):
        w.add("k", {"images": np.zeros((4, 4, 3), np.uint8)})


def test_unwritable_output_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")  # a parent that is a file: mkdir fails like EACCES
    with pytest.raises(UserError, match="cannot write"):
        DatasetWriter(tmp_path / "file" / "d", "test", {}, ARRAYS).__enter__()


def test_abort_mid_item_never_keeps_an_item_twice(tmp_path):
    """Ctrl-C (or a disk error) between ``add`` and ``advance``: the checkpoint written on
    the way out records the last item boundary, so the half-written item is redone once."""
    with pytest.raises(KeyboardInterrupt), \
            DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS) as w:
        w.add("k0", {"images": _img(0)})
        w.advance()
        w.add("k1", {"images": _img(1)})  # its source item is not yet marked consumed
        w.drop("d1", "corrupt", file="late")  # a drop file begun after the last boundary
        raise KeyboardInterrupt
    with DatasetWriter(tmp_path, "test", {"a": 1}, ARRAYS) as w2:
        assert w2.position == 1 and w2.kept == 1
        w2.add("k1", {"images": _img(1)})
        w2.advance()
        w2.finish()
    d = Dataset(tmp_path)
    assert [r["key"] for r in d.manifest] == ["k0", "k1"] and d.images.shape[0] == 2
    assert not (tmp_path / "late.jsonl").exists() and d.drop_files == []


def test_run_stopped_before_any_checkpoint_resumes(tmp_path):
    """A crash before the first timed checkpoint still leaves a resumable directory, not
    one the next run refuses as foreign."""
    w = DatasetWriter(tmp_path / "d", "test", {"a": 1}, ARRAYS).__enter__()
    w.add("k0", {"images": _img(0)})
    w.advance()  # no checkpoint yet, then a hard crash
    _crash(w)
    with DatasetWriter(tmp_path / "d", "test", {"a": 1}, ARRAYS) as w2:
        assert w2.position == 0 and w2.kept == 0
        w2.add("k0", {"images": _img(0)})
        w2.advance()
        assert w2.finish().kept == 1


def test_copy_many_copies_rows_file_to_file_and_resumes(tmp_path):
    """Rows of another dataset's memory map, copied in the kernel, in runs; the same bytes as
    writing them through memory, and a checkpointed copy resumes like any write."""
    with DatasetWriter(tmp_path / "src", "test", {}, ARRAYS) as src:
        src.add_many([f"k{i}" for i in range(10)],
                     {"images": np.stack([_img(i) for i in range(10)])})
        src.finish()
    images = Dataset(tmp_path / "src").images
    rows = np.array([0, 1, 2, 5, 7, 8])  # three runs
    via_copy = DatasetWriter(tmp_path / "a", "test", {}, ARRAYS).__enter__()
    via_copy.copy_many([f"k{i}" for i in rows[:3]], {"images": images}, rows[:3])
    via_copy.advance(3)
    via_copy.checkpoint()
    via_copy.copy_many(["lost"], {"images": images}, np.array([9]))  # after the checkpoint
    _crash(via_copy)
    with DatasetWriter(tmp_path / "a", "test", {}, ARRAYS) as resumed:
        assert resumed.kept == 3
        resumed.copy_many([f"k{i}" for i in rows[3:]], {"images": images}, rows[3:])
        resumed.finish()
    with DatasetWriter(tmp_path / "b", "test", {}, ARRAYS) as via_memory:
        via_memory.copy_many([f"k{i}" for i in rows], {"images": np.array(images)}, rows)
        via_memory.finish()
    for name in ("images.npy", "manifest.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert [int(x[0, 0, 0]) for x in Dataset(tmp_path / "a").images] == rows.tolist()
