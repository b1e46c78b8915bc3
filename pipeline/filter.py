"""The filter stage: a dataset without the images that have quality issues.

Reads the input's ``measures`` table (recorded when extraction or face detection decoded each
image), so choosing other limits never decodes again; flags every image with
``quality.flag_issues`` (absolute limits, tightened by the collection's own spread) and drops
those whose first issue is one of ``drop``. Each dropped image goes to ``rejected.jsonl`` with
its ``reason`` (the issue) and the ``measure``, ``value`` and ``threshold`` that decided; with
``flag_only`` every image is kept and its flags go in the manifest. Kept rows are copied file
to file, every array of the input with them. An LSUN database or a folder is extracted first
into the output (``extract.extract_within``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import Dataset, DatasetWriter, StageResult
from pipeline.errors import UserError, at_least
from pipeline.outputs import OutputDir, check_separate
from pipeline.progress import progress_bar
from pipeline.quality import (
    CONDITIONS,
    ISSUES,
    MEASURES,
    RULES,
    Flag,
    QualityConfig,
    drop_reason,
    flag_issues,
    measure_batch,
    table_columns,
    thresholds,
)
from pipeline.sources import DatasetSource, Source
from pipeline.stage import carry_drops, identity

log = logging.getLogger(__name__)

TABLE = "measures"  # the dataset table this stage reads
_WRITE_BLOCK = 1024  # items written at once, then a commit point


@dataclass(frozen=True)
class FilterConfig:
    rules: QualityConfig = field(default_factory=QualityConfig)  # limits; issues that drop
    flag_only: bool = False  # keep every image: flags only recorded (manifest `flags`)
    limit: int | None = None  # only the first N items of the dataset

    def __post_init__(self) -> None:
        at_least(self, limit=1)


def filter_source(source: Source, out: str | Path, config: FilterConfig = FilterConfig(),
                  extract_config: Any = None, *, overwrite: bool = False,
                  progress: bool = True) -> StageResult:
    """Filter any source into ``out``: a dataset directory as it is; an LSUN database or a
    folder extracted first into ``out/extracted`` (kept: a rerun with other limits decodes
    nothing), at ``extract_config`` (default: the rules' resolution)."""
    from pipeline.extract import EXTRACTED, ExtractConfig, extract_within

    if isinstance(source, DatasetSource):
        if len(source) < len(Dataset(source.root)):  # opened with a limit
            config = replace(config, limit=len(source))
        return filter_dataset(source.root, out, config, overwrite=overwrite, progress=progress)
    extract_config = extract_config or ExtractConfig(resolution=config.rules.resolution)
    check_separate(out, source.paths)
    with OutputDir(out, "dataset", source.paths) as held:
        ds, ext = extract_within(held, source, extract_config, overwrite=overwrite,
                                 progress=progress)
        result = _run(ds, held, config, overwrite, progress, keep=(EXTRACTED,))
    return replace(result, extra={**result.extra, "extract_seconds": ext.seconds,
                                  "extract_skipped": ext.skipped})


def filter_dataset(dataset: str | Path, out: str | Path, config: FilterConfig = FilterConfig(),
                   *, overwrite: bool = False, progress: bool = True) -> StageResult:
    """Filter the dataset directory ``dataset`` into ``out``. A rerun with the same input and
    config does nothing; an interrupted run resumes."""
    check_separate(out, [dataset])
    return _run(Dataset(dataset), out, config, overwrite, progress, inputs=[dataset])


def _run(ds: Dataset, out: str | Path | OutputDir, config: FilterConfig, overwrite: bool,
         progress: bool, inputs: list[str | Path] = (), keep: tuple[str, ...] = ()
         ) -> StageResult:
    n = len(ds) if config.limit is None else min(config.limit, len(ds))
    if n == 0:
        raise UserError(f"{ds.root} holds no images to filter")
    sources = {name: ds.array(name) for name in ds.array_names}
    arrays = {name: (a.shape[1:], a.dtype.name) for name, a in sources.items()}
    columns = dict(ds.stats.get("columns", {}))
    stored = ds.has_table(TABLE) and set(MEASURES) <= set(ds.table(TABLE))
    if not stored:  # the output gets the table the input lacks
        arrays[TABLE] = ((len(MEASURES),), "float32")
        columns[TABLE] = list(MEASURES)
    with DatasetWriter(out, "filter", identity(config), arrays, lineage=[ds.identity()],
                       inputs=inputs, overwrite=overwrite, keep=keep,
                       columns=columns) as writer:
        if writer.done:
            return writer.result
        if stored:
            table = ds.table(TABLE)
            table = np.stack([np.asarray(table[k][:n], np.float32) for k in MEASURES], 1)
        else:
            table = sources[TABLE] = _measure_pixels(ds, n, progress)
        return _filter(ds, writer, config, n, table, sources, not stored, progress)


def _measure_pixels(ds: Dataset, n: int, progress: bool) -> np.ndarray:
    """The measures of the first ``n`` stored images of a dataset without a measures table
    (``MEASURES`` order; the source sizes unknown: NaN)."""
    images = ds.images
    log.warning("%s has no measures table (made by an older version, or by a stage that "
                "did not decode): measuring its %d stored %d px images instead (blur is "
                "judged at that scale; the source sizes are unknown, so small and "
                "odd_aspect cannot be flagged)", ds.root, n, images.shape[1])
    out = np.empty((n, len(MEASURES)), np.float32)
    bar = progress_bar(n, "measure", "img", progress)
    for start in range(0, n, _WRITE_BLOCK):
        stop = min(n, start + _WRITE_BLOCK)
        out[start:stop] = measure_batch(list(np.asarray(images[start:stop])))
        bar.update(stop - start)
    bar.close()
    out[:, [list(MEASURES).index(k) for k in ("width", "height", "aspect")]] = np.nan
    return out


def _flag_rows(flags: list[Flag]) -> list[dict[str, Any]]:
    return [{"issue": f.issue, "measure": f.measure, "value": _num(f.value),
             "threshold": _num(f.threshold)} for f in flags]


def _num(x: float) -> float:
    return float(f"{x:.6g}")


def _filter(ds: Dataset, writer: DatasetWriter, config: FilterConfig, n: int,
            table: np.ndarray, sources: dict[str, np.ndarray], computed: bool,
            progress: bool) -> StageResult:
    rules = config.rules
    columns = table_columns(table)
    flags = flag_issues(columns, rules)
    limits = thresholds(columns, rules)
    manifest = ds.manifest[:n]
    if writer.position == 0:
        carry_drops(writer, ds)
    bar = progress_bar(n, "filter", "img", progress, initial=writer.position)
    for start in range(writer.position, n, _WRITE_BLOCK):
        block = range(start, min(n, start + _WRITE_BLOCK))
        reasons = {i: None if config.flag_only else drop_reason(flags[i], rules) for i in block}
        kept = np.array([i for i in block if reasons[i] is None], np.int64)
        writer.copy_many([manifest[i]["key"] for i in kept], sources, kept,
                         [{**{k: v for k, v in manifest[i].items() if k not in ("id", "key")},
                           "source_id": int(i), "flags": _flag_rows(flags[i])} for i in kept])
        for i in block:
            f = reasons[i]
            if f is not None:
                writer.drop(manifest[i]["key"], f.issue, measure=f.measure,
                            value=_num(f.value), threshold=_num(f.threshold),
                            source_id=i, flags=_flag_rows(flags[i]))
        writer.advance(len(block))
        bar.update(len(block))
    bar.close()
    flagged = Counter(f.issue for per_image in flags for f in per_image)
    rule_table = {}
    for issue in ISSUES:
        measure, direction = RULES[issue]
        rule_table[issue] = {"measure": measure, "limit": _num(limits[issue]),
                             "direction": direction}
        if issue in CONDITIONS:
            rule_table[issue]["and"] = [
                {"measure": m, "limit": _num(getattr(rules, field)), "direction": side}
                for m, field, side in CONDITIONS[issue]]
    return writer.finish(thresholds=rule_table, flag_only=config.flag_only,
                         flagged={issue: flagged.get(issue, 0) for issue in ISSUES},
                         drop=[] if config.flag_only else list(rules.drop),
                         measured="pixels" if computed else "table")
