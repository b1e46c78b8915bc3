"""The report of a dataset chain: its HTML against stats.json and the pixels of the inputs,
its safety rules, and the page in a real browser (Debian's Chromium driven by Selenium;
those tests skip, with the reason, where the browser is not installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from report_chains import (
    load_all_images,
    open_page,
    planted_lsun,
    start_chromium,
    write_filter,
)

from pipeline.dataset import Dataset
from pipeline.decode import decode
from pipeline.errors import UserError
from pipeline.report import ReportConfig, files_folder, write_report

ROOT = Path(__file__).resolve().parents[1]


# -- the chain --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """LSUN (planted issues, near-duplicates, corrupt) -> extract -> dedup -> filter, the
    same through a flag-only filter, and a folder of photos -> faces; all real stages but
    the filter, written to its contract."""
    from pipeline.dedup.stage import DedupConfig, dedup_lsun
    from pipeline.extract import ExtractConfig
    from pipeline.faces import detect_faces
    from pipeline.lsun import LsunSource
    from pipeline.sources import FolderSource

    root = tmp_path_factory.mktemp("chain")
    db, records = planted_lsun(root / "lsun" / "planted_train_lmdb")
    dedup_lsun(LsunSource([db]), root / "scenes", DedupConfig(steps=40, device="cpu"),
               ExtractConfig(workers=1), progress=False)
    write_filter(root / "scenes", root / "clean", records)
    write_filter(root / "scenes", root / "flagged", records, flag_only=True)
    _face_folder(root / "photos")
    detect_faces(FolderSource(root / "photos"), root / "faces", _faces_config(),
                 progress=False)
    return {"root": root, "db": db, "records": records, "scenes": root / "scenes",
            "extracted": root / "scenes" / "extracted", "clean": root / "clean",
            "flagged": root / "flagged", "faces": root / "faces", "photos": root / "photos"}


def _face_folder(path: Path) -> None:
    """The demo's face photos, plus the astronaut at 3/4 size: her face (~70 px) is found
    but smaller than ``min_size`` 80."""
    import cv2
    from skimage import data

    from demo.run import build_face_folder
    from demo.samples import encode

    build_face_folder(path)
    img = data.astronaut()
    small = cv2.resize(img, (384, 384), interpolation=cv2.INTER_AREA)
    (path / "small" / "astronaut.jpg").parent.mkdir()
    (path / "small" / "astronaut.jpg").write_bytes(encode(small, "jpeg", 92))


def _faces_config():
    from pipeline.face_detectors import DetectorSpec
    from pipeline.faces import FacesConfig

    return FacesConfig(min_size=80, workers=1, detector=DetectorSpec(rotations=()))


@pytest.fixture(scope="module")
def report(chain, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report([chain["clean"], chain["faces"]], out)
    return out


class Page(HTMLParser):
    """The parts of a report page the tests read: stage sections with their counts,
    galleries with their items, in document order."""

    def __init__(self, path: Path):
        super().__init__()
        self.sections: list[dict] = []
        self.galleries: list[dict] = []
        self.chain_rows: list[dict] = []
        self._stat: tuple[dict, str] | None = None
        self._row: dict | None = None
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-path" in a:
            self.sections.append({"path": a["data-path"], "stats": {}, "galleries": []})
        if tag == "tr" and "data-path" in a:
            self._row = {"path": a["data-path"], "stats": {}}
            self.chain_rows.append(self._row)
        if "data-stat" in a:
            target = self._row if self._row is not None else self.sections[-1]
            self._stat = (target, a["data-stat"])
        if "gallery" in a.get("class", "").split():
            g = {"slug": a["data-slug"], "total": int(a["data-total"]),
                 "shown": int(a["data-shown"]), "items": []}
            self.galleries.append(g)
            if self.sections:
                self.sections[-1]["galleries"].append(g)
        if tag == "figure" and "item" in a.get("class", "").split():
            self.galleries[-1]["items"].append(
                {"key": a["data-key"], "value": a.get("data-value"),
                 "kind": a["class"].split()[1:], "img": None, "ph": None})
        if tag == "img" and self.galleries and self.galleries[-1]["items"]:
            item = self.galleries[-1]["items"][-1]
            if item["img"] is None:
                item["img"] = a["src"]
        if tag == "div" and a.get("class") == "ph":
            self._stat = (self.galleries[-1]["items"][-1], "ph")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._stat is not None:
            target, name = self._stat
            if name == "ph":
                target["ph"] = data
            else:
                target["stats"][name] = int(data.replace(",", ""))
            self._stat = None


def _expected_stats(stats: dict) -> dict[str, int]:
    out = {"read": stats["read"], "kept": stats["kept"]}
    for field in ("dropped", "carried", "flagged"):
        out.update({f"{field}.{r}": n for r, n in (stats.get(field) or {}).items()})
    return out


def _section(page: Page, path: Path) -> dict:
    return next(s for s in page.sections if s["path"] == str(Path(path).resolve()))


def _png(report: Path, src: str) -> np.ndarray:
    import cv2

    return cv2.imread(str(report.parent / src), cv2.IMREAD_COLOR)[..., ::-1]


# -- the page's content --------------------------------------------------------------------
def test_counts_on_the_page_equal_stats_json(chain, report):
    page = Page(report)
    paths = [chain[k] for k in ("extracted", "scenes", "clean", "faces")]
    assert [s["path"] for s in page.sections] == [str(p.resolve()) for p in paths]
    for part in page.sections + page.chain_rows:
        stats = json.loads((Path(part["path"]) / "stats.json").read_text())
        assert part["stats"] == _expected_stats(stats), part["path"]
    assert _section(page, chain["clean"])["stats"]["dropped.dark"] == 4


def test_a_gallery_per_drop_reason_with_its_total(chain, report):
    page = Page(report)
    for name in ("extracted", "scenes", "clean"):
        stats = Dataset(chain[name]).stats
        galleries = {g["slug"]: g for g in _section(page, chain[name])["galleries"]}
        for reason, n in stats["dropped"].items():
            g = galleries[f"drop-{reason}"]
            assert g["total"] == n  # under the limit: all shown (duplicates: by group)
            shown = sum("removed" in i["kind"] for i in g["items"]) \
                if reason == "duplicate" else g["shown"]
            assert shown == n
    corrupt = next(g for g in _section(page, chain["extracted"])["galleries"])
    assert all(i["img"] is None and i["ph"].startswith("corrupt") for i in corrupt["items"])
    # Sorted by the deciding measure, each item's value being its rejected row's.
    rejected = {r["key"]: r for r in Dataset(chain["clean"]).drops("rejected")}
    dark = next(g for g in _section(page, chain["clean"])["galleries"]
                if g["slug"] == "drop-dark")
    values = [float(i["value"]) for i in dark["items"]]
    assert values == sorted(values)
    assert values == pytest.approx(sorted(rejected[i["key"]]["value"] for i in dark["items"]),
                                   rel=1e-5)


def test_pictures_of_dropped_items_come_from_the_input(chain, report):
    """Dropped pixels are not in the output: each picture is the input's row of that key
    (dedup's removed and kept items from the extraction, the filter's from dedup's output)."""
    page = Page(report)
    for stage, source in (("scenes", "extracted"), ("clean", "scenes")):
        src = Dataset(chain[source])
        rows = src.find([i["key"] for g in _section(page, chain[stage])["galleries"]
                         if g["slug"].startswith("drop-") for i in g["items"]])
        items = [i for g in _section(page, chain[stage])["galleries"]
                 if g["slug"].startswith("drop-") for i in g["items"]]
        assert items and all(i["key"] in rows for i in items)
        for i in items:
            assert np.array_equal(_png(report, i["img"]), src.images[rows[i["key"]]])
    kept = [i for g in _section(page, chain["scenes"])["galleries"] for i in g["items"]
            if "kept" in i["kind"]]
    groups = {d["duplicate_of"] for d in Dataset(chain["scenes"]).drops("duplicates")}
    assert {i["key"] for i in kept} == groups  # each group's kept image, once
    assert set(Dataset(chain["scenes"]).find([i["key"] for i in kept])) == groups


def test_faces_with_their_photo_and_box(chain, report):
    from pipeline.faces import crop_face

    page = Page(report)
    faces = Dataset(chain["faces"])
    rejected = {r["key"]: r for r in faces.drops("rejected")}
    assert "too_small" in faces.stats["dropped"]
    section = _section(page, chain["faces"])
    small = next(g for g in section["galleries"] if g["slug"] == "drop-too_small")
    for item in small["items"]:
        row = rejected[item["key"]]
        photo = decode((chain["photos"] / row["source"]).read_bytes())
        assert np.array_equal(_png(report, item["img"]), crop_face(photo, row["box"], 64))
        assert float(item["value"]) == min(row["box"][2:])
    html = report.read_text()
    for r in faces.manifest:
        assert f'data-key="{r["key"]}"' in html
    assert html.count('class="box kept"') >= len(faces) and 'class="box removed"' in html


def test_galleries_are_sampled_evenly_and_deterministically(chain, tmp_path):
    a, b = tmp_path / "a.html", tmp_path / "b" / "b.html"
    for out in (a, b):
        write_report([chain["clean"]], out, ReportConfig(max_per_gallery=2))
    pa, pb = Page(a), Page(b)
    rejected = Dataset(chain["clean"]).drops("rejected")
    for g in pa.galleries:
        assert g["shown"] == len(g["items"]) <= 2 if g["slug"] != "drop-duplicate" else True
        if g["slug"].startswith("drop-") and g["slug"] not in ("drop-duplicate",
                                                               "drop-corrupt"):
            values = sorted(r["value"] for r in rejected if r["reason"] == g["slug"][5:])
            shown = [float(i["value"]) for i in g["items"]]
            assert shown == pytest.approx([values[0], values[-1]], rel=1e-5)  # both ends
    assert [[i["key"] for i in g["items"]] for g in pa.galleries] == \
        [[i["key"] for i in g["items"]] for g in pb.galleries]
    assert f"showing 2 of {len(Dataset(chain['clean']))}" in a.read_text()  # the kept sample


def test_flag_only_galleries(chain, tmp_path):
    out = tmp_path / "flags.html"
    write_report([chain["flagged"]], out)
    ds = Dataset(chain["flagged"])
    section = _section(Page(out), chain["flagged"])
    galleries = {g["slug"]: g for g in section["galleries"]}
    assert ds.stats["flagged"] and not ds.stats["dropped"]
    for issue, n in ds.stats["flagged"].items():
        g = galleries[f"flag-{issue}"]
        assert g["total"] == n
        rows = ds.find([i["key"] for i in g["items"]])
        for i in g["items"]:
            assert np.array_equal(_png(out, i["img"]), ds.images[rows[i["key"]]])


def test_key_lookup_index_holds_every_decision(chain, report):
    folder = files_folder(report)
    rows = []
    shards = sorted((folder / "keys").glob("*.js"))
    for n, path in enumerate(shards):
        m = re.fullmatch(r"reportKeys\((\d+),(.*)\);\n", path.read_text(), re.S)
        assert int(m[1]) == n
        part = json.loads(m[2])
        assert all(zlib.crc32(r[0].encode()) % len(shards) == n for r in part)
        rows += part
    own = sum(sum(Dataset(chain[k]).stats["dropped"].values())
              for k in ("extracted", "scenes", "clean", "faces"))
    assert len(rows) == own
    dup = next(r for r in rows if r[2] == "duplicate")
    assert dup[3].startswith("duplicate of ") and dup[4]  # shown on the page: an anchor
    assert f'id="{dup[4]}"' in report.read_text()


def test_dataset_lookups_without_parsing_the_manifest(tmp_path):
    """``find``, ``records`` and ``having`` read only what they return; odd keys included."""
    from pipeline.dataset import DatasetWriter

    keys = ['plain', 'quote"in', 'back\\slash', 'unicode é', 'key": "x', '\\x41']
    with DatasetWriter(tmp_path / "d", "test", {}, {"images": (2, 2, 3)}) as w:
        for i, k in enumerate(keys):
            w.add(k, {"images": np.full((2, 2, 3), i, np.uint8)},
                  **({"flags": [{"issue": "dark"}]} if i % 2 else {"flags": []}))
            w.advance()
        w.finish()
    ds = Dataset(tmp_path / "d")
    assert ds.find(keys + ["absent"]) == {k: i for i, k in enumerate(keys)}
    assert ds.records([4, 1]) == {1: ds.manifest[1], 4: ds.manifest[4]}
    fresh = Dataset(tmp_path / "d")
    assert sorted(fresh.having("flags")) == [1, 3, 5]
    with pytest.raises(IndexError):
        fresh.records([6])


# -- safety ---------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_refuses_to_write_inside_datasets_and_inputs(chain, tmp_path):
    before = sorted(p.name for p in chain["scenes"].iterdir())
    for out in (chain["scenes"] / "report.html", chain["scenes"] / "sub" / "r.html",
                chain["photos"] / "report.html", tmp_path / "report.txt"):
        r = run_cli("report", chain["faces"], chain["scenes"], "--out", out, "-q")
        assert r.returncode == 2 and r.stderr.startswith("Error: ")
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists() and not files_folder(out).exists()
    assert sorted(p.name for p in chain["scenes"].iterdir()) == before


def test_never_replaces_a_file_it_did_not_write(chain, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("my notes")
    with pytest.raises(UserError, match="not written by this tool"):
        write_report([chain["scenes"]], out)
    assert out.read_text() == "my notes" and not files_folder(out).exists()
    out.unlink()
    files_folder(out).mkdir()
    (files_folder(out) / "mine.txt").write_text("x")
    with pytest.raises(UserError, match="did not write"):
        write_report([chain["scenes"]], out)
    assert (files_folder(out) / "mine.txt").read_text() == "x" and not out.exists()


def test_rewrites_its_own_page_but_not_an_edited_one(chain, tmp_path):
    out = tmp_path / "report.html"
    write_report([chain["scenes"]], out, ReportConfig(max_per_gallery=3))
    first = set((files_folder(out) / "img").iterdir())
    write_report([chain["clean"]], out, ReportConfig(max_per_gallery=3))  # replaced: ours
    assert "4. filter" in out.read_text()
    assert {p.name for p in (files_folder(out) / "img").iterdir()} != {p.name for p in first}
    with open(out, "a") as f:
        f.write("<!-- edited -->")
    r = run_cli("report", chain["scenes"], "--out", out)
    assert r.returncode == 2 and "not written by this tool (or was changed" in r.stderr
    assert out.read_text().endswith("<!-- edited -->")


def test_a_source_that_is_gone_gets_placeholders(chain, tmp_path):
    from pipeline.faces import detect_faces
    from pipeline.sources import FolderSource

    photos = tmp_path / "photos"
    shutil.copytree(chain["photos"], photos)
    detect_faces(FolderSource(photos), tmp_path / "faces", _faces_config(), progress=False)
    shutil.rmtree(photos)
    out = tmp_path / "r" / "report.html"
    r = run_cli("report", tmp_path / "faces", "--out", out)
    assert r.returncode == 0, r.stderr
    page = Page(out)
    items = [i for g in page.galleries for i in g["items"]]
    kept = [i for i in items if "kept" in i["kind"]]
    assert kept and all(i["img"] for i in kept)  # the dataset's own pixels
    removed = [i for i in items if "removed" in i["kind"]]
    assert removed and all(i["img"] is None and i["ph"] == "not found" for i in removed)
    assert "not found" in out.read_text()


# -- in a real browser --------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """Headless Chromium under Selenium, with the browser's console log."""
    try:
        driver = start_chromium()
    except RuntimeError as e:
        pytest.skip(str(e))
    yield driver
    driver.quit()


def _screenshot(driver, name: str, tmp_path: Path) -> list[Path]:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(height, 12000))
    paths = [tmp_path / name]
    if os.environ.get("REPORT_SCREENSHOT_DIR"):
        Path(os.environ["REPORT_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        paths.append(Path(os.environ["REPORT_SCREENSHOT_DIR"]) / name)
    for p in paths:
        assert driver.save_screenshot(str(p))
    driver.set_window_size(1400, 1000)
    return paths


def test_page_in_chromium(browser, chain, report, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get_log("browser")  # start clean
    ms = open_page(browser, report)
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors
    assert load_all_images(browser) == []  # pictures load lazily, as they are scrolled to
    assert browser.execute_script("return document.images.length") > 50
    # The counts the browser shows are stats.json's.
    for section in browser.find_elements(By.CSS_SELECTOR, "section[data-path], tr[data-path]"):
        stats = json.loads((Path(section.get_attribute("data-path")) / "stats.json")
                           .read_text())
        shown = {e.get_attribute("data-stat"): int(e.text.replace(",", ""))
                 for e in section.find_elements(By.CSS_SELECTOR, "[data-stat]")}
        assert shown == _expected_stats(stats)
    # Sorting: the dark gallery's button turns its order around.
    gallery = browser.find_element(By.CSS_SELECTOR, "section[data-path] .gallery"
                                   "[data-slug='drop-dark']")

    def values():
        return [float(e.get_attribute("data-value"))
                for e in gallery.find_elements(By.CSS_SELECTOR, ".items > .item")]

    before = values()
    assert before == sorted(before) and len(set(before)) > 1
    gallery.find_element(By.CSS_SELECTOR, "button.sort").click()
    assert values() == sorted(before, reverse=True)
    # The key filter: only matching items stay visible, and the counts say so.
    key = Dataset(chain["scenes"]).drops("duplicates")[0]["key"]
    box = browser.find_element(By.ID, "q")
    box.send_keys(key[:12])
    # (a duplicate group or a photo stays whole when one of its items matches)
    visible = browser.execute_script(
        "return Array.from(document.querySelectorAll('.gallery')).flatMap(g => "
        "Array.from(g.querySelector('.items').children)).filter(e => e.offsetParent !== null)"
        ".map(e => [e.dataset.key || ''].concat(Array.from(e.querySelectorAll('[data-key]'))"
        ".map(k => k.dataset.key)))")
    assert len(visible) == 1 and key in visible[0]
    assert "1 of the shown match" in browser.find_element(
        By.CSS_SELECTOR, ".gallery[data-slug='drop-duplicate'] .count").text
    # The lookup: Enter finds the full key in the drop lists (loaded from its shard file).
    box.clear()
    box.send_keys(key, Keys.ENTER)
    result = browser.find_element(By.ID, "qres")
    browser.implicitly_wait(0)
    for _ in range(50):
        if "duplicate" in result.text:
            break
        browser.execute_script("return new Promise(r => setTimeout(r, 50))")
    assert "3. dedup: duplicate" in result.text and "duplicate of" in result.text
    box.clear()
    box.send_keys("no-such-key", Keys.ENTER)
    assert "in no drop list" in browser.find_element(By.ID, "qres").text
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    browser.execute_script("const q = document.getElementById('q'); q.value = '';"
                           "q.dispatchEvent(new Event('input')); window.scrollTo(0, 0)")
    assert browser.find_element(By.ID, "qres").text == ""
    paths = _screenshot(browser, "report.png", tmp_path)
    print(f"report page loaded in {ms:.0f} ms; screenshot: {paths[-1]}")
    assert paths[0].stat().st_size > 10000


def test_the_browser_checks_catch_a_missing_picture(browser, report, tmp_path):
    """The checks above can fail: a copy of the page with one picture deleted."""
    page = tmp_path / report.name
    shutil.copy(report, page)
    shutil.copytree(files_folder(report), files_folder(page))
    gone = sorted((files_folder(page) / "img").glob("*.png"))[0]
    gone.unlink()
    browser.get_log("browser")
    open_page(browser, page)
    assert [Path(s).name for s in load_all_images(browser)] == [gone.name]
    assert any(gone.name in e["message"] for e in browser.get_log("browser"))
