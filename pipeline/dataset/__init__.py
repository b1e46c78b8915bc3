"""The dataset directory: the on-disk contract between stages (docs/dataset-format.md).

A finished directory holds ``manifest.jsonl`` (one object per kept item, in order), one
``.npy`` file per array (pixels: uint8, N x H x W x C, memory-mappable; per-item measures),
a ``*.jsonl`` per kind of drop (each line has ``key`` and ``reason``), ``stats.json``
(counts, and the size and checksum of every file), ``config.json`` (the stage, its settings
and the identity of its inputs) and the completion marker ``COMPLETE``, written last. Only
this package knows these names (``names``); stages ask ``Dataset`` (``reader``) and write
through ``DatasetWriter`` (``writer``).
"""

from pipeline.dataset.reader import (
    Dataset,
    StageResult,
    describe_difference,
    is_dataset,
    read_jsonl,
)
from pipeline.dataset.writer import DatasetWriter, Interrupted
from pipeline.outputs import atomic_write, write_json

__all__ = ["Dataset", "DatasetWriter", "Interrupted", "StageResult", "atomic_write",
           "describe_difference", "is_dataset", "read_jsonl", "write_json"]
